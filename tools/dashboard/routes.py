"""The dashboard's pages and endpoints, one module-level handler each; what they share (the settings,
the templates, the token, the controller and novelty stubs) is the app's `Dashboard`
(`request.app.state.dashboard`, set by tools.dashboard.app.create_app)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

import grpc
import yaml
from google.protobuf import json_format
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from archloop import ids, views
from archloop.clients import aio_channel
from archloop.errors import InvalidArgument
from archloop.v1 import controller_pb2, controller_pb2_grpc, novelty_pb2, novelty_pb2_grpc
from services.controller import config as experiment_config
from services.controller import stats
from services.controller.report import comparison_rows, comparison_series
from tools.dashboard.common import (
    COOKIE,
    DOWN,
    REFUSED,
    RPC_TIMEOUT_SECONDS,
    ControllerDown,
    Settings,
    follow,
    local_path,
    state_names,
)


class Dashboard:
    """What every handler uses: the settings, the templates, the login token and cookie value, and one
    channel each to the controller and the novelty service for the app's life."""

    def __init__(self, settings: Settings, token: str, cookie_value: str) -> None:
        self.settings, self.token, self.cookie_value = settings, token, cookie_value
        self.closing = threading.Event()  # set when the server stops: live-update streams end cleanly
        self.env = views.environment()
        self._controller: controller_pb2_grpc.ControllerServiceStub | None = None
        self._novelty: novelty_pb2_grpc.NoveltyServiceStub | None = None

    def controller(self) -> controller_pb2_grpc.ControllerServiceStub:
        if self._controller is None:
            channel = aio_channel(self.settings.controller, security=self.settings.peers)
            self._controller = controller_pb2_grpc.ControllerServiceStub(channel)
        return self._controller

    async def call(self, method, request):
        try:
            return await method(request, timeout=RPC_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in DOWN:
                raise ControllerDown(self.settings.controller, exc.code().name) from None
            # the controller's own sentence, on a page with the matching HTTP status; never a trace
            raise HTTPException(REFUSED.get(exc.code(), 502), exc.details() or exc.code().name) from None

    def page(self, name: str, status: int = 200, **context) -> HTMLResponse:
        template = self.env.get_template(name)
        return HTMLResponse(template.render(live=bool(self.settings.nats_url), **context), status_code=status)

    async def experiment(self, experiment_id: str) -> controller_pb2.Experiment:
        request = controller_pb2.GetExperimentRequest(experiment_id=experiment_id)
        return (await self.call(self.controller().GetExperiment, request)).experiment

    async def document(self, experiment_id: str) -> dict:
        request = controller_pb2.GetReportDocumentRequest(experiment_id=experiment_id)
        return json.loads((await self.call(self.controller().GetReportDocument, request)).document_json)

    async def neighbour(self, experiment_id: str, entry_id: str) -> str | None:
        """The nearest corpus program's code, from the novelty service (None when it is not at hand)."""
        if not self.settings.novelty:
            return None
        if self._novelty is None:
            channel = aio_channel(self.settings.novelty, security=self.settings.peers)
            self._novelty = novelty_pb2_grpc.NoveltyServiceStub(channel)
        request = novelty_pb2.GetEntryRequest(
            collection=ids.corpus_collection(experiment_id), entry_id=entry_id
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            return (await self._novelty.GetEntry(request, timeout=RPC_TIMEOUT_SECONDS)).entry.code
        return None


def dashboard(request: Request) -> Dashboard:
    return request.app.state.dashboard


async def experiments(request: Request) -> Response:
    d = dashboard(request)
    answer = await d.call(d.controller().ListExperiments, controller_pb2.ListExperimentsRequest())
    rows = sorted(answer.experiments, key=lambda e: -e.created_unix_ms)
    return d.page("experiments.html", title="Experiments", experiments=rows, names=state_names)


async def experiment(request: Request) -> Response:
    d = dashboard(request)
    experiment_id = request.path_params["experiment_id"]
    e, doc = await asyncio.gather(d.experiment(experiment_id), d.document(experiment_id))
    config = json_format.MessageToDict(e.config, preserving_proto_field_name=True)
    return d.page(
        "experiment.html", title=f"Experiment {experiment_id}", e=e, doc=doc,
        config=json.dumps(config, indent=2, sort_keys=True), names=state_names(e),
    )  # fmt: skip


async def live(request: Request) -> Response:
    """What the open experiment page reads again on each cycle event, in one request: the report
    document (for the plots) and its server-rendered parts, by element id."""
    d = dashboard(request)
    experiment_id = request.path_params["experiment_id"]
    e, doc = await asyncio.gather(d.experiment(experiment_id), d.document(experiment_id))
    sections: Any = d.env.get_template("sections.html").make_module({"live": bool(d.settings.nats_url)})
    context = {"e": e, "names": state_names(e), "cycles": doc["cycles"]}
    html = {
        "head": d.env.get_template("experiment_head.html").render(context),
        "progress": d.env.get_template("progress.html").render(context),
        "table": d.env.get_template("cycle_table.html").render(context),
        "diversity": str(sections.diversity(doc)),
        "audit": str(sections.audit(doc)),
        "reliability": str(sections.reliability(doc)),
        "lineage-section": str(sections.lineage(doc)),
    }
    return JSONResponse({"html": html, "doc": doc})


async def compare(request: Request) -> Response:
    """NNGPT Table 3 over the experiments named by ?experiment=… (repeated; none: every one)."""
    d = dashboard(request)
    chosen = list(dict.fromkeys(request.query_params.getlist("experiment")))
    if not chosen:
        answer = await d.call(d.controller().ListExperiments, controller_pb2.ListExperimentsRequest())
        chosen = [e.experiment_id for e in sorted(answer.experiments, key=lambda e: e.created_unix_ms)]
    items = []
    for experiment_id in chosen:
        e = await d.experiment(experiment_id)
        listing = controller_pb2.ListCyclesRequest(experiment_id=experiment_id)
        cycles = list((await d.call(d.controller().ListCycles, listing)).cycles)
        items.append((experiment_id, e.config, cycles))
    rows = stats.finite(comparison_rows(items))
    return d.page("compare.html", title="Comparison of experiments", rows=rows,
                series=stats.finite(comparison_series(items)))  # fmt: skip


async def start(request: Request) -> Response:
    """A new experiment: a name and a config (YAML of ExperimentConfig fields, a packaged one to
    begin from). A config that does not parse, or that the controller refuses, is a 400/409 page
    naming the field; a started one redirects to its page."""
    d = dashboard(request)
    configs = sorted(experiment_config.CONFIG_DIR.glob("*.yaml"))
    packaged = {path.stem: path.read_text() for path in configs}
    if request.method == "GET":
        chosen = request.query_params.get("from", experiment_config.EMBEDDED.stem)
        if chosen not in packaged:
            raise HTTPException(404, f"no packaged config {chosen!r} (there are {', '.join(packaged)})")
        return d.page("start.html", title="Start an experiment", packaged=packaged, chosen=chosen,
                    text=packaged[chosen], experiment_id="")  # fmt: skip
    form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    experiment_id = (form.get("experiment_id") or [""])[0].strip()
    text = (form.get("config") or [""])[0]
    try:
        data = yaml.safe_load(text) or {}
        config = experiment_config.from_mapping(data, "config")
    except yaml.YAMLError as exc:
        raise HTTPException(400, f"config: not YAML ({str(exc).splitlines()[0]})") from None
    except InvalidArgument as exc:
        raise HTTPException(400, str(exc)) from None
    if not experiment_id:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        experiment_id = f"{config.name or 'experiment'}-{stamp}"
    request_ = controller_pb2.StartExperimentRequest(experiment_id=experiment_id, config=config)
    await d.call(d.controller().StartExperiment, request_)
    return RedirectResponse(f"/experiments/{quote(experiment_id)}", status_code=303)


async def action(request: Request) -> Response:
    d = dashboard(request)
    experiment_id, verb = request.path_params["experiment_id"], request.path_params["verb"]
    stub = d.controller()
    if verb == "stop":
        await d.call(stub.StopExperiment, controller_pb2.StopExperimentRequest(experiment_id=experiment_id))
    elif verb == "resume":
        await d.call(
            stub.ResumeExperiment, controller_pb2.ResumeExperimentRequest(experiment_id=experiment_id)
        )
    else:
        raise HTTPException(404, f"no action {verb!r}")
    return RedirectResponse(f"/experiments/{experiment_id}", status_code=303)


async def candidates(request: Request) -> Response:
    d = dashboard(request)
    experiment_id = request.path_params["experiment_id"]
    query = request.query_params
    try:
        cycle = int(query.get("cycle") or 0)
    except ValueError:
        raise HTTPException(400, f"cycle: {query.get('cycle')!r} is not a number") from None
    listing = controller_pb2.ListCandidatesRequest(
        experiment_id=experiment_id, cycle=cycle,
        eval_status=query.get("status", ""), decision=query.get("decision", ""),
    )  # fmt: skip
    e = await d.experiment(experiment_id)
    answer = await d.call(d.controller().ListCandidates, listing)
    return d.page(
        "candidates.html", title=f"Candidates of {experiment_id}", e=e, rows=answer.candidates,
        cycle=cycle, status_filter=listing.eval_status, decision=listing.decision,
    )  # fmt: skip


async def candidate(request: Request) -> Response:
    d = dashboard(request)
    candidate_id = request.path_params["candidate_id"]
    answer = await d.call(
        d.controller().GetCandidate, controller_pb2.GetCandidateRequest(candidate_id=candidate_id)
    )
    c = answer.candidate
    generation = json.loads(c.generation_json or "{}")
    experiment_id = c.experiment_id
    neighbour = await d.neighbour(experiment_id, c.nearest_train) if c.nearest_train else None
    return d.page(
        "candidate.html", title=f"Candidate {candidate_id}", c=c, code=views.highlight(c.code),
        code_css=views.code_css(), generation=generation, experiment_id=experiment_id,
        neighbour=views.highlight(neighbour) if neighbour else None, diff=generation.get("diff", ""),
    )  # fmt: skip


async def events(request: Request) -> Response:
    d = dashboard(request)
    from sse_starlette.sse import EventSourceResponse

    experiment_id = request.path_params["experiment_id"]
    await d.experiment(experiment_id)  # 404 for an unknown one
    if not d.settings.nats_url:
        raise HTTPException(404, "live updates are off: the dashboard has no NATS URL")
    return EventSourceResponse(follow(d.settings.nats_url, experiment_id, d.closing))


async def plotly_js(request: Request) -> Response:
    return Response(await asyncio.to_thread(views.plotly_bundle), media_type="application/javascript",
                    headers={"Cache-Control": "max-age=86400"})  # fmt: skip


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in views.ASSETS:
        raise HTTPException(404, f"no static file {name!r}")
    media = "application/javascript" if name.endswith(".js") else "text/css"
    return Response(views.asset(name), media_type=media)


async def healthz(request: Request) -> Response:
    return Response("ok\n", media_type="text/plain")


async def login(request: Request) -> Response:
    """The form that asks for the token; a right one sets the cookie and goes where the visitor
    was going, a wrong one is a 401 page that says so."""
    d = dashboard(request)
    target = local_path(request.query_params.get("next", "/"))
    if not d.token:
        return RedirectResponse(target, status_code=303)
    if request.method == "GET":
        return d.page("login.html", status=200, title="Sign in", target=target, message="")
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0].strip()
    target = local_path((form.get("next") or [target])[0])
    if not hmac.compare_digest(given.encode(), d.token.encode()):
        return d.page("login.html", status=401, title="Sign in", target=target,
                    message="That token is not the one this dashboard was given.")  # fmt: skip
    response = RedirectResponse(target, status_code=303)
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(COOKIE, d.cookie_value, httponly=True, samesite="strict", secure=secure)
    return response


async def not_found(request: Request, exc: Exception) -> Response:
    d = dashboard(request)
    assert isinstance(exc, HTTPException)
    titles = {404: "Not found", 400: "Bad request", 409: "Refused", 502: "The controller refused"}
    return d.page("error.html", status=exc.status_code, title=titles.get(exc.status_code, "Error"),
                message=exc.detail)  # fmt: skip


async def controller_down(request: Request, exc: Exception) -> Response:
    d = dashboard(request)
    assert isinstance(exc, ControllerDown)
    return d.page("down.html", status=503, title="Controller not answering", address=exc.address,
                code=exc.code)  # fmt: skip


ROUTES = [
    Route("/", experiments),
    Route("/compare", compare),
    Route("/start", start, methods=["GET", "POST"]),
    Route("/experiments/{experiment_id}", experiment),
    Route("/experiments/{experiment_id}/live.json", live),
    Route("/experiments/{experiment_id}/events", events),
    Route("/experiments/{experiment_id}/candidates", candidates),
    Route("/experiments/{experiment_id}/{verb}", action, methods=["POST"]),
    Route("/candidates/{candidate_id}", candidate),
    Route("/static/plotly.min.js", plotly_js),
    Route("/static/{name}", static),
    Route("/healthz", healthz),
    Route("/login", login, methods=["GET", "POST"]),
]
EXCEPTION_HANDLERS = {HTTPException: not_found, ControllerDown: controller_down}
