"""The worker process of fine-tune jobs: `python -m services.trainer.worker --job-dir DIR ...` runs one
job; with `--serve` it imports the training libraries once and runs the jobs it is handed on stdin, one
JSON line each ({"job_dir": …, "resume": …}), until a job does not succeed or stdin closes
(services.trainer.workers keeps such a worker warm between jobs).

A job's spec is DIR/spec.json; the worker trains (services.trainer.lora) and reports on a private copy
of stdout, one JSON object per line, ending with the job's outcome ("done", "failed", "cancelled",
"interrupted"); everything else the libraries print goes to DIR/worker.log. Signals: SIGUSR1 cancels the
running job; SIGTERM (the service shutting down) saves a checkpoint and reports "interrupted". The
parent's death kills it (PR_SET_PDEATHSIG); the last periodic checkpoint then stands.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from archloop import processes


class _Flags:
    cancel = False
    shutdown = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archloop-trainer-worker")
    parser.add_argument("--job-dir", help="the one job to run (without --serve)")
    parser.add_argument("--serve", action="store_true", help="run the jobs handed on stdin")
    parser.add_argument("--artifacts-dir", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint-every-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--autocast", default="auto")
    args = parser.parse_args(argv)
    if not args.serve and not args.job_dir:
        parser.error("give --job-dir, or --serve")

    if not processes.parent_death_signal(signal.SIGKILL):
        return 1
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to the log, not into the event stream
    sys.stdout = sys.stderr

    def emit(event: dict) -> None:
        events.write(json.dumps(event) + "\n")

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGUSR1:
            _Flags.cancel = True
        else:
            _Flags.shutdown = True

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    if not args.serve:
        _run_job(Path(args.job_dir), args.resume, args, emit)
        return 0
    from services.trainer.lora import warm_up

    warm_up()
    base_log = os.dup(2)
    while not _Flags.shutdown:
        line = sys.stdin.readline()
        if not line:
            break  # stdin closed: the service is done with this worker
        order = json.loads(line)
        job_dir = Path(order["job_dir"])
        with open(job_dir / "worker.log", "ab") as log_file:  # the job's own log, as a fresh worker's
            os.dup2(log_file.fileno(), 2)
            os.dup2(log_file.fileno(), 1)
        try:
            outcome = _run_job(job_dir, bool(order.get("resume")), args, emit)
        finally:
            sys.stderr.flush()
            os.dup2(base_log, 2)
            os.dup2(base_log, 1)
        if outcome != "done":
            break
    return 0


def _run_job(job_dir: Path, resume: bool, args: argparse.Namespace, emit: Callable[[dict], None]) -> str:
    """Run one job, report its outcome last; the outcome's kind."""
    from archloop.errors import ArchLoopError
    from services.trainer.lora import Cancelled, run_fine_tune
    from services.trainer.spec import FineTuneSpec

    _Flags.cancel = False
    print(f"archloop trainer worker {os.getpid()}: job {job_dir.name}", file=sys.stderr, flush=True)
    outcome: dict = {"kind": "done"}
    try:
        spec = FineTuneSpec.from_json((job_dir / "spec.json").read_text())
        run_fine_tune(
            spec,
            job_dir,
            Path(args.artifacts_dir),
            emit,
            lambda: "cancel" if _Flags.cancel else "shutdown" if _Flags.shutdown else "",
            resume=resume,
            checkpoint_every_steps=args.checkpoint_every_steps,
            threads=args.threads,
            autocast=args.autocast,
        )
        return "done"  # run_fine_tune reported it
    except Cancelled as stop:
        outcome = {"kind": "cancelled" if stop.reason == "cancel" else "interrupted"}
    except ArchLoopError as exc:
        outcome = {"kind": "failed", "status": exc.status, "error": str(exc)}
    except Exception as exc:  # a bug or a library failure: report it whole in the log, briefly here
        traceback.print_exc()
        outcome = {"kind": "failed", "status": "INTERNAL", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    emit(outcome)
    return outcome["kind"]


if __name__ == "__main__":
    sys.exit(main())
