"""The report of a run whose cycles produced nothing valid, or nothing but valid programs: every file
is written (the plots' error bars stay within their intervals at 0 % and 100 %)."""

from __future__ import annotations

import json
from pathlib import Path

from archloop.prompts import BASELINE_FILE as BASELINE
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.report import write_report
from services.controller.requests import event
from services.controller.tests.seed import add_evaluated


def test_a_report_of_cycles_with_no_valid_and_all_valid_programs(tmp_path: Path) -> None:
    config = experiment_config.with_defaults(experiment_config.from_mapping({"cycles": 2}))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment("r", experiment_config.to_json(config), experiment_config.config_sha256(config))
    for cycle, accuracy in ((1, None), (2, 0.5)):  # cycle 1: all invalid; cycle 2: all valid
        ledger.start_cycle("r", cycle, event("r", cycle, "cycle_started"))
        for index in range(12):
            add_evaluated(ledger, "r", cycle, index, BASELINE.read_text(), accuracy)
    summaries, files = write_report(ledger, "r", tmp_path / "out", tmp_path / "no-corpus")
    names = {f.name for f in files}
    assert {"report.html", "report.json", "cycles.csv", "valid_rate.png"} <= names
    assert all(f.stat().st_size > 0 for f in files)
    cycles = json.loads((tmp_path / "out" / "report.json").read_text())["cycles"]
    assert [c["valid_fraction"] for c in cycles] == [0.0, 1.0]
    assert cycles[0]["valid_ci_low"] == 0.0 and cycles[1]["valid_ci_high"] == 1.0
    assert [s.cycle for s in summaries] == [1, 2]
