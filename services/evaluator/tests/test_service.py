"""The evaluator service as a real process: RPCs, capacity, streaming progress, bad input."""

from __future__ import annotations

import asyncio
import json
import os

import grpc
import pytest

from archloop.clients import aio_channel
from archloop.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc
from services.evaluator.tests.test_evaluation import GOOD
from tools.testing import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def evaluator_address(start_service, tmp_path) -> str:
    proc = start_service(
        "evaluator", "--work-dir", str(tmp_path / "jobs"), "--max-concurrent-evaluations", "1"
    )
    return proc.address


UNKNOWN_DATASET = evaluator_pb2.EvaluateCandidateRequest(
    code=GOOD, protocol=common_pb2.EvaluationProtocol(dataset="x")
)


def _request(code: str, **protocol) -> evaluator_pb2.EvaluateCandidateRequest:
    return evaluator_pb2.EvaluateCandidateRequest(
        candidate_id="c1", code=code, protocol=common_pb2.EvaluationProtocol(dataset="digits", **protocol)
    )


async def test_evaluate_stream_capacity_and_bad_input(evaluator_address) -> None:
    async with aio_channel(evaluator_address) as channel:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(channel)
        capacity = await stub.DescribeCapacity(evaluator_pb2.DescribeCapacityRequest(), timeout=10)
        assert capacity.max_concurrent_evaluations == 1 and "digits" in capacity.datasets
        assert capacity.network_isolation == evaluator_pb2.NETWORK_ISOLATION_NAMESPACE

        response = await stub.EvaluateCandidate(_request(GOOD, epochs=2, learning_rate=0.05), timeout=120)
        result = response.result
        assert result.status == evaluator_pb2.EVALUATION_STATUS_OK and result.accuracy > 0.3
        assert len(result.stages) == 8 and result.param_count > 0 and result.train_images_per_second > 0

        updates = [u async for u in stub.StreamEvaluation(
            evaluator_pb2.StreamEvaluationRequest(evaluation=_request(GOOD, epochs=2)), timeout=120
        )]  # fmt: skip
        assert updates[-1].WhichOneof("update") == "result"
        progress = [u.progress for u in updates if u.WhichOneof("update") == "progress"]
        assert progress and max(p.epoch for p in progress) >= 1

        slow = asyncio.ensure_future(
            stub.EvaluateCandidate(
                _request(
                    GOOD.replace("return self.body(x)", "while True:\n            pass"), time_limit_seconds=6
                ),
                timeout=60,
            )
        )
        await asyncio.sleep(1.0)
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await stub.EvaluateCandidate(_request(GOOD), timeout=10)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await slow).result.status == evaluator_pb2.EVALUATION_STATUS_TIMEOUT

        for request, field in [
            (_request(""), "code"),
            (_request(GOOD, batch_size=-1), "protocol.batch_size"),
            (UNKNOWN_DATASET, "protocol.dataset"),
        ]:  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.EvaluateCandidate(request, timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in bad.value.details()


async def test_a_caller_that_goes_away_frees_its_slot_and_kills_its_job(evaluator_address) -> None:
    """A client deadline (or a client that dies) cancels the RPC: the sandboxed job is killed and the
    slot is free for the next request, which must not fail."""
    spin = GOOD.replace("return self.body(x)", "while True:\n            pass")
    async with aio_channel(evaluator_address) as channel:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.EvaluateCandidate(_request(spin, time_limit_seconds=300), timeout=3)
        assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(50):  # the cancelled job is being killed; then the slot is free
            capacity = await stub.DescribeCapacity(evaluator_pb2.DescribeCapacityRequest(), timeout=10)
            if capacity.running_evaluations == 0:
                break
            await asyncio.sleep(0.2)
        assert capacity.running_evaluations == 0
        response = await stub.EvaluateCandidate(_request(GOOD), timeout=120)
        assert response.result.status == evaluator_pb2.EVALUATION_STATUS_OK


def test_cli_evaluate_prints_json(tmp_path) -> None:
    model = tmp_path / "model.py"
    model.write_text(GOOD)
    env = {**os.environ, "ARCHLOOP_CACHE": str(tmp_path / "cache")}
    out = run_cli("evaluate", str(model), "--dataset", "digits", "--epochs", "1", "--json",
                  "--work-dir", str(tmp_path / "jobs"), env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "EVALUATION_STATUS_OK" and 0 < result["accuracy"] <= 1
    broken = tmp_path / "broken.py"
    broken.write_text("def broken(:\n")
    out = run_cli("evaluate", str(broken), "--json", "--work-dir", str(tmp_path / "jobs"), env=env)
    assert out.returncode == 3 and json.loads(out.stdout)["status"] == "EVALUATION_STATUS_PARSE_ERROR"


async def test_a_forward_only_request_stops_before_training_with_the_architecture(evaluator_address) -> None:
    """forward_only: the sandboxed stages up to the parameter budget, the architecture recorded, no
    training; with static_only as well it is refused naming the field, and the service still answers."""
    async with aio_channel(evaluator_address) as channel:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(channel)
        request = _request(GOOD)
        request.forward_only = request.structural_tokens = True
        result = (await stub.EvaluateCandidate(request, timeout=60)).result
        assert result.status == evaluator_pb2.EVALUATION_STATUS_OK
        stages = [
            evaluator_pb2.EvaluationStage.Name(s.stage).removeprefix("EVALUATION_STAGE_")
            for s in result.stages
        ]
        assert stages[-3:] == ["INSTANTIATE", "FORWARD", "PARAM_BUDGET"] and "TRAIN" not in stages
        assert result.accuracy == 0 and not result.epoch_accuracies and result.param_count > 0
        assert len(result.wiring_hash) == 32 and result.architecture_graph
        full = _request(GOOD)
        full.structural_tokens = True
        trained = (await stub.EvaluateCandidate(full, timeout=120)).result
        assert trained.wiring_hash == result.wiring_hash and trained.epoch_accuracies
        both = _request(GOOD)
        both.forward_only = both.static_only = True
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.EvaluateCandidate(both, timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "forward_only" in bad.value.details()


async def test_a_static_only_request_screens_without_a_sandbox_or_a_slot(evaluator_address) -> None:
    """static_only: parse, screen and contract in the service process; answered even while the one slot
    is busy (the controller's novelty pre-check must not queue behind training)."""
    spin = GOOD.replace("return self.body(x)", "while True:\n            pass")
    async with aio_channel(evaluator_address) as channel:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(channel)
        busy = asyncio.ensure_future(stub.EvaluateCandidate(_request(spin, time_limit_seconds=6), timeout=60))
        await asyncio.sleep(1.0)
        static = _request(GOOD)
        static.static_only = True
        result = (await stub.EvaluateCandidate(static, timeout=10)).result
        assert result.status == evaluator_pb2.EVALUATION_STATUS_OK
        stages = [
            evaluator_pb2.EvaluationStage.Name(s.stage).removeprefix("EVALUATION_STAGE_")
            for s in result.stages
        ]
        assert stages == ["PARSE", "STATIC_SCREEN", "CONTRACT"]
        assert result.accuracy == 0 and result.total_duration_seconds < 1.0
        broken = _request("def broken(:\n")
        broken.static_only = True
        assert (await stub.EvaluateCandidate(broken, timeout=10)).result.status == (
            evaluator_pb2.EVALUATION_STATUS_PARSE_ERROR
        )
        empty = _request("")
        empty.static_only = True
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.EvaluateCandidate(empty, timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "code" in bad.value.details()
        assert (await busy).result.status == evaluator_pb2.EVALUATION_STATUS_TIMEOUT
