"""What the local stack's supervisor reads of the controller's ledger (a file of the stack's home), and
the changes it asks the controller's own admin command (services.controller.admin) to make there:
experiments an interrupted earlier run left unfinished are parked, and those a given-up component took
down are failed. Nothing here writes into the ledger. Apart from tools.localstack so that the stack
itself (and the test fixtures built on it) does not reach into the controller."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools.localstack import DATA_FLAGS


def _ledger(home: Path):
    from services.controller.ledger import Ledger

    path = home / dict(DATA_FLAGS["controller"])["--state-dir"] / "ledger.sqlite3"
    return Ledger(path) if path.exists() else None


def unfinished_experiments(home: Path) -> list[str]:
    """The experiments of the stack's ledger that have not ended (to name them before a stop)."""
    from services.controller.states import TERMINAL

    ledger = _ledger(home)
    if ledger is None:
        return []
    try:
        return [r.experiment_id for r in ledger.experiments() if r.state not in TERMINAL]
    finally:
        ledger.close()


def base_model_of(home: Path, experiment_id: str) -> str:
    """The base model an experiment of the stack's ledger was started with ('' when unknown)."""
    from services.controller import config as experiment_config

    ledger = _ledger(home)
    if ledger is None:
        return ""
    try:
        row = ledger.experiment(experiment_id)
        return experiment_config.from_json(row.config_json).base_model if row is not None else ""
    finally:
        ledger.close()


def park_unfinished(home: Path) -> list[str]:
    """Before `archloop run` brings the stack up for one experiment: mark the experiments an earlier,
    interrupted run left unfinished STOPPED, so the new controller does not resume them beside the new
    one (each would halve its speed). They stay resumable (`archloop run --resume EXP`)."""
    return _admin(home, "park")


def record_failure(home: Path, message: str, experiment_ids: list[str]) -> list[str]:
    """After the stack gave up and was stopped: mark these experiments FAILED with `message` in the
    stack's ledger (unless they completed or failed already; a controller that was stopped may have
    marked them STOPPED on its way out). The experiment_failed event waits in the ledger's outbox for
    the next controller. Returns the ids marked."""
    return _admin(home, "fail", "--message", message, *experiment_ids)


def _admin(home: Path, *arguments: str) -> list[str]:
    """The controller's own admin command (services.controller.admin) on the stack's ledger: the ids
    it changed."""
    state_dir = home / dict(DATA_FLAGS["controller"])["--state-dir"]
    command = [sys.executable, "-m", "services.controller.admin", "--state-dir", str(state_dir), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:4])} {arguments[0]} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
