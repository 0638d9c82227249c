"""The dashboard behind the services' bearer token: `archloop dashboard --auth-token-file` (what the
Kubernetes Deployment runs) served by uvicorn on loopback, asked over real HTTP.

Without the token a browser is sent to the login form and anything else gets 401 with one line; the
token on an `Authorization: Bearer` header (an ingress, a script) or the cookie the login form sets
lets a request through (to a controller that is down here: 503, past the gate); a wrong token is a 401
login page; /healthz and /login answer without it; a login never redirects off the site. Off loopback
without a token the CLI refuses to serve; a bad token file or port is one line and exit 2."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.dashboard.app import COOKIE, Settings, serve_in_background
from tools.testing import run_cli

TOKEN = "s3cret-token-for-the-test"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(_NoRedirect)


def _ask(url: str, headers: dict | None = None, data: dict | None = None) -> tuple[int, dict, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with OPENER.open(request, timeout=15) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[str]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with socket.socket() as probe:  # a port nobody listens on: the controller is down
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    served = serve_in_background(Settings(controller=dead, auth_token_file=str(token_file)), port=0)
    try:
        yield served.url.rstrip("/")
    finally:
        served.stop()


def test_no_token_no_page(gated: str) -> None:
    status, headers, _ = _ask(gated + "/experiments/x?cycle=2", {"Accept": "text/html"})
    assert status == 303 and headers["location"] == "/login?next=%2Fexperiments%2Fx%3Fcycle%3D2"
    status, headers, body = _ask(gated + "/experiments/x/live.json")
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert body.startswith("authorization: a valid 'Bearer <token>'")
    status, _, _ = _ask(gated + "/", {"Authorization": "Bearer not-it", "Accept": "text/html"})
    assert status == 303  # a wrong header is no header
    for path in ("/healthz", "/login"):
        assert _ask(gated + path)[0] == 200, path


def test_the_header_or_the_login_cookie_lets_a_request_through(gated: str) -> None:
    status, _, body = _ask(gated + "/", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 503 and "did not answer" in body  # past the gate, at the (dead) controller
    status, _, body = _ask(gated + "/login", data={"token": "wrong", "next": "/experiments/x"})
    assert status == 401 and "That token is not the one this dashboard was given." in body
    status, headers, _ = _ask(gated + "/login", data={"token": TOKEN, "next": "/experiments/x"})
    assert status == 303 and headers["location"] == "/experiments/x"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert TOKEN not in cookie  # an HMAC of the token, not the token
    value = cookie.split(";", 1)[0]
    status, _, body = _ask(gated + "/", {"Cookie": value})
    assert status == 503 and "did not answer" in body
    assert _ask(gated + "/", {"Cookie": f"{COOKIE}=forged"})[0] == 401


def test_a_login_never_sends_the_visitor_off_the_site(gated: str) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        status, headers, _ = _ask(gated + "/login", data={"token": TOKEN, "next": target})
        assert status == 303 and headers["location"] == "/", target


def test_the_cli_will_not_serve_off_loopback_without_a_token(tmp_path: Path) -> None:
    result = run_cli("dashboard", "--host", "0.0.0.0", "--controller", "127.0.0.1:1")
    assert result.returncode == 2
    assert "--host 0.0.0.0 is reachable from other machines: give --auth-token-file" in result.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    result = run_cli("dashboard", "--auth-token-file", str(empty), "--controller", "127.0.0.1:1")
    assert result.returncode == 2 and f"the token file {empty} is empty" in result.stderr
    env = {**os.environ, "ARCHLOOP_DASHBOARD_PORT": "eighty"}
    result = run_cli("dashboard", "--controller", "127.0.0.1:1", env=env)
    assert result.returncode == 2 and "ARCHLOOP_DASHBOARD_PORT='eighty' is not a port" in result.stderr
