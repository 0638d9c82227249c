"""gRPC surface of the evaluator: validate → Evaluator (in a worker thread) → EvaluationResult.

A replica runs at most `max_concurrent_evaluations` at once and answers RESOURCE_EXHAUSTED beyond
that, so a caller can try another replica. The sandbox's template process starts before the
service reports SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from pathlib import Path

import structlog

from archloop.datasets import NAMES as DATASETS
from archloop.defaults import nonzero_over
from archloop.errors import InvalidArgument, ResourceExhausted
from archloop.server import ServicerBase
from archloop.settings import SettingsError
from archloop.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc
from services.evaluator.evaluation import Evaluation, Evaluator, Protocol
from services.evaluator.sandbox import Sandbox, SandboxLimits, SandboxUnavailable
from services.evaluator.settings import EvaluatorSettings

log = structlog.get_logger("archloop.evaluator")

_ISOLATION = {
    "namespace": evaluator_pb2.NETWORK_ISOLATION_NAMESPACE,
    "none": evaluator_pb2.NETWORK_ISOLATION_NONE,
    "gvisor": evaluator_pb2.NETWORK_ISOLATION_GVISOR,
}


def protocol_from_proto(p: common_pb2.EvaluationProtocol) -> Protocol:
    """Zero fields take the defaults (docs/method.md#evaluation-protocol)."""
    return nonzero_over(Protocol(), p)


def result_to_proto(e: Evaluation, replica: str) -> evaluator_pb2.EvaluationResult:
    return evaluator_pb2.EvaluationResult(
        candidate_id=e.candidate_id,
        status=evaluator_pb2.EvaluationStatus.Value(f"EVALUATION_STATUS_{e.status}"),
        stages=[
            evaluator_pb2.StageResult(
                stage=evaluator_pb2.EvaluationStage.Value(f"EVALUATION_STAGE_{s.stage.upper()}"),
                status=evaluator_pb2.EvaluationStatus.Value(f"EVALUATION_STATUS_{s.status}"),
                duration_seconds=s.duration_seconds,
                message=s.message,
            )
            for s in e.stages
        ],
        accuracy=e.accuracy,
        train_loss=e.train_loss,
        param_count=e.param_count,
        flops=e.flops,
        train_images_per_second=e.train_images_per_second,
        total_duration_seconds=e.total_duration_seconds,
        epoch_accuracies=e.epoch_accuracies,
        structural_tokens=e.structural_tokens,
        wiring_hash=e.architecture.get("wiring_hash", ""),
        op_hash=e.architecture.get("op_hash", ""),
        architecture_graph=e.architecture.get("graph", ""),
        violations=[evaluator_pb2.PolicyViolation(rule=r, line=n, detail=d) for r, n, d in e.violations],
        network_isolation=_ISOLATION[e.network_isolation],
        stdout_tail=e.stdout_tail,
        stderr_tail=e.stderr_tail,
        evaluator_replica=replica,
    )


def progress_to_proto(record: dict) -> evaluator_pb2.EvaluationProgress:
    return evaluator_pb2.EvaluationProgress(
        stage=evaluator_pb2.EvaluationStage.Value(f"EVALUATION_STAGE_{record.get('stage', 'train').upper()}"),
        epoch=record.get("epoch", 0),
        images_seen=record.get("images_seen", 0),
        images_total=record.get("images_total", 0),
        running_loss=record.get("running_loss", 0.0),
        elapsed_seconds=record.get("elapsed_seconds", 0.0),
    )


def _log_failed_restart(restart: asyncio.Future) -> None:
    if not restart.cancelled() and restart.exception() is not None:
        log.error("evaluator_template_restart_failed", error=str(restart.exception()))


class EvaluatorServicer(ServicerBase, evaluator_pb2_grpc.EvaluatorServiceServicer):
    service_name = evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name
    add_to_server = staticmethod(evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server)

    def __init__(self, settings: EvaluatorSettings) -> None:
        self.settings = settings
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        limits = SandboxLimits(
            address_space_bytes=settings.address_space_gib * 2**30, threads=settings.threads_per_evaluation
        )
        self.sandbox = Sandbox(
            Path(settings.work_dir),
            limits,
            slots=settings.max_concurrent_evaluations,
            kind=settings.sandbox,
            runsc_platform=settings.runsc_platform,
        )
        self.evaluator = Evaluator(
            self.sandbox, Path(settings.data_dir), settings.allow_download, settings.deadlines()
        )
        self.running = 0
        self._restarting: asyncio.Future | None = None

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.sandbox.start)
        except SandboxUnavailable as exc:  # never a silent fallback to another sandbox
            raise SettingsError(f"--sandbox/ARCHLOOP_SANDBOX: {exc}") from None

    async def stop(self) -> None:
        self.sandbox.stop()

    def live(self) -> bool:
        """The template process is up. When it died with no evaluation running (one that is running
        restarts it and runs again), it is restarted here; health is NOT_SERVING until it answers."""
        if self.sandbox.alive():
            return True
        if (
            self.running == 0
            and not self.sandbox.stopped
            and (self._restarting is None or self._restarting.done())
        ):
            generation = self.sandbox.generation
            self._restarting = asyncio.ensure_future(asyncio.to_thread(self.sandbox.restart, generation))
            self._restarting.add_done_callback(_log_failed_restart)
        return False

    def _admit(self) -> None:
        if self.running >= self.settings.max_concurrent_evaluations:
            raise ResourceExhausted(
                f"this replica already runs {self.running} of {self.settings.max_concurrent_evaluations} "
                "evaluations; try another replica or later"
            )
        self.running += 1

    async def _evaluate(
        self, request: evaluator_pb2.EvaluateCandidateRequest, on_progress=None
    ) -> Evaluation:
        if request.static_only and request.forward_only:
            raise InvalidArgument("forward_only", "cannot go with static_only (one stops before the other)")
        if request.static_only:  # milliseconds in this process: no sandbox, no slot
            return await asyncio.to_thread(self.evaluator.screen, request.candidate_id, request.code)
        protocol = protocol_from_proto(request.protocol)
        self._admit()
        cancel = threading.Event()
        work = asyncio.ensure_future(
            asyncio.to_thread(
                self.evaluator.evaluate, request.candidate_id, request.code, protocol,
                request.structural_tokens, on_progress, cancel, request.forward_only,
            )
        )  # fmt: skip
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # the caller went away (cancelled, deadline, or it died): kill the job, and hold the slot
            # until the sandbox has cleaned up, so the next request finds it free
            cancel.set()
            with contextlib.suppress(Exception):
                await work
            raise
        finally:
            self.running -= 1

    async def EvaluateCandidate(self, request, context):
        evaluation = await self._evaluate(request)
        return evaluator_pb2.EvaluateCandidateResponse(result=result_to_proto(evaluation, self.replica))

    async def StreamEvaluation(self, request, context):
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()

        def on_progress(record: dict) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, record)

        task = asyncio.ensure_future(self._evaluate(request.evaluation, on_progress))
        while not task.done() or not updates.empty():
            getter = asyncio.ensure_future(updates.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield evaluator_pb2.StreamEvaluationResponse(progress=progress_to_proto(getter.result()))
            else:
                getter.cancel()
        evaluation = await task
        yield evaluator_pb2.StreamEvaluationResponse(result=result_to_proto(evaluation, self.replica))

    async def DescribeCapacity(self, request, context):
        return evaluator_pb2.DescribeCapacityResponse(
            max_concurrent_evaluations=self.settings.max_concurrent_evaluations,
            running_evaluations=self.running,
            device="cpu",
            replica=self.replica,
            network_isolation=_ISOLATION[self.sandbox.network_isolation],
            datasets=list(DATASETS),
        )
