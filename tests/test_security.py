"""TLS and bearer-token auth of a service exposed to other tools (the novelty service here; every
service has the same settings, archloop/server.py), with real certificates made by openssl and the
real service process, client, CLI and controller settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archloop.clients import ChannelSecurity, sync_channel
from archloop.novelty_client import NoveltyClient
from archloop.v1 import novelty_pb2, novelty_pb2_grpc
from tools.testing import run_cli

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, signed by it (openssl)."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make test certificates"
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=archloop test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    (d / "token").write_text(TOKEN + "\n")
    (d / "wrong-token").write_text("not-the-token\n")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other-ca.pem",
        "-days", "2", "-subj", "/CN=someone else")  # fmt: skip
    return {name: d / name for name in ("ca.pem", "server.pem", "server.key", "token", "wrong-token",
                                        "other-ca.pem")}  # fmt: skip


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_tls_and_token_guard_every_rpc_but_health(start_service, pki, tmp_path: Path) -> None:
    proc = start_service(
        "novelty", "--db-path", str(tmp_path / "n.sqlite3"),
        "--tls-cert-file", str(pki["server.pem"]), "--tls-key-file", str(pki["server.key"]),
        "--auth-token-file", str(pki["token"]),
    )  # fmt: skip
    address = proc.address
    listing = novelty_pb2.ListCollectionsRequest()

    # plaintext to a TLS server: no connection
    plain = novelty_pb2_grpc.NoveltyServiceStub(grpc.insecure_channel(address))
    assert _code(lambda: plain.ListCollections(listing, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    # TLS with a CA that did not sign the server's certificate: no connection
    stranger = novelty_pb2_grpc.NoveltyServiceStub(
        sync_channel(address, ChannelSecurity(str(pki["other-ca.pem"])))
    )
    assert _code(lambda: stranger.ListCollections(listing, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    # TLS without a token, with a wrong one: UNAUTHENTICATED, for unary and streaming RPCs alike
    for token in ("", str(pki["wrong-token"])):
        channel = sync_channel(address, ChannelSecurity(str(pki["ca.pem"]), token))
        stub = novelty_pb2_grpc.NoveltyServiceStub(channel)
        assert (
            _code(lambda stub=stub: stub.ListCollections(listing, timeout=5))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        entries = iter([novelty_pb2.ImportEntriesRequest()])
        importing = stub.ImportEntries
        assert _code(lambda f=importing, e=entries: f(e, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        # the health check stays open: kubelet probes carry no token
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="archloop.v1.NoveltyService"), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # the right CA and token: everything works, through the Python client
    with NoveltyClient(address, tls_ca_file=str(pki["ca.pem"]), token_file=str(pki["token"])) as client:
        client.create_collection("shared")
        client.admit("shared", "a", "import torch\nx = torch.zeros(3)\n")
        assert client.check("import torch\nx = torch.zeros(3)\n", ["shared"]).matches[0].near_duplicate

    # and through the CLI, which refuses clearly without the token
    model = tmp_path / "m.py"
    model.write_text("import torch\nx = torch.zeros(3)\n")
    secure = ["--addr", address, "--tls-ca", str(pki["ca.pem"])]
    ok = run_cli("novelty", *secure, "--token-file", str(pki["token"]),
                 "check", "--collection", "shared", str(model), "--json")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    denied = run_cli("novelty", "--addr", address, "--tls-ca", str(pki["ca.pem"]),
                     "check", "--collection", "shared", str(model))  # fmt: skip
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    missing = run_cli("novelty", "--addr", address, "--tls-ca", str(tmp_path / "nope.pem"), "stats")
    assert missing.returncode == 2 and "nope.pem" in missing.stderr


def test_a_token_alone_works_over_plaintext(start_service, pki, tmp_path: Path) -> None:
    proc = start_service(
        "novelty", "--db-path", str(tmp_path / "n.sqlite3"), "--auth-token-file", str(pki["token"])
    )
    anonymous = novelty_pb2_grpc.NoveltyServiceStub(grpc.insecure_channel(proc.address))
    assert (
        _code(lambda: anonymous.ListCollections(novelty_pb2.ListCollectionsRequest(), timeout=5))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    with NoveltyClient(proc.address, token_file=str(pki["token"])) as client:
        assert client.list_collections() == []


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--tls-cert-file", "CERT"], "give both"),
        (["--tls-key-file", "KEY"], "give both"),
        (["--tls-client-ca-file", "CA"], "needs --tls-cert-file"),
        (["--tls-cert-file", "CERT", "--tls-key-file", "/nonexistent/key.pem"], "/nonexistent/key.pem"),
        (["--auth-token-file", "/nonexistent/token"], "--auth-token-file"),
    ],
)
def test_half_configured_security_is_a_configuration_error(pki, tmp_path: Path, args, complaint) -> None:
    args = [a.replace("CERT", str(pki["server.pem"])).replace("KEY", str(pki["server.key"]))
            .replace("CA", str(pki["ca.pem"])) if a.isupper() else a for a in args]  # fmt: skip
    db = tmp_path / "n.sqlite3"
    out = subprocess.run(
        [sys.executable, "-m", "services.novelty", "--port", "0", "--db-path", str(db), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert complaint in out.stderr and "configuration error" in out.stderr
    assert not (tmp_path / "n.sqlite3").exists()  # nothing was created
