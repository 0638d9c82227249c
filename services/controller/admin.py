"""The controller's ledger changes made while no controller runs, by the controller's own code:

    python -m services.controller.admin --state-dir DIR park
        experiments an interrupted earlier run left unfinished become STOPPED (resumable), so a new
        controller does not resume them beside a new experiment
    python -m services.controller.admin --state-dir DIR fail --message TEXT EXPERIMENT [...]
        experiments a given-up component took down become FAILED with TEXT (unless they completed or
        failed already); the experiment_failed event waits in the ledger's outbox for the next controller

Each prints the ids it changed, one JSON list on stdout. The local stack's supervisor (tools.stack_ledger)
runs it, so nothing outside the controller writes into its ledger.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.controller.ledger import Ledger
from services.controller.loop import record_failed
from services.controller.states import TERMINAL, ExperimentState


def park(ledger: Ledger) -> list[str]:
    names = [r.experiment_id for r in ledger.experiments() if r.state not in TERMINAL]
    for experiment_id in names:
        ledger.set_experiment(experiment_id, state=ExperimentState.STOPPED)
    return names


def fail(ledger: Ledger, message: str, experiment_ids: list[str]) -> list[str]:
    marked = []
    for experiment_id in experiment_ids:
        row = ledger.experiment(experiment_id)
        if row is not None and row.state not in (ExperimentState.COMPLETED, ExperimentState.FAILED):
            record_failed(ledger, experiment_id, message)
            marked.append(experiment_id)
    return marked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archloop-controller-admin", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, type=Path, help="the controller's --state-dir")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("park", help="unfinished experiments become STOPPED")
    failing = verbs.add_parser("fail", help="these experiments become FAILED")
    failing.add_argument("--message", required=True)
    failing.add_argument("experiment_ids", nargs="+")
    args = parser.parse_args(argv)
    path = args.state_dir / "ledger.sqlite3"
    if not path.exists():
        print("[]")
        return 0
    ledger = Ledger(path)
    try:
        changed = park(ledger) if args.verb == "park" else fail(ledger, args.message, args.experiment_ids)
    finally:
        ledger.close()
    print(json.dumps(changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
