"""What the local stack's supervisor writes into the controller's ledger (a file of the stack's home):
experiments an interrupted earlier run left unfinished are parked, and those a given-up component
took down are failed. Apart from tools.localstack so that the stack itself (and the test fixtures
built on it) does not reach into the controller."""

from __future__ import annotations

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
    from services.controller.states import ExperimentState

    names = unfinished_experiments(home)
    ledger = _ledger(home)
    if ledger is None:
        return []
    try:
        for experiment_id in names:
            ledger.set_experiment(experiment_id, state=ExperimentState.STOPPED)
        return names
    finally:
        ledger.close()


def record_failure(home: Path, message: str, experiment_ids: list[str]) -> list[str]:
    """After the stack gave up and was stopped: mark these experiments FAILED with `message` in the
    stack's ledger (unless they completed or failed already; a controller that was stopped may have
    marked them STOPPED on its way out). The experiment_failed event waits in the ledger's outbox for
    the next controller. Returns the ids marked."""
    from services.controller.loop import record_failed
    from services.controller.states import ExperimentState

    ledger = _ledger(home)
    if ledger is None:
        return []
    try:
        marked = []
        for experiment_id in experiment_ids:
            row = ledger.experiment(experiment_id)
            if row is not None and row.state not in (ExperimentState.COMPLETED, ExperimentState.FAILED):
                record_failed(ledger, experiment_id, message)
                marked.append(experiment_id)
        return marked
    finally:
        ledger.close()
