"""The web dashboard in a real browser: Debian's Chromium driven by Playwright, against `archloop dashboard`'s
app served by uvicorn on loopback, a real controller process on a ledger holding a finished experiment,
and a real nats-server.

Every page loads with no console error; a cycle event published on NATS shows up on the open
experiment page, and the cycle table grows, without a reload; the candidate page shows the program and
its verdict; the comparison page draws its table and plots; unknown ids give a 404 page; a controller
that is down gives a 503 page that says so and retries; the static report (`archloop report`'s
report.html, the same templates) opens from disk with the network cut and draws every plot."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from archloop.eventbus import connect_nats, ensure_stream, publish_event
from archloop.prompts import BASELINE_FILE
from archloop.v1 import evaluator_pb2, novelty_pb2
from services.controller import config as experiment_config
from services.controller.audit import as_json, proxy_audit
from services.controller.ledger import Ledger
from services.controller.requests import event
from services.controller.selection import Decision, Verdict
from services.controller.states import ExperimentState, Phase
from services.controller.tests.seed import add_evaluated, write_corpus
from tools.dashboard.app import Settings, serve_in_background
from tools.dashboard.screenshots import CHROMIUM_ARGS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="the browser tests need Debian's chromium (apt-get install chromium; make install does it)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed(state_dir: Path) -> None:
    """A stopped experiment `dash` of one cycle: an admitted, a rejected and an invalid candidate, with
    their novelty figures, and the two valid ones promoted and audited."""
    state_dir.mkdir(parents=True)
    ledger = Ledger(state_dir / "ledger.sqlite3")
    config = experiment_config.with_defaults(experiment_config.from_mapping({"cycles": 2}))
    ledger.create_experiment(
        "dash", experiment_config.to_json(config), experiment_config.config_sha256(config)
    )
    ledger.start_cycle("dash", 1, event("dash", 1, "cycle_started"))
    good = add_evaluated(ledger, "dash", 1, 0, BASELINE_FILE.read_text(), 0.82)
    copy = add_evaluated(ledger, "dash", 1, 1, BASELINE_FILE.read_text() + "\n", 0.80)
    broken = add_evaluated(ledger, "dash", 1, 2, "class Net:\n    pass\n", None)
    match = novelty_pb2.CollectionMatch
    ledger.record_novelty(good, match(max_jaccard=0.41, nearest_entry_id="lemur-a"), match(max_jaccard=0.0))
    ledger.record_novelty(copy, match(max_jaccard=0.42), match(max_jaccard=1.0, nearest_entry_id=good))
    for candidate_id, promoted in ((good, 0.91), (copy, 0.90)):  # promoted to longer training, audited
        ledger.record_promotion(candidate_id, evaluator_pb2.EvaluationResult(status=1, accuracy=promoted))
    audit = proxy_audit(ledger.candidates("dash", 1), epochs=5, min_spearman=0.5)
    ledger.set_cycle("dash", 1, audit_json=json.dumps(as_json(audit)))
    ledger.record_decision(good, Decision(Verdict.ADMITTED, "accuracy ≥ τ and novel", 0))
    ledger.record_decision(copy, Decision(Verdict.REJECTED, f"near-duplicate of {good} (J=1.000)", 1))
    ledger.record_decision(broken, Decision(Verdict.INVALID, "not valid: FORWARD_ERROR", 1))
    ledger.set_cycle("dash", 1, phase=Phase.COMPLETED)
    ledger.set_experiment("dash", state=ExperimentState.STOPPED)
    ledger.close()


@pytest.fixture
def dashboard(start_service, nats_server, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(the dashboard's base URL, the controller's state folder)."""
    state = tmp_path / "controller"
    _seed(state)
    corpus = write_corpus(tmp_path / "corpus", graphs=True)
    controller = start_service(
        "controller", "--state-dir", str(state), "--corpus-dir", str(corpus), "--nats-url", nats_server.url
    )
    for base in _serve(Settings(controller=controller.address, nats_url=nats_server.url)):
        yield base, state


def _serve(settings: Settings) -> Iterator[str]:
    served = serve_in_background(settings, port=0)
    try:
        yield served.url.rstrip("/")
    finally:
        served.stop()


@pytest.fixture
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser):
    """A new page, and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


def test_every_page_loads_without_a_console_error_and_shows_what_it_should(dashboard, browser) -> None:
    base, _ = dashboard
    page, errors = _page(browser)
    assert page.goto(base + "/").status == 200
    assert page.locator("#experiments").inner_text().count("dash") >= 1
    page.click("#experiments a:has-text('dash')")
    page.wait_for_selector("#cycle-table")
    assert "STOPPED" in page.inner_text("h1")
    page.wait_for_selector("#plot-valid .main-svg")  # Plotly drew from the bundle the dashboard serves
    for plot in ("accuracy", "dynamics", "novelty", "diversity"):
        page.wait_for_selector(f"#plot-{plot} .main-svg")
    page.wait_for_selector("#plot-proxy .main-svg")  # proxy vs promoted
    assert page.locator("#diversity-table tbody tr").count() == 1
    assert page.locator("#audit-table tbody tr").count() == 1  # too few to audit, and it says so
    assert "2 promoted: too few to audit" in page.inner_text("#audit-table")
    assert page.locator("form[action='/experiments/dash/resume'] button").count() == 1
    page.goto(base + "/")
    page.check("input[name=experiment][value=dash]")
    page.click("#compare")
    page.wait_for_selector("#plot-compare-valid .main-svg")
    assert page.locator("#comparison tbody tr").count() == 1
    assert "66.7 %" in page.inner_text("#comparison")  # 2 valid of the 3 generated
    assert page.goto(base + "/experiments/dash/candidates?decision=admitted").status == 200
    assert page.locator("#candidates tbody tr").count() == 1
    page.click("#candidates a:has-text('dash-c1-0000')")
    page.wait_for_selector("#program")
    assert (
        "class Net" in page.inner_text("#program") and page.locator("#program .k").count() > 0
    )  # highlighted
    assert "admitted" in page.inner_text("#verdict")
    assert page.goto(base + "/candidates/dash-c1-0002").status == 200
    assert "invalid" in page.inner_text("#verdict") and "FORWARD_ERROR" in page.inner_text("#verdict")
    assert errors == []


def test_a_cycle_event_on_nats_shows_up_without_a_reload(dashboard, browser, nats_server) -> None:
    base, state = dashboard
    page, errors = _page(browser)
    page.goto(base + "/experiments/dash")
    page.wait_for_function("document.getElementById('live-state').textContent.startsWith('Live')")
    assert page.locator("#cycle-table tbody tr").count() == 1
    page.evaluate("window.notReloaded = 'still here'")  # gone if the page reloads
    # the ledger gains cycle 2 and its event goes out on NATS, as a running controller would do
    ledger = Ledger(state / "ledger.sqlite3")
    ledger.start_cycle("dash", 2, event("dash", 2, "cycle_started"))
    ledger.close()

    def publish(*events) -> None:
        async def send() -> None:
            client = await connect_nats(nats_server.url, name="test-dashboard")
            try:
                await ensure_stream(client.jetstream())
                for one in events:
                    await publish_event(client.jetstream(), one)
            finally:
                await client.close()

        sender = threading.Thread(target=lambda: asyncio.run(send()))
        sender.start()
        sender.join(30)

    publish(event("dash", 2, "cycle_evaluated", candidates_evaluated=24, candidates_valid=21))
    page.wait_for_selector("#events li:has-text('cycle_evaluated')", timeout=15000)
    assert '"candidates_valid":21' in page.inner_text("#events")
    page.wait_for_function("document.querySelectorAll('#cycle-table tbody tr').length === 2", timeout=15000)
    assert page.evaluate("window.notReloaded") == "still here"
    # the experiment's end: the page says so and stops listening (no reconnecting to a server that
    # may end with `archloop run`)
    ledger = Ledger(state / "ledger.sqlite3")
    ledger.set_experiment("dash", state=ExperimentState.COMPLETED)
    ledger.close()
    publish(event("dash", 2, "experiment_completed", cycles_completed=2))
    page.wait_for_function(
        "document.getElementById('live-state').textContent.includes('has ended (completed)')", timeout=15000
    )
    page.wait_for_function("document.querySelector('h1').textContent.includes('COMPLETED')", timeout=15000)
    assert page.locator("form[action='/experiments/dash/resume']").count() == 0  # the header follows too
    assert page.evaluate("window.notReloaded") == "still here"
    assert errors == []


def test_unknown_ids_give_a_404_page(dashboard, browser) -> None:
    base, _ = dashboard
    page, errors = _page(browser)
    for path, words in (
        ("/experiments/nope", "experiment 'nope' does not exist"),
        ("/candidates/nope-c1-0000", "candidate 'nope-c1-0000' does not exist"),
        ("/no/such/page", "Not Found"),
    ):
        response = page.goto(base + path)
        assert response.status == 404, path
        assert words in page.inner_text("#message"), path
        assert "Traceback" not in page.content()
    # the only console messages are the browser's own notes of the 404 statuses
    assert all("404" in e for e in errors), errors


def test_a_controller_that_is_down_gives_a_page_that_says_so_and_retries(browser) -> None:
    dead = f"127.0.0.1:{_free_port()}"
    for base in _serve(Settings(controller=dead)):
        page, _ = _page(browser)
        response = page.goto(base + "/experiments/dash")
        assert response.status == 503
        assert f"The controller at {dead} did not answer (UNAVAILABLE)" in page.inner_text("#message")
        assert page.locator("meta[http-equiv='refresh']").get_attribute("content") == "5"
        assert "Traceback" not in page.content()


def test_the_static_report_opens_from_disk_with_the_network_cut(dashboard, browser, tmp_path: Path) -> None:
    from services.controller.report import write_report

    _, state = dashboard
    ledger = Ledger(state / "ledger.sqlite3")
    try:
        _, files = write_report(ledger, "dash", tmp_path / "report", tmp_path / "no-corpus")
    finally:
        ledger.close()
    report = tmp_path / "report" / "report.html"
    assert report in files
    context = browser.new_context(offline=True)
    asked: list[str] = []

    def only_the_file(route) -> None:
        asked.append(route.request.url)
        route.continue_() if route.request.url.startswith("file://") else route.abort()

    context.route("**/*", only_the_file)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(report.as_uri())
    for plot in ("valid", "accuracy", "dynamics", "novelty", "diversity", "proxy"):
        page.wait_for_selector(f"#plot-{plot} .main-svg")
    assert "2 promoted: too few to audit" in page.inner_text("#audit-table")
    assert page.locator("#cycle-table tbody tr").count() == 1
    assert page.locator("#candidates tbody tr").count() == 3
    page.click("#candidates a:has-text('dash-c1-0000')")  # an admitted one: its program, in the file
    assert page.locator("#program-dash-c1-0000 .code .k").count() > 0
    assert asked == [report.as_uri()] and errors == []
    context.close()


def test_an_experiment_is_started_and_stopped_from_the_dashboard(dashboard, browser) -> None:
    base, _ = dashboard
    page, errors = _page(browser)
    page.goto(base + "/")
    page.click("a:has-text('Start an experiment')")
    assert "cycles:" in page.input_value("#config")  # the packaged embedded config to begin from
    for bad, words in (
        ("cycles: [1, 2", "config: not YAML"),
        ("cycles: lots", "config: Failed to parse cycles field"),
        ("selection_policy: best", "selection_policy: 'best' is not one of ['threshold'"),
    ):
        page.goto(base + "/start")
        page.fill("#config", bad)
        page.click("#start button")
        assert words in page.inner_text("#message"), bad
        assert "Traceback" not in page.content()
    page.goto(base + "/start")
    page.fill("input[name=experiment_id]", "from-the-dashboard")
    page.click("#start button")
    page.wait_for_url(base + "/experiments/from-the-dashboard")
    assert "from-the-dashboard" in page.inner_text("h1")
    page.click("form[action='/experiments/from-the-dashboard/stop'] button")  # the controller allows it
    page.wait_for_url(base + "/experiments/from-the-dashboard")
    page.wait_for_function("/STOPP(ING|ED)/.test(document.querySelector('h1').textContent)", timeout=30000)
    assert [e for e in errors if "409" not in e and "400" not in e] == []
