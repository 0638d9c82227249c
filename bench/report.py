"""Shared by the benchmarks: replace one marked section of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def publish(name: str, results: object, section: str, start: str, end: str, write: bool) -> None:
    """Save raw figures to bench/results/<name>.json, print the section, and with `write` put it in
    docs/benchmarks.md."""
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(section)
    if write:
        write_section(section, start, end)


def write_section(text: str, start: str, end: str, path: Path = BENCHMARKS_MD) -> None:
    """Put `text` (which begins with `start` and ends with `end`) in place of the old section."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in current:
        before, rest = current.split(start, 1)
        current = before + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    path.write_text(current)


def machine() -> str:
    """The machine a benchmark ran on, for the section's header line."""
    memory_gib = psutil.virtual_memory().total / 2**30
    return f"{psutil.cpu_count()} cores, {memory_gib:.0f} GiB, Python {platform.python_version()}"


def run_experiment(
    home: Path, config: dict, name: str, corpus: Path, source: Path | None = None
) -> tuple[float, int]:
    """One whole `archloop run` of `config` (an ExperimentConfig mapping) under its own $ARCHLOOP_HOME
    and the shared corpus, its output in <home>/run.log: (wall-clock seconds, exit code). A failed run
    is said on stderr; its ledger still holds what it did. `source`: another checkout of the project
    (a git worktree with its stubs generated) whose code runs instead of this one's, with this venv."""
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "ARCHLOOP_HOME": str(home), "ARCHLOOP_CORPUS_DIR": str(corpus)}
    began = time.monotonic()
    command = [sys.executable, "-m", "tools.cli", "run", "--config", str(home / "config.yaml"),
               "--name", name, "--out", str(home / "report")]  # fmt: skip
    if source is not None:  # its folders come first on sys.path, in this process and in every child
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH", "")]))
    with open(home / "run.log", "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False,
                              cwd=source or ROOT)  # fmt: skip
    seconds = time.monotonic() - began
    if done.returncode != 0:
        print(f"{name}: archloop run exited {done.returncode} (see {home / 'run.log'})", file=sys.stderr)
    return seconds, done.returncode


def built_corpus(given: Path | None) -> Path | None:
    """The corpus a benchmark reads (`given`, else the local one), or None after saying on stderr that
    it is not built."""
    from archloop.paths import corpus_dir

    corpus = (given or corpus_dir()).resolve()
    if not (corpus / "examples.jsonl").is_file():
        print(f"no corpus at {corpus}: run `archloop corpus build` first", file=sys.stderr)
        return None
    return corpus


def completed_run(home: Path, name: str) -> tuple | None:
    """(experiment row, its candidates in cycle and index order) from a run's ledger under `home`;
    None when it holds no completed experiment `name` (a bench then runs it, or resumes past it)."""
    from services.controller.ledger import Ledger
    from services.controller.states import ExperimentState

    path = home / "data" / "controller" / "ledger.sqlite3"
    if not path.exists():
        return None
    ledger = Ledger(path)
    try:
        row = ledger.experiment(name)
        if row is None or row.state is not ExperimentState.COMPLETED:
            return None
        return row, sorted(ledger.candidates(name), key=lambda c: (c.cycle, c.idx))
    finally:
        ledger.close()
