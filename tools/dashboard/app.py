"""`archloop dashboard`: a web app over the controller's API and the NATS cycle events (issue 22).

Chosen libraries (docs/dashboard.md says more):
- Starlette, served by uvicorn: a small, well-kept ASGI toolkit; the pages are HTML, so FastAPI's
  request-model layer would add nothing.
- Jinja2 templates (autoescaped), the same ones for every page.
- Server-sent events (sse-starlette): the open experiment page keeps one EventSource; the server
  subscribes to the experiment's subject on NATS JetStream (only new events) and forwards each one,
  and the page then re-reads the cycle table and the plots. One direction is all a dashboard needs,
  so not websockets.
- Plotly for the plots, its JavaScript bundle served from the plotly wheel (no CDN: works offline).
- Pygments for the programs' syntax highlighting, on the server (no script).
The templates, the style sheet and the plotting script live in archloop.views: the static report
(`archloop report`) renders the same ones into a single offline file.

With an auth token file (ARCHLOOP_AUTH_TOKEN_FILE, the services' bearer token) every page but /login
and /healthz needs `Authorization: Bearer <token>` (an ingress or a script) or the cookie /login sets
after the token is typed in (an HMAC of the token, never the token itself).

Every page asks the controller over gRPC. An unknown experiment or candidate is a 404 page; a
controller that does not answer is a 503 page that says so and retries every 5 s, never a trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

import grpc
import yaml
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from archloop import views
from archloop.clients import ChannelSecurity, aio_channel, read_token_file
from archloop.enums import short_name
from archloop.errors import InvalidArgument
from archloop.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    events_pb2,
    novelty_pb2,
    novelty_pb2_grpc,
)
from services.controller import config as experiment_config
from services.controller import stats
from services.controller.report import comparison_rows, comparison_series

RPC_TIMEOUT_SECONDS = 10.0
COOKIE = "archloop_dashboard"
OPEN_PATHS = {"/login", "/healthz"}  # what answers without the token
REFUSED = {  # a gRPC refusal as an HTTP status (anything else the controller answers: 502)
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNAUTHENTICATED: 502,
}
DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@dataclass(frozen=True)
class Settings:
    controller: str  # host:port of the controller
    nats_url: str = ""  # live updates from NATS JetStream ("" = the page polls instead)
    novelty: str = ""  # the novelty service, for a candidate's nearest corpus program ("" = its id only)
    auth_token_file: str = ""  # the bearer token a visitor must show ("" = none: loopback use)
    peers: ChannelSecurity = field(default_factory=ChannelSecurity)  # TLS / token towards the services


class ControllerDown(Exception):
    def __init__(self, address: str, code: str) -> None:
        super().__init__(f"{address}: {code}")
        self.address, self.code = address, code


def create_app(settings: Settings) -> Starlette:
    """The dashboard app. ValueError when the auth token file cannot be read."""
    env = views.environment()
    state: dict = {}
    token = read_token_file(settings.auth_token_file) if settings.auth_token_file else ""
    cookie_value = _cookie_value(token) if token else ""

    def controller() -> controller_pb2_grpc.ControllerServiceStub:
        if "controller" not in state:
            channel = aio_channel(settings.controller, security=settings.peers)
            state["controller"] = controller_pb2_grpc.ControllerServiceStub(channel)
        return state["controller"]

    async def call(method, request):
        try:
            return await method(request, timeout=RPC_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in DOWN:
                raise ControllerDown(settings.controller, exc.code().name) from None
            # the controller's own sentence, on a page with the matching HTTP status; never a trace
            raise HTTPException(REFUSED.get(exc.code(), 502), exc.details() or exc.code().name) from None

    def page(name: str, status: int = 200, **context) -> HTMLResponse:
        template = env.get_template(name)
        return HTMLResponse(template.render(live=bool(settings.nats_url), **context), status_code=status)

    async def experiments(request: Request) -> Response:
        answer = await call(controller().ListExperiments, controller_pb2.ListExperimentsRequest())
        rows = sorted(answer.experiments, key=lambda e: -e.created_unix_ms)
        return page("experiments.html", title="Experiments", experiments=rows, names=_state_names)

    async def _experiment(experiment_id: str) -> controller_pb2.Experiment:
        request = controller_pb2.GetExperimentRequest(experiment_id=experiment_id)
        return (await call(controller().GetExperiment, request)).experiment

    async def _document(experiment_id: str) -> dict:
        request = controller_pb2.GetReportDocumentRequest(experiment_id=experiment_id)
        return json.loads((await call(controller().GetReportDocument, request)).document_json)

    async def experiment(request: Request) -> Response:
        experiment_id = request.path_params["experiment_id"]
        e, doc = await asyncio.gather(_experiment(experiment_id), _document(experiment_id))
        config = json_format.MessageToDict(e.config, preserving_proto_field_name=True)
        return page(
            "experiment.html", title=f"Experiment {experiment_id}", e=e, doc=doc,
            config=json.dumps(config, indent=2, sort_keys=True), names=_state_names(e),
        )  # fmt: skip

    async def live(request: Request) -> Response:
        """What the open experiment page reads again on each cycle event, in one request: the report
        document (for the plots) and its server-rendered parts, by element id."""
        experiment_id = request.path_params["experiment_id"]
        e, doc = await asyncio.gather(_experiment(experiment_id), _document(experiment_id))
        sections: Any = env.get_template("sections.html").make_module({"live": bool(settings.nats_url)})
        context = {"e": e, "names": _state_names(e), "cycles": doc["cycles"]}
        html = {
            "head": env.get_template("experiment_head.html").render(context),
            "progress": env.get_template("progress.html").render(context),
            "table": env.get_template("cycle_table.html").render(context),
            "diversity": str(sections.diversity(doc)),
            "audit": str(sections.audit(doc)),
            "reliability": str(sections.reliability(doc)),
            "lineage-section": str(sections.lineage(doc)),
        }
        return JSONResponse({"html": html, "doc": doc})

    async def compare(request: Request) -> Response:
        """NNGPT Table 3 over the experiments named by ?experiment=… (repeated; none: every one)."""
        chosen = list(dict.fromkeys(request.query_params.getlist("experiment")))
        if not chosen:
            answer = await call(controller().ListExperiments, controller_pb2.ListExperimentsRequest())
            chosen = [e.experiment_id for e in sorted(answer.experiments, key=lambda e: e.created_unix_ms)]
        items = []
        for experiment_id in chosen:
            e = await _experiment(experiment_id)
            listing = controller_pb2.ListCyclesRequest(experiment_id=experiment_id)
            cycles = list((await call(controller().ListCycles, listing)).cycles)
            items.append((experiment_id, e.config, cycles))
        rows = stats.finite(comparison_rows(items))
        return page("compare.html", title="Comparison of experiments", rows=rows,
                    series=stats.finite(comparison_series(items)))  # fmt: skip

    async def start(request: Request) -> Response:
        """A new experiment: a name and a config (YAML of ExperimentConfig fields, a packaged one to
        begin from). A config that does not parse, or that the controller refuses, is a 400/409 page
        naming the field; a started one redirects to its page."""
        configs = sorted(experiment_config.CONFIG_DIR.glob("*.yaml"))
        packaged = {path.stem: path.read_text() for path in configs}
        if request.method == "GET":
            chosen = request.query_params.get("from", experiment_config.EMBEDDED.stem)
            if chosen not in packaged:
                raise HTTPException(404, f"no packaged config {chosen!r} (there are {', '.join(packaged)})")
            return page("start.html", title="Start an experiment", packaged=packaged, chosen=chosen,
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
        await call(controller().StartExperiment, request_)
        return RedirectResponse(f"/experiments/{quote(experiment_id)}", status_code=303)

    async def action(request: Request) -> Response:
        experiment_id, verb = request.path_params["experiment_id"], request.path_params["verb"]
        stub = controller()
        if verb == "stop":
            await call(stub.StopExperiment, controller_pb2.StopExperimentRequest(experiment_id=experiment_id))
        elif verb == "resume":
            await call(
                stub.ResumeExperiment, controller_pb2.ResumeExperimentRequest(experiment_id=experiment_id)
            )
        else:
            raise HTTPException(404, f"no action {verb!r}")
        return RedirectResponse(f"/experiments/{experiment_id}", status_code=303)

    async def candidates(request: Request) -> Response:
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
        e = await _experiment(experiment_id)
        answer = await call(controller().ListCandidates, listing)
        return page(
            "candidates.html", title=f"Candidates of {experiment_id}", e=e, rows=answer.candidates,
            cycle=cycle, status_filter=listing.eval_status, decision=listing.decision,
        )  # fmt: skip

    async def candidate(request: Request) -> Response:
        candidate_id = request.path_params["candidate_id"]
        answer = await call(
            controller().GetCandidate, controller_pb2.GetCandidateRequest(candidate_id=candidate_id)
        )
        c = answer.candidate
        generation = json.loads(c.generation_json or "{}")
        experiment_id = candidate_id.rsplit("-c", 1)[0]
        neighbour = await _neighbour(experiment_id, c.nearest_train) if c.nearest_train else None
        return page(
            "candidate.html", title=f"Candidate {candidate_id}", c=c, code=views.highlight(c.code),
            code_css=views.code_css(), generation=generation, experiment_id=experiment_id,
            neighbour=views.highlight(neighbour) if neighbour else None, diff=generation.get("diff", ""),
        )  # fmt: skip

    async def _neighbour(experiment_id: str, entry_id: str) -> str | None:
        """The nearest corpus program's code, from the novelty service (None when it is not at hand)."""
        if not settings.novelty:
            return None
        if "novelty" not in state:  # one channel for the app's life, as for the controller
            channel = aio_channel(settings.novelty, security=settings.peers)
            state["novelty"] = novelty_pb2_grpc.NoveltyServiceStub(channel)
        stub = state["novelty"]
        request = novelty_pb2.GetEntryRequest(collection=f"{experiment_id}-corpus", entry_id=entry_id)
        with contextlib.suppress(grpc.aio.AioRpcError):
            return (await stub.GetEntry(request, timeout=RPC_TIMEOUT_SECONDS)).entry.code
        return None

    async def events(request: Request) -> Response:
        from sse_starlette.sse import EventSourceResponse

        experiment_id = request.path_params["experiment_id"]
        await _experiment(experiment_id)  # 404 for an unknown one
        if not settings.nats_url:
            raise HTTPException(404, "live updates are off: the dashboard has no NATS URL")
        return EventSourceResponse(_follow(settings.nats_url, experiment_id))

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
        target = _local_path(request.query_params.get("next", "/"))
        if not token:
            return RedirectResponse(target, status_code=303)
        if request.method == "GET":
            return page("login.html", status=200, title="Sign in", target=target, message="")
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0].strip()
        target = _local_path((form.get("next") or [target])[0])
        if not hmac.compare_digest(given.encode(), token.encode()):
            return page("login.html", status=401, title="Sign in", target=target,
                        message="That token is not the one this dashboard was given.")  # fmt: skip
        response = RedirectResponse(target, status_code=303)
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        response.set_cookie(COOKIE, cookie_value, httponly=True, samesite="strict", secure=secure)
        return response

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {404: "Not found", 400: "Bad request", 409: "Refused", 502: "The controller refused"}
        return page("error.html", status=exc.status_code, title=titles.get(exc.status_code, "Error"),
                    message=exc.detail)  # fmt: skip

    async def controller_down(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ControllerDown)
        return page("down.html", status=503, title="Controller not answering", address=exc.address,
                    code=exc.code)  # fmt: skip

    routes = [
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
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: not_found, ControllerDown: controller_down},
    )
    if token:
        app.add_middleware(_TokenGate, expected=f"Bearer {token}", cookie_value=cookie_value)
    return app


def _cookie_value(token: str) -> str:
    """What the login cookie holds: an HMAC of the token (a stolen cookie does not give the token away)."""
    return hmac.new(token.encode(), b"archloop-dashboard-session", hashlib.sha256).hexdigest()


def _local_path(target: str) -> str:
    """`target` if it is a path on this site, else "/" (no open redirect to another host)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


class _TokenGate:
    """ASGI middleware: a request needs `Authorization: Bearer <token>` or the login cookie; a browser
    without either is sent to /login, anything else gets 401 with a one-line reason. Constant-time
    comparisons, as archloop.server's interceptor does for gRPC."""

    def __init__(self, app, expected: str, cookie_value: str) -> None:
        self.app, self.expected, self.cookie_value = app, expected.encode(), cookie_value.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan" or scope["path"] in OPEN_PATHS:  # websockets too need the token
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.headers.get("authorization", "").encode()
        cookie = request.cookies.get(COOKIE, "").encode()
        if hmac.compare_digest(given, self.expected) or (
            cookie and hmac.compare_digest(cookie, self.cookie_value)
        ):
            await self.app(scope, receive, send)
            return
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
            response: Response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            response = Response(
                "authorization: a valid 'Bearer <token>' (or the dashboard's login cookie) is required\n",
                status_code=401, media_type="text/plain", headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        await response(scope, receive, send)


def _state_names(e: controller_pb2.Experiment) -> dict[str, str]:
    return {
        "state": short_name(controller_pb2.ExperimentState, e.state),
        "phase": short_name(controller_pb2.CyclePhase, e.current_phase),
    }


async def _follow(nats_url: str, experiment_id: str) -> AsyncIterator[dict]:
    """The experiment's new cycle events from NATS JetStream, as server-sent events."""
    from nats.js.api import DeliverPolicy

    from archloop.eventbus import SUBJECT_PREFIX, connect_nats

    client = await connect_nats(nats_url, name="archloop-dashboard")
    try:
        subject = f"{SUBJECT_PREFIX}.events.{experiment_id}.>"
        subscription = await client.jetstream().subscribe(
            subject, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        yield {"event": "ready", "data": "{}"}
        while True:
            message = await subscription.next_msg(timeout=None)
            event = events_pb2.Event.FromString(message.data)
            kind = event.WhichOneof("payload") or ""
            payload = {
                field.name: value for field, value in getattr(event, kind).ListFields()
            }  # flat scalars
            data = stats.finite({"kind": kind, "cycle": event.cycle, **payload})
            yield {"event": "cycle", "data": json.dumps(data)}
    finally:
        await client.close()


@dataclass
class Served:
    """A dashboard served from a daemon thread: its URL, and how to stop it."""

    url: str
    server: object
    thread: object

    def stop(self, timeout_seconds: float = 10.0) -> None:
        self.server.should_exit = True  # type: ignore[attr-defined]
        self.thread.join(timeout_seconds)  # type: ignore[attr-defined]


def serve_in_background(settings: Settings, host: str = "127.0.0.1", port: int = 8765) -> Served:
    """Serve the dashboard from a daemon thread (what `archloop run` does beside its progress view, and
    the browser tests) on `port`, or a free one when that is taken or 0, once it answers. RuntimeError if
    it cannot start."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            probe.bind((host, 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="archloop-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"the dashboard did not start on {host}:{port}")
    return Served(f"http://{host}:{port}/", server, thread)
