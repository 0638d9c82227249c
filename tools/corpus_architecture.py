"""The corpus's architecture graphs: `archloop corpus structure`, and the last step of `archloop corpus
build`, so a corpus always has them (docs/method.md#architecture-novelty).

Each training program runs once in the forward-check workers (archloop.forwardcheck: the meta device,
shapes only, the CPU when the meta device cannot run it) at the shapes its chat pairs were checked at,
with the recorder of archloop.archtrace; its wiring hash, op hash, tokens and graph go to
`<corpus>/architecture.jsonl`, keyed by the code's sha256. About a minute for lemur-v3's 2,151 programs
on 2 cores. A program the recorder cannot run is left out and counted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from archloop import corpus, forwardcheck, prompts


@dataclass(frozen=True)
class ArchitectureReport:
    path: Path
    programs: int
    recorded: int
    distinct_wiring: int
    seconds: float
    failures: dict[str, str]  # model → why (the first few)


def record_architectures(corpus_dir: Path, workers: int = 0) -> ArchitectureReport:
    started = time.monotonic()
    task = prompts.TASKS["cifar-10"]  # the shapes the corpus's pairs were checked at
    programs = corpus.training_programs(corpus_dir)
    results = forwardcheck.check_many(
        ((name, code, task.input_shape, task.num_classes) for name, code in programs.items()),
        workers=workers,
        structure=True,
    )
    architectures = {name: r.architecture for name, r in results.items() if r.ok and r.architecture}
    records = corpus.architecture_records(programs, architectures)
    path = Path(corpus_dir) / corpus.ARCHITECTURE_FILE
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
    failures = {name: r.reason for name, r in sorted(results.items()) if name not in architectures}
    return ArchitectureReport(
        path, len(programs), len(records), len({r["wiring_hash"] for r in records}),
        time.monotonic() - started, dict(list(failures.items())[:5]),
    )  # fmt: skip


def summary(report: ArchitectureReport) -> str:
    line = (
        f"architecture graphs: {report.recorded:,} of {report.programs:,} programs "
        f"({report.distinct_wiring:,} distinct wiring hashes) → {report.path} ({report.seconds:.0f} s)"
    )
    for model, why in report.failures.items():
        line += f"\n  not recorded: {model}: {why}"
    return line
