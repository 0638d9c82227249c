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

Every page asks the controller over gRPC. An unknown experiment or candidate is a 404 page; a
controller that does not answer is a 503 page that says so and retries every 5 s, never a trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from archloop.clients import aio_channel
from archloop.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    evaluator_pb2,
    events_pb2,
    novelty_pb2,
    novelty_pb2_grpc,
)
from services.controller import stats
from services.controller.states import short_name

STATIC = Path(__file__).with_name("static")
RPC_TIMEOUT_SECONDS = 10.0
RETRY_SECONDS = 5
DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@dataclass(frozen=True)
class Settings:
    controller: str  # host:port of the controller
    nats_url: str = ""  # live updates from NATS JetStream ("" = the page polls instead)
    novelty: str = ""  # the novelty service, for a candidate's nearest corpus program ("" = its id only)


class ControllerDown(Exception):
    def __init__(self, address: str, code: str) -> None:
        super().__init__(f"{address}: {code}")
        self.address, self.code = address, code


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("tools.dashboard", "templates"), autoescape=select_autoescape())
    env.filters["num"] = _num
    env.filters["pct"] = lambda v: "–" if v is None or _nan(v) else f"{v * 100:.1f} %"
    env.filters["stage"] = lambda v: short_name(evaluator_pb2.EvaluationStage, v).lower()
    env.filters["status"] = lambda v: short_name(evaluator_pb2.EvaluationStatus, v)
    env.globals["retry_seconds"] = RETRY_SECONDS
    return env


def _nan(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _num(value: object, digits: int = 3) -> str:
    if value is None or _nan(value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def highlight(code: str) -> str:
    from pygments import highlight as pygmentize
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return pygmentize(code, PythonLexer(), HtmlFormatter(cssclass="code", linenos="table"))


def code_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(cssclass="code").get_style_defs(".code")


def plotly_bundle() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def create_app(settings: Settings) -> Starlette:
    env = _environment()
    state: dict = {}

    def controller() -> controller_pb2_grpc.ControllerServiceStub:
        if "controller" not in state:
            state["controller"] = controller_pb2_grpc.ControllerServiceStub(aio_channel(settings.controller))
        return state["controller"]

    async def call(method, request):
        try:
            return await method(request, timeout=RPC_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise HTTPException(404, exc.details()) from None
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise HTTPException(400, exc.details()) from None
            if exc.code() in DOWN:
                raise ControllerDown(settings.controller, exc.code().name) from None
            raise

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

    async def _cycles(experiment_id: str) -> list[dict]:
        answer = await call(
            controller().ListCycles, controller_pb2.ListCyclesRequest(experiment_id=experiment_id)
        )
        # every field, numbers as numbers (MessageToDict would quote the int64 ones)
        return [{f.name: getattr(c, f.name) for f in c.DESCRIPTOR.fields} for c in answer.cycles]

    async def experiment(request: Request) -> Response:
        experiment_id = request.path_params["experiment_id"]
        e = await _experiment(experiment_id)
        cycles = await _cycles(experiment_id)
        config = json_format.MessageToDict(e.config, preserving_proto_field_name=True)
        return page(
            "experiment.html", title=f"Experiment {experiment_id}", e=e, cycles=cycles,
            config=json.dumps(config, indent=2, sort_keys=True), names=_state_names(e),
        )  # fmt: skip

    async def cycle_table(request: Request) -> Response:
        experiment_id = request.path_params["experiment_id"]
        e = await _experiment(experiment_id)
        return page("cycle_table.html", e=e, cycles=await _cycles(experiment_id), names=_state_names(e))

    async def cycles_json(request: Request) -> Response:
        return JSONResponse(stats.finite(await _cycles(request.path_params["experiment_id"])))

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
            "candidate.html", title=f"Candidate {candidate_id}", c=c, code=highlight(c.code),
            code_css=code_css(), generation=generation, experiment_id=experiment_id,
            neighbour=highlight(neighbour) if neighbour else None, diff=generation.get("diff", ""),
        )  # fmt: skip

    async def _neighbour(experiment_id: str, entry_id: str) -> str | None:
        """The nearest corpus program's code, from the novelty service (None when it is not at hand)."""
        if not settings.novelty:
            return None
        if "novelty" not in state:  # one channel for the app's life, as for the controller
            state["novelty"] = novelty_pb2_grpc.NoveltyServiceStub(aio_channel(settings.novelty))
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
        if "plotly" not in state:
            state["plotly"] = await asyncio.to_thread(plotly_bundle)
        return Response(state["plotly"], media_type="application/javascript",
                        headers={"Cache-Control": "max-age=86400"})  # fmt: skip

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        path = STATIC / name
        if name not in {"app.js", "app.css"} or not path.exists():
            raise HTTPException(404, f"no static file {name!r}")
        media = "application/javascript" if name.endswith(".js") else "text/css"
        return Response(path.read_text(), media_type=media)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {404: "Not found", 400: "Bad request"}
        return page("error.html", status=exc.status_code, title=titles.get(exc.status_code, "Error"),
                    message=exc.detail)  # fmt: skip

    async def controller_down(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ControllerDown)
        return page("down.html", status=503, title="Controller not answering", address=exc.address,
                    code=exc.code)  # fmt: skip

    routes = [
        Route("/", experiments),
        Route("/experiments/{experiment_id}", experiment),
        Route("/experiments/{experiment_id}/table", cycle_table),
        Route("/experiments/{experiment_id}/cycles.json", cycles_json),
        Route("/experiments/{experiment_id}/events", events),
        Route("/experiments/{experiment_id}/candidates", candidates),
        Route("/experiments/{experiment_id}/{verb}", action, methods=["POST"]),
        Route("/candidates/{candidate_id}", candidate),
        Route("/static/plotly.min.js", plotly_js),
        Route("/static/{name}", static),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: not_found, ControllerDown: controller_down},
    )


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
