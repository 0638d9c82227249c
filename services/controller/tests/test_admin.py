"""The controller's admin command (what the local stack's supervisor runs while no controller does):
`park` stops the unfinished experiments, `fail` fails the named ones with an event, and neither touches
one that has ended; a ledger that does not exist is left alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.states import ExperimentState


def _admin(state_dir: Path, *arguments: str) -> list[str]:
    command = [sys.executable, "-m", "services.controller.admin", "--state-dir", str(state_dir), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout)


def test_park_and_fail_change_only_the_unfinished(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    config = experiment_config.embedded()
    for name, state in (("running", ExperimentState.RUNNING), ("done", ExperimentState.COMPLETED),
                        ("other", ExperimentState.RUNNING)):  # fmt: skip
        ledger.create_experiment(
            name, experiment_config.to_json(config), experiment_config.config_sha256(config)
        )
        ledger.set_experiment(name, state=state)
    ledger.close()
    assert _admin(tmp_path, "fail", "--message", "the novelty service kept dying", "running", "done") == [
        "running"
    ]
    assert sorted(_admin(tmp_path, "park")) == ["other"]
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    states = {name: ledger.experiment(name).state for name in ("running", "done", "other")}
    assert states == {"running": "FAILED", "done": "COMPLETED", "other": "STOPPED"}
    assert ledger.experiment("running").error == "the novelty service kept dying"
    assert [e.WhichOneof("payload") for e in ledger.events("running")] == ["experiment_failed"]
    ledger.close()
    assert _admin(tmp_path / "nowhere", "park") == [] and not (tmp_path / "nowhere").exists()
