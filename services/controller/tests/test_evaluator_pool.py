"""The controller's evaluator pool: replicas found by name, their capacities summed, work spread over
them, scaling up and down picked up without a restart.

Two real evaluator services listen on two loopback addresses with the same port (127.0.0.2 and
127.0.0.3, as two pods behind a headless Service). The one test double is the name resolution,
`ScalingDns`, standing in for the cluster DNS of Kubernetes, which cannot run here; the real
resolver (`resolve_dns`, getaddrinfo) is tested on its own.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from archloop.prompts import BASELINE_FILE
from archloop.settings import SettingsError, load_settings
from archloop.v1 import common_pb2, evaluator_pb2
from services.controller.evaluators import EvaluatorPool, parse_target, resolve_dns
from services.controller.settings import ControllerSettings


class ScalingDns:
    """Test double for Kubernetes DNS: a headless Service's A records, changed by the test."""

    def __init__(self, *targets: str) -> None:
        self.targets = list(targets)
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return list(self.targets)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_targets_parse_and_the_real_resolver_answers() -> None:
    assert parse_target("dns:///evaluator.archloop.svc:50053") == ("evaluator.archloop.svc", 50053, True)
    assert parse_target("127.0.0.1:50053") == ("127.0.0.1", 50053, False)
    assert parse_target("dns:///[::1]:50053") == ("::1", 50053, True)
    for bad in ("evaluator", "dns:///evaluator", "host:port", ":50053"):
        with pytest.raises(ValueError, match="not host:port or dns:///host:port"):
            parse_target(bad)
    assert "127.0.0.1:50053" in resolve_dns("localhost", 50053)
    assert resolve_dns("no-such-host.invalid", 50053) == []


def test_a_malformed_evaluator_address_is_a_configuration_error() -> None:
    with pytest.raises(SettingsError, match=r"--evaluator-addr: .*not host:port"):
        load_settings(ControllerSettings, ["--evaluator-addr", "dns:///evaluator"], environ={})
    settings = load_settings(
        ControllerSettings, [], environ={"ARCHLOOP_EVALUATOR_ADDR": "dns:///evaluator:50053"}
    )
    assert settings.evaluator_addr == "dns:///evaluator:50053"


def _request(candidate_id: str) -> evaluator_pb2.EvaluateCandidateRequest:
    protocol = common_pb2.EvaluationProtocol(
        dataset="digits", epochs=1, batch_size=64, time_limit_seconds=120, max_train_images=256
    )
    return evaluator_pb2.EvaluateCandidateRequest(
        candidate_id=candidate_id, code=BASELINE_FILE.read_text(), protocol=protocol
    )


async def _evaluate_all(pool: EvaluatorPool, ids: list[str]) -> list[str]:
    """Evaluate concurrently through the pool's slots (more candidates than slots: they queue); the
    replica id that answered each. Every candidate is answered once, none is refused."""
    busy: list[int] = []

    async def one(candidate_id: str) -> tuple[str, str]:
        async with pool.slot() as stub:
            busy.append(pool.in_flight)
            response = await stub.EvaluateCandidate(_request(candidate_id), timeout=300)
        assert response.result.status == evaluator_pb2.EVALUATION_STATUS_OK, str(response.result)[:800]
        return response.result.candidate_id, response.result.evaluator_replica

    answers = await asyncio.gather(*(one(i) for i in ids))
    assert sorted(candidate for candidate, _ in answers) == sorted(ids)  # none lost, none twice
    assert max(busy) <= pool.capacity  # the queue waited for slots: nobody got RESOURCE_EXHAUSTED
    return [replica for _, replica in answers]


async def _until(predicate, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
async def test_scaling_evaluators_changes_the_pool_without_a_restart(start_service, tmp_path: Path) -> None:
    port = free_port()
    first = start_service("evaluator", "--host", "127.0.0.2", "--port", str(port),
                          "--work-dir", str(tmp_path / "jobs-a"))  # fmt: skip
    dns = ScalingDns(f"127.0.0.2:{port}")
    pool = EvaluatorPool(f"dns:///evaluator.test:{port}", resolver=dns, refresh_seconds=0.5)
    try:
        assert await pool.wait_capacity(30) == 1
        assert {r["target"] for r in pool.describe()} == {f"127.0.0.2:{port}"}
        alone = set(await _evaluate_all(pool, ["one-a", "one-b"]))
        assert len(alone) == 1

        # scale up: a second pod becomes ready and appears in DNS; nothing else changes
        second = start_service("evaluator", "--host", "127.0.0.3", "--port", str(port),
                               "--work-dir", str(tmp_path / "jobs-b"))  # fmt: skip
        dns.targets.append(f"127.0.0.3:{port}")
        await _until(lambda: pool.capacity == 2)
        both = set(await _evaluate_all(pool, [f"two-{i}" for i in range(6)]))
        assert len(both) == 2 and alone < both  # both replicas took work

        # scale down: the first pod leaves DNS; new work goes to the second only
        dns.targets.remove(f"127.0.0.2:{port}")
        await _until(lambda: pool.capacity == 1)
        after = set(await _evaluate_all(pool, ["three-a", "three-b"]))
        assert after == both - alone
        assert first.proc.poll() is None and second.proc.poll() is None
    finally:
        await pool.close()


async def test_a_replica_that_never_answers_gives_zero_capacity() -> None:
    dns = ScalingDns("127.0.0.1:1")  # nothing listens on port 1
    pool = EvaluatorPool(
        "dns:///evaluator.test:1", resolver=dns, refresh_seconds=0.2, describe_timeout_seconds=0.3
    )
    try:
        assert await pool.wait_capacity(2.0) == 0
        assert len(dns.lookups) >= 2  # it kept looking
    finally:
        await pool.close()
