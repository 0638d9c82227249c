"""The LEMUR corpus built from the real (cached) wheel: funnel, chat pairs, manifest, proxy table, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import zipfile
from pathlib import Path

import pytest

from archloop import corpus, prompts
from archloop.lemur import iter_model_sources, lemur_wheel
from archloop.testing import run_cli


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> corpus.BuildReport:
    return corpus.build_corpus(tmp_path_factory.mktemp("corpus") / corpus.CORPUS_VERSION)


@pytest.mark.slow
def test_funnel_narrows_stage_by_stage_and_every_file_is_accounted_for(built) -> None:  # type: ignore[no-untyped-def]
    funnel = built.manifest["funnel"]
    counts = [funnel[k] for k in ("files", "image_classification", "contract", "policy", "forward", "unique")]
    assert counts[0] == sum(1 for _ in iter_model_sources(lemur_wheel())) == 10_482
    assert all(a >= b for a, b in itertools.pairwise(counts)) and counts[-1] > 1000
    # BRIEF §8: about 75 % of the files build for (1, 3, 32, 32) → 10
    assert 0.6 < funnel["forward"] / funnel["policy"] < 0.85
    assert funnel["unique"] < funnel["examples"] <= 2 * funnel["unique"]
    outcomes = list(corpus.read_jsonl(built.out_dir / "models.jsonl"))
    assert len(outcomes) == funnel["files"]
    assert sum(o["stage"] == "unique" for o in outcomes) == funnel["unique"]
    assert all(o["reason"] for o in outcomes if o["stage"] != "unique")  # every drop says why
    dropped_as_copies = [o for o in outcomes if o["stage"] == "forward"]
    assert dropped_as_copies and all("near-duplicate of corpus/" in o["reason"] for o in dropped_as_copies)
    cannot_run = [o for o in outcomes if o["stage"] == "policy"]
    assert any("forward:" in o["reason"] for o in cannot_run)
    kept = [o for o in outcomes if o["stage"] == "unique"]
    assert all(o["parameters"] > 0 and "cifar-10" in o["datasets"] for o in kept)


@pytest.mark.slow
def test_examples_are_chat_pairs_with_real_newlines_and_the_manifest_hashes_them(built) -> None:  # type: ignore[no-untyped-def]
    examples = list(corpus.read_jsonl(built.out_dir / "examples.jsonl"))
    # a model's pairs are adjacent, CIFAR-10 first; MNIST only when it also runs at 1×28×28
    pairs = [(a, b) for a, b in itertools.pairwise(examples) if a["model"] == b["model"]]
    assert pairs and all((a["dataset"], b["dataset"]) == ("cifar-10", "mnist") for a, b in pairs)
    first = pairs[0][0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    task = dataclasses.replace(
        prompts.TASKS["cifar-10"], max_parameters=corpus.budget_for(first["parameters"])
    )
    assert first["messages"][:2] == prompts.chat_messages(task)
    answer = first["messages"][2]["content"]
    assert answer.startswith("```python\n") and answer.endswith("\n```")
    # the prompt's budget is true to the answer: the first step at or above the model's parameters
    for example in examples[:200]:
        budget = corpus.budget_for(example["parameters"])
        assert (
            example["parameters"] <= budget
            and f"at most {budget:,} parameters" in example["messages"][1]["content"]
        )
    assert "\n" in answer and "\\n" not in answer.replace('"\\n"', "").replace("'\\n'", "")
    for name, entry in built.manifest["files"].items():
        data = (built.out_dir / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert data.count(b"\n") == entry["records"]
    assert built.manifest["source"]["wheel_sha256"] == hashlib.sha256(lemur_wheel().read_bytes()).hexdigest()
    assert built.manifest["settings"]["prompt_sha256"] == prompts.prompt_sha256()


@pytest.mark.slow
def test_proxy_table_matches_the_facts_of_the_wheel(built) -> None:  # type: ignore[no-untyped-def]
    summary = corpus.corpus_stats(built.out_dir)["proxy_stats"]
    assert (summary["runs"], summary["models"]) == (19_058, 5_724)  # BRIEF §8, CIFAR-10
    assert summary["spearman_epoch_1_vs_5"] == pytest.approx(0.81, abs=0.01)
    row = next(corpus.read_jsonl(built.out_dir / "proxy_stats.jsonl"))
    assert {
        "model",
        "uid",
        "lr",
        "momentum",
        "batch",
        "transform",
        "accuracy_epoch_1",
        "accuracy_epoch_5",
        "accuracy_epoch_50",
        "accuracy_last",
        "last_epoch",
    } <= row.keys()


@pytest.mark.slow
def test_cli_stats_and_missing_corpus(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("corpus", "stats", "--corpus", str(built.out_dir), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["funnel"] == built.manifest["funnel"]
    assert stats["manifest_sha256"] == corpus.manifest_sha256(built.out_dir)
    missing = run_cli("corpus", "stats", "--corpus", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "archloop corpus build" in missing.stderr
    bad = run_cli("corpus", "build", "--out", str(tmp_path / "x"), "--threshold", "1.5")
    assert bad.returncode == 2 and "--threshold" in bad.stderr and not (tmp_path / "x").exists()


def test_screening_is_deterministic_and_drops_copies() -> None:
    sources = list(iter_model_sources(lemur_wheel()))[:150]
    with zipfile.ZipFile(lemur_wheel()) as archive:
        models = corpus.image_classification_models(archive)
    first = [o for o, _ in corpus.screen_models(sources, models, 0.90)]
    kept = next(i for i, o in enumerate(first) if o.stage == "unique")
    # a copy the packaged forward table has never seen: checked live in a worker
    sources.append(("copy-of-kept", sources[kept][1] + "\n# a trailing comment\n"))
    models.add("copy-of-kept")
    second = [o for o, _ in corpus.screen_models(sources, models, 0.90)]
    assert second[:-1] == first
    copy = second[-1]
    assert copy.stage == "forward" and f"corpus/{sources[kept][0]}" in copy.reason
    assert copy.parameters == first[kept].parameters > 0
