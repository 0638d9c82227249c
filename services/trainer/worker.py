"""The worker process of one fine-tune job: `python -m services.trainer.worker --job-dir DIR ...`.

It reads the job's spec from DIR/spec.json, trains (services.trainer.lora) and reports on a private
copy of stdout, one JSON object per line; everything else the libraries print goes to stderr (the
job's log). Signals: SIGUSR1 cancels; SIGTERM (the service shutting down) saves a checkpoint and
reports "interrupted". The parent's death kills it (PR_SET_PDEATHSIG); the last periodic checkpoint
then stands.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from archloop import processes


class _Flags:
    cancel = False
    shutdown = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archloop-trainer-worker")
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--artifacts-dir", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint-every-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--autocast", default="auto")
    args = parser.parse_args(argv)

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

    from archloop.errors import ArchLoopError
    from services.trainer.lora import Cancelled, run_fine_tune
    from services.trainer.spec import FineTuneSpec

    job_dir = Path(args.job_dir)
    spec = FineTuneSpec.from_json((job_dir / "spec.json").read_text())
    try:
        run_fine_tune(
            spec,
            job_dir,
            Path(args.artifacts_dir),
            emit,
            lambda: "cancel" if _Flags.cancel else "shutdown" if _Flags.shutdown else "",
            resume=args.resume,
            checkpoint_every_steps=args.checkpoint_every_steps,
            threads=args.threads,
            autocast=args.autocast,
        )
    except Cancelled as stop:
        emit({"kind": "cancelled" if stop.reason == "cancel" else "interrupted"})
    except ArchLoopError as exc:
        emit({"kind": "failed", "status": exc.status, "error": str(exc)})
    except Exception as exc:  # a bug or a library failure: report it whole in the log, briefly here
        traceback.print_exc()
        emit({"kind": "failed", "status": "INTERNAL", "error": f"{type(exc).__name__}: {exc}"[:2000]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
