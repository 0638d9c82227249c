"""`archloop corpus leaderboard`: every corpus program trained once on the embedded protocol by the real
evaluator (its sandbox, its static screen, its budget), for archloop.leaderboard.

    archloop corpus leaderboard [--corpus DIR] [--workers 2] [--limit N] [--table PATH]

The embedded experiment's protocol (services/controller/configs/embedded.yaml: digits, one epoch,
batch 16, lr 0.01, momentum 0.9, dropout 0.2, seed 0, the 500k budget). Each result is appended to
`<corpus>/leaderboard.progress.jsonl` as it comes, so a run that is stopped resumes where it was; at
the end (or with --limit, after that many new programs) the table is written: the packaged one by
default, which is what reports read. About 1–3 s a program on 2 cores: lemur-v3's 2,151 programs take
about an hour; CI never reruns it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
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


def build_leaderboard(
    corpus_dir: Path, workers: int = 2, limit: int = 0, table: Path = leaderboard.TABLE
) -> tuple[int, int, float]:
    """Evaluate what the progress file lacks; write the table. (programs done, new ones, seconds)."""
    from services.evaluator.evaluation import Evaluator, Protocol
    from services.evaluator.sandbox import Sandbox

    started = time.monotonic()
    protocol = embedded_protocol()
    progress_path = Path(corpus_dir) / "leaderboard.progress.jsonl"
    done = _progress(progress_path)
    programs = corpus.training_programs(corpus_dir)
    todo = {leaderboard.code_sha256(code): (model, code) for model, code in sorted(programs.items())}
    todo = {sha: item for sha, item in todo.items() if sha not in done}
    if limit:
        todo = dict(list(todo.items())[:limit])
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

            with ThreadPoolExecutor(workers) as pool, open(progress_path, "a") as progress:
                for sha, entry in pool.map(one, todo.items()):
                    done[sha] = entry
                    progress.write(json.dumps({"sha256": sha, "row": entry.row()}) + "\n")
                    progress.flush()
        finally:
            box.stop()
    leaderboard.save(done, protocol, table)
    return len(done), len(todo), time.monotonic() - started


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
