"""The sandbox's template process dies (killed, its pipe closed): the candidate in flight runs again on a
restarted template and gets its own verdict, never TIMEOUT for our failure; the service's health says
so while the template is down and comes back by itself; nothing waits for a time limit."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archloop.clients import aio_channel
from archloop.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc
from services.evaluator.evaluation import TEMPLATE_ATTEMPTS, Evaluator, Protocol
from services.evaluator.sandbox import Sandbox, TemplateDied
from services.evaluator.tests.test_evaluation import GOOD

pytestmark = pytest.mark.slow
SERVICE = "archloop.v1.EvaluatorService"


def test_a_template_killed_mid_candidate_is_restarted_and_the_candidate_gets_its_verdict(tmp_path) -> None:
    sandbox = Sandbox(tmp_path / "jobs")
    sandbox.start()
    try:
        first_template = sandbox.template.pid
        killed = []

        def kill_on_first_batch(record: dict) -> None:
            if record.get("stage") == "train" and not killed:
                os.kill(first_template, signal.SIGKILL)
                killed.append(time.monotonic())

        evaluator = Evaluator(sandbox, tmp_path)
        started = time.monotonic()
        result = evaluator.evaluate(
            "c1", GOOD, Protocol(epochs=1, time_limit_seconds=300), on_progress=kill_on_first_batch
        )
        took = time.monotonic() - started
        assert killed, "the template was never killed: no training progress seen"
        assert result.status == "OK" and result.accuracy > 0.2, result.stages
        assert sandbox.template_restarts == 1 and sandbox.template.pid != first_template
        assert took < 120, f"{took:.0f} s: the dead template was waited on"
        again = evaluator.evaluate("c2", GOOD, Protocol(epochs=1))
        assert again.status == "OK"
    finally:
        sandbox.stop()


class DyingSandbox:
    """An in-process fake of the Sandbox whose template dies under every run (what a candidate that
    kills it would do): the evaluator's own logic, without a template to kill."""

    def __init__(self, real: Sandbox) -> None:
        self.real, self.generation, self.restarts, self.limits = real, 0, 0, real.limits

    def run(self, *args, **kwargs):
        raise TemplateDied("the template process ended while the job ran")

    def restart(self, generation: int) -> None:
        self.restarts += 1
        self.generation += 1


def test_a_candidate_under_which_the_template_always_dies_is_crashed_after_two_runs(tmp_path) -> None:
    fake = DyingSandbox(Sandbox(tmp_path / "jobs"))
    result = Evaluator(fake, tmp_path).evaluate("c1", GOOD, Protocol())  # type: ignore[arg-type]
    assert result.status == "CRASHED" and fake.restarts == TEMPLATE_ATTEMPTS
    assert f"ended under this candidate {TEMPLATE_ATTEMPTS} times" in result.stages[-1].message


async def _health(channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)).status


async def _becomes(channel, status: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await _health(channel) == status:
            return True
        await asyncio.sleep(0.2)
    return False


async def test_a_template_killed_between_candidates_is_restarted_and_health_says_so(
    start_service, tmp_path
) -> None:
    proc = start_service(
        "evaluator", "--work-dir", str(tmp_path / "jobs"), "--max-concurrent-evaluations", "1"
    )
    templates = [c for c in psutil.Process(proc.proc.pid).children() if "template" in " ".join(c.cmdline())]
    assert len(templates) == 1
    async with aio_channel(proc.address) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        templates[0].kill()
        assert await _becomes(channel, health_pb2.HealthCheckResponse.NOT_SERVING, 30), "health never said so"
        assert await _becomes(channel, health_pb2.HealthCheckResponse.SERVING, 90), (
            "the template never came back"
        )
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(channel)
        request = evaluator_pb2.EvaluateCandidateRequest(
            candidate_id="after", code=GOOD, protocol=common_pb2.EvaluationProtocol(dataset="digits")
        )
        try:
            response = await stub.EvaluateCandidate(request, timeout=120)
        except grpc.aio.AioRpcError as exc:  # before: BrokenPipe → INTERNAL, and the experiment failed
            pytest.fail(f"{exc.code().name}: {exc.details()}")
        assert response.result.status == evaluator_pb2.EVALUATION_STATUS_OK
    assert proc.proc.poll() is None
