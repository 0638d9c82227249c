"""The report of a run whose cycles produced nothing valid, or nothing but valid programs: every file
is written (the plots' error bars stay within their intervals at 0 % and 100 %); the report page is one
self-contained file (its browser test, opened from disk with the network cut: tests/test_dashboard.py)."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from archloop import corpus, views
from archloop.prompts import BASELINE_FILE as BASELINE
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.report import (
    cycle_rows,
    proxy_reliability,
    summaries,
    write_comparison,
    write_report,
)
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


def test_the_report_page_is_one_self_contained_file_from_the_dashboard_templates(tmp_path: Path) -> None:
    """Nothing the page needs is fetched: no link, no script source, no URL but its own anchors; plotly.js,
    the plotting script and the data are inlined; C_t and Q_t carry their intervals."""
    config = experiment_config.with_defaults(experiment_config.from_mapping({"cycles": 1}))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment("s", experiment_config.to_json(config), experiment_config.config_sha256(config))
    ledger.start_cycle("s", 1, event("s", 1, "cycle_started"))
    for index, accuracy in enumerate((0.9, 0.2, None, 0.6)):
        add_evaluated(ledger, "s", 1, index, BASELINE.read_text() + f"# {index}\n", accuracy)
    write_report(ledger, "s", tmp_path / "out", tmp_path / "no-corpus")
    page = (tmp_path / "out" / "report.html").read_text()
    assert [url for url in _urls(page) if not url.startswith(("#", "data:"))] == []
    assert "@import" not in page  # the one <link> is the data: icon, checked above
    assert views.plotly_bundle()[:2000].replace("</", "<\\/") in page  # plotly.js, inlined
    assert "window.ArchLoopPlots" in page and 'id="report-data"' in page
    data = json.loads(page.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    cycle = data["cycles"][0]
    assert cycle["elite_concentration"] == 2 / 4  # 0.9 and 0.6 reach τ = 0.4 of the 4 generated
    assert cycle["elite_ci_low"] < 0.5 < cycle["elite_ci_high"]
    assert cycle["mean_quality"] == (0.9 + 0.2 + 0.6) / 4  # the invalid one counts 0
    assert cycle["mean_quality_ci_low"] < cycle["mean_quality"] < cycle["mean_quality_ci_high"]
    assert 'id="cycle-table"' in page and page.count('<tr data-cycle="1">') == 1


def _urls(page: str) -> list[str]:
    """Every src, href and action of the page's tags (a script's text is not markup)."""
    found: list[str] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs) -> None:
            found.extend(value or "" for name, value in attrs if name in ("src", "href", "action"))

    Collect().feed(page)
    return found


def test_the_comparison_of_two_experiments_is_a_table_and_one_self_contained_page(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    items = []
    for name, mode, accuracies in (("full", "full", (0.9, None, None, None)), ("delta", "delta", (0.9, 0.5))):
        config = experiment_config.with_defaults(
            experiment_config.from_mapping({"cycles": 1, "generation": {"mode": mode}})
        )
        ledger.create_experiment(
            name, experiment_config.to_json(config), experiment_config.config_sha256(config)
        )
        ledger.start_cycle(name, 1, event(name, 1, "cycle_started"))
        for index, accuracy in enumerate(accuracies):
            add_evaluated(ledger, name, 1, index, BASELINE.read_text(), accuracy)
        items.append((name, config, summaries(cycle_rows(ledger, name, config.accuracy_threshold))))
    csv_path, html_path = write_comparison(items, tmp_path / "cmp")
    rows = {r["experiment"]: r for r in csv.DictReader(csv_path.open())}
    assert float(rows["full"]["valid_fraction"]) == 0.25 and float(rows["delta"]["valid_fraction"]) == 1.0
    assert float(rows["delta"]["valid_ratio_vs_full"]) == 4.0  # delta ÷ full valid rate
    page = html_path.read_text()
    assert [url for url in _urls(page) if not url.startswith(("#", "data:"))] == []
    assert page.count('<tr><td class="text">') == 2 and "4.00" in page
    series = json.loads(page.split('id="compare-data">', 1)[1].split("</script>", 1)[0])
    assert [s["experiment"] for s in series] == ["full", "delta"]  # the table's order
    assert [c["valid_fraction"] for c in series[1]["cycles"]] == [1.0]
    # the best-so-far-against-evaluations plot's points: trained candidates so far, the best of the valid
    assert [(c["evaluations_total"], c["best_accuracy_so_far"]) for c in series[0]["cycles"]] == [(4, 0.9)]
    assert [(c["evaluations_total"], c["best_accuracy_so_far"]) for c in series[1]["cycles"]] == [(2, 0.9)]
    assert 'id="plot-compare-best"' in page


def test_lemurs_reliability_table_is_read_again_when_the_file_changes(tmp_path: Path) -> None:
    """The LEMUR part is cached by the file's path, mtime and size (the dashboard asks at every event):
    a changed file gives the new figures, never the cached ones."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    config = experiment_config.with_defaults(experiment_config.from_mapping({"cycles": 1}))
    ledger.create_experiment("l", experiment_config.to_json(config), experiment_config.config_sha256(config))
    table = tmp_path / "corpus" / "proxy_stats.jsonl"
    table.parent.mkdir()

    def write(pairs: list[tuple[float, float]]) -> None:
        rows = [{"dataset": "cifar-10", "task": corpus.IMAGE_CLASSIFICATION, "model": f"Net-{i}",
                 "accuracy_epoch_1": a, "accuracy_epoch_5": b} for i, (a, b) in enumerate(pairs)]  # fmt: skip
        table.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write([(0.1, 0.2), (0.2, 0.4), (0.3, 0.6), (0.4, 0.8)])
    first = proxy_reliability(ledger, "l", table.parent)["lemur"]["pooled"]
    assert first["n"] == 4 and first["spearman"] == pytest.approx(1.0)
    write([(0.1, 0.8), (0.2, 0.6), (0.3, 0.4), (0.4, 0.2), (0.5, 0.1)])
    second = proxy_reliability(ledger, "l", table.parent)["lemur"]["pooled"]
    assert second["n"] == 5 and second["spearman"] == pytest.approx(-1.0)
