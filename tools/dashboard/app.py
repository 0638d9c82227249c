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

The pages are tools.dashboard.routes, one module-level handler each. Every page asks the controller
over gRPC. An unknown experiment or candidate is a 404 page; a
controller that does not answer is a 503 page that says so and retries every 5 s, never a trace.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from archloop.clients import read_token_file
from tools.dashboard.common import COOKIE, OPEN_PATHS, Settings
from tools.dashboard.routes import EXCEPTION_HANDLERS, ROUTES, Dashboard

__all__ = ["COOKIE", "Settings", "create_app", "serve_in_background"]


def create_app(settings: Settings) -> Starlette:
    """The dashboard app (its pages: tools.dashboard.routes). ValueError when the auth token file cannot
    be read."""
    token = read_token_file(settings.auth_token_file) if settings.auth_token_file else ""
    cookie_value = _cookie_value(token) if token else ""
    app = Starlette(routes=ROUTES, exception_handlers=EXCEPTION_HANDLERS)
    app.state.dashboard = Dashboard(settings, token, cookie_value)
    if token:
        app.add_middleware(_TokenGate, expected=f"Bearer {token}", cookie_value=cookie_value)
    return app


def _cookie_value(token: str) -> str:
    """What the login cookie holds: an HMAC of the token (a stolen cookie does not give the token away)."""
    return hmac.new(token.encode(), b"archloop-dashboard-session", hashlib.sha256).hexdigest()


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


@dataclass
class Served:
    """A dashboard served from a daemon thread: its URL, and how to stop it."""

    url: str
    server: object
    thread: object
    closing: threading.Event  # the app's Dashboard.closing: its live-update streams end when set

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Live-update streams end first (each closes its NATS subscription), then the server."""
        self.closing.set()
        self.server.should_exit = True  # type: ignore[attr-defined]
        self.thread.join(timeout_seconds)  # type: ignore[attr-defined]


def serve_in_background(settings: Settings, host: str = "127.0.0.1", port: int = 8765) -> Served:
    """Serve the dashboard from a daemon thread (what `archloop run` does beside its progress view, and
    the browser tests) on `port`, or a free one when that is taken or 0, once it answers. RuntimeError if
    it cannot start."""
    import socket
    import time

    import uvicorn

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            probe.bind((host, 0))
        port = probe.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="archloop-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"the dashboard did not start on {host}:{port}")
    return Served(f"http://{host}:{port}/", server, thread, app.state.dashboard.closing)
