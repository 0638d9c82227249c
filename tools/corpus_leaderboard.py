"""`archloop corpus leaderboard`: every corpus program trained once on the embedded protocol by the real
evaluator (its sandbox, its static screen, its budget), for archloop.leaderboard.

    archloop corpus leaderboard [--corpus DIR] [--workers 2] [--limit N] [--table PATH]

The embedded experiment's protocol (services/controller/configs/embedded.yaml: digits, one epoch,
batch 16, lr 0.01, momentum 0.9, dropout 0.2, seed 0, the 500k budget). Each result is appended to
`<corpus>/leaderboard.progress.jsonl` as it comes, so a run that is stopped resumes where it was; at
the end (or with --limit, after that many new programs) the table is written: the packaged one by
default, which is what reports read. About 1–3 s a program on 2 cores: lemur-v3's 2,151 programs took
about 40 minutes here; CI never reruns it, and a test evaluates a seeded sample of it again (`recheck`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from archloop import corpus, leaderboard


def embedded_protocol() -> dict:
    """The embedded experiment's protocol as the evaluator takes it (its zero fields at their defaults)."""
    from services.controller import config as experiment_config
    from services.evaluator.servicer import protocol_from_proto

    return dataclasses.asdict(protocol_from_proto(experiment_config.embedded().protocol))


def _progress(path: Path) -> dict[str, leaderboard.Entry]:
    done: dict[str, leaderboard.Entry] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["sha256"]] = leaderboard.Entry.from_row(record["row"])
    return done


def evaluate_programs(
    programs: dict[str, tuple[str, str]], workers: int = 2
) -> Iterator[tuple[str, leaderboard.Entry]]:
    """({sha: (model, code)}) → (sha, Entry) as each evaluation ends, by the real evaluator in its
    sandbox on the embedded protocol."""
    from services.evaluator.evaluation import Evaluator, Protocol
    from services.evaluator.sandbox import Sandbox

    protocol = embedded_protocol()
    with tempfile.TemporaryDirectory(prefix="archloop-leaderboard-") as work:
        box = Sandbox(Path(work) / "jobs", slots=workers)
        box.start()
        try:
            evaluator = Evaluator(box, Path(work) / "data")

            def one(item: tuple[str, tuple[str, str]]) -> tuple[str, leaderboard.Entry]:
                sha, (model, code) = item
                result = evaluator.evaluate(model, code, Protocol(**protocol))
                accuracy = result.accuracy if result.status == "OK" else None
                return sha, leaderboard.Entry(result.status, accuracy, result.param_count,
                                              result.total_duration_seconds)  # fmt: skip

            with ThreadPoolExecutor(workers) as pool:
                yield from pool.map(one, programs.items())
        finally:
            box.stop()


def build_leaderboard(
    corpus_dir: Path, workers: int = 2, limit: int = 0, table: Path = leaderboard.TABLE
) -> tuple[int, int, float]:
    """Evaluate what the progress file lacks; write the table. (programs done, new ones, seconds)."""
    started = time.monotonic()
    progress_path = Path(corpus_dir) / "leaderboard.progress.jsonl"
    done = _progress(progress_path)
    programs = corpus.training_programs(corpus_dir)
    todo = {leaderboard.code_sha256(code): (model, code) for model, code in sorted(programs.items())}
    todo = {sha: item for sha, item in todo.items() if sha not in done}
    if limit:
        todo = dict(list(todo.items())[:limit])
    with open(progress_path, "a") as progress:
        for sha, entry in evaluate_programs(todo, workers):
            done[sha] = entry
            progress.write(json.dumps({"sha256": sha, "row": entry.row()}) + "\n")
            progress.flush()
    leaderboard.save(done, embedded_protocol(), table)
    return len(done), len(todo), time.monotonic() - started


def recheck(
    corpus_dir: Path, sample: int = 2, seed: int = 0, table: Path = leaderboard.TABLE
) -> list[tuple[str, leaderboard.Entry, leaderboard.Entry]]:
    """`sample` corpus programs drawn (seeded) among those the table holds, evaluated again:
    (model, the table's entry, the new one)."""
    entries, _protocol = leaderboard.load(table)
    programs = corpus.training_programs(corpus_dir)
    held = {leaderboard.code_sha256(code): (model, code) for model, code in sorted(programs.items())}
    held = {sha: item for sha, item in held.items() if sha in entries}
    chosen = dict(random.Random(seed).sample(sorted(held.items()), min(sample, len(held))))
    return [(chosen[sha][0], entries[sha], fresh) for sha, fresh in evaluate_programs(chosen, workers=1)]


def main(args) -> int:  # called by tools/corpus_cli.py
    source = Path(args.corpus) if args.corpus else None
    from archloop.paths import corpus_dir

    folder = source or corpus_dir()
    if not (folder / "examples.jsonl").exists():
        print(f"archloop corpus leaderboard: {folder} holds no corpus (examples.jsonl)", file=sys.stderr)
        return 1
    if args.workers < 1 or args.limit < 0:
        print(
            "archloop corpus leaderboard: --workers must be at least 1, --limit not negative", file=sys.stderr
        )
        return 2
    total, new, seconds = build_leaderboard(folder, args.workers, args.limit, Path(args.table))
    print(f"{total:,} programs in {args.table} ({new:,} evaluated now, {seconds:.0f} s)")
    return 0
