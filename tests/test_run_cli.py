"""`archloop run` and `archloop report` refuse bad input before anything starts."""

from __future__ import annotations

from pathlib import Path

from tools.testing import run_cli


def test_bad_configs_exit_2_naming_the_field_and_start_nothing(tmp_path: Path) -> None:
    env_home = {"ARCHLOOP_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    cases = [
        ("cycels: 3\n", "cycels"),
        ("generation: {mode: sideways}\n", "generation.mode"),
        ("accuracy_threshold: 1.5\n", "accuracy_threshold"),
        ("datasets: [imagenet]\n", "datasets"),
        ("generation: {temperature_schedule: cyclic}\n", "generation.temperature_max"),
        ("- a list\n", "must be a mapping"),
        ("generation: {mode: corpus_sample}\nnovelty_precheck: true\n", "novelty_precheck"),
        ("generation: {mode: engine, repair: true}\n", "generation.repair"),
        ("generation: {mode: engine, population_size: -1}\n", "generation.population_size"),
    ]
    for text, field in cases:
        config = tmp_path / "bad.yaml"
        config.write_text(text)
        result = run_cli("run", "--config", str(config), env=env_home)
        assert result.returncode == 2 and field in result.stderr, (text, result.stderr)
    for flags, name in ((["--cycles", "0"], "--cycles"), (["--candidates", "-1"], "--candidates")):
        result = run_cli("run", *flags, env=env_home)
        assert result.returncode == 2 and name in result.stderr
    missing = run_cli("run", "--config", str(tmp_path / "nowhere.yaml"), env=env_home)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    liveness = run_cli("run", "--cycles", "1", env={**env_home, "ARCHLOOP_LIVENESS_SECONDS": "soon"})
    assert liveness.returncode == 2 and "ARCHLOOP_LIVENESS_SECONDS" in liveness.stderr, liveness.stderr
    assert not (tmp_path / "home").exists()  # nothing was started or written


def test_an_unreachable_controller_and_a_missing_ledger_are_clear_errors(tmp_path: Path) -> None:
    env_home = {"ARCHLOOP_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    result = run_cli("run", "--controller", "127.0.0.1:1", "--cycles", "1", env=env_home)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
    report = run_cli("report", "exp-1", "--ledger", str(tmp_path / "none.sqlite3"), env=env_home)
    assert report.returncode == 1 and "no ledger" in report.stderr


def test_datasets_fetch_refuses_unknown_names_before_downloading_anything(tmp_path: Path) -> None:
    out = run_cli("datasets", "fetch", "cifar10", "imagenet", "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2
    assert "unknown dataset imagenet" in out.stderr and "cifar10" in out.stderr
    assert not (tmp_path / "data").exists()


def test_run_records_the_architecture_graphs_of_a_corpus_that_lacks_them(
    tmp_path: Path, small_corpus: Path, monkeypatch
) -> None:
    """A corpus built before the graphs existed: `archloop run` records them before it starts the stack."""
    from archloop import corpus
    from tools.run_cli import _ensure_corpus

    monkeypatch.delenv("ARCHLOOP_CORPUS_DIR", raising=False)
    home = tmp_path / "home"
    folder = home / "corpus" / corpus.CORPUS_VERSION
    folder.mkdir(parents=True)
    (folder / "examples.jsonl").write_text((small_corpus / "examples.jsonl").read_text())
    assert corpus.read_architectures(folder) == {}
    assert _ensure_corpus(home) == folder
    recorded = corpus.read_architectures(folder)
    assert set(recorded) == set(corpus.training_programs(folder))
    assert all(len(r["wiring_hash"]) == 32 and r["tokens"] for r in recorded.values())
