"""Controller benchmark: overhead per candidate and evaluator utilisation when evaluation is the bottleneck.

    python bench/controller_bench.py [--per-slot 50] [--work-ms 500 --work-ms 50] [--replicas 1 --replicas 8]
                                     [--write]

The controller's own loop (services.controller.loop.ExperimentRunner, its SQLite ledger on disk, gRPC
clients) runs one cycle against: a real novelty service process, and simulated generator, evaluator
and trainer servers in this process (test doubles: the generator streams distinct LEMUR files at once,
the evaluator sleeps --work-ms per candidate with N slots, i.e. N single-slot replicas, and answers
RESOURCE_EXHAUSTED when full, the trainer's job succeeds at once). Each run has --per-slot × N
candidates. The baseline is the ideal evaluation time, candidates × work / N. Real evaluations take
seconds to minutes (the sandbox alone costs ~0.3 s), so 500 ms is a conservative stand-in; 50 ms is a
stress case where gRPC round trips matter. Reported: controller overhead per candidate in the generate +
evaluate phase ((wall − ideal) / candidates; goal ≤ 5 ms), evaluator utilisation (busy slot-seconds /
(wall × N); goal ≥ 95 % at N = 8), and the novelty + selection phase per candidate. `--write`
replaces the controller section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop import corpus, ids  # noqa: E402
from archloop.clients import aio_channel  # noqa: E402
from archloop.lemur import iter_model_sources, lemur_wheel  # noqa: E402
from archloop.v1 import (  # noqa: E402
    common_pb2,
    evaluator_pb2,
    evaluator_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    novelty_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from bench.report import machine as report_machine  # noqa: E402
from bench.report import publish  # noqa: E402
from services.controller import config as experiment_config  # noqa: E402
from services.controller.evaluators import EvaluatorPool  # noqa: E402
from services.controller.ledger import Ledger  # noqa: E402
from services.controller.loop import ExperimentRunner, LoopSettings  # noqa: E402
from services.controller.peers import Peers  # noqa: E402
from tools.localstack import ServiceProcess  # noqa: E402

SECTION_START = "<!-- controller-bench:start -->"
SECTION_END = "<!-- controller-bench:end -->"


class SimulatedGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, codes: list[str]) -> None:
        self.codes = codes

    async def DescribeBackend(self, request, context):
        return generator_pb2.DescribeBackendResponse(backend="simulated", max_candidates_per_request=10_000)

    async def GenerateCandidates(self, request, context):
        for k in range(request.n):
            index = request.start_index + k
            yield generator_pb2.GenerateCandidatesResponse(
                candidate=common_pb2.Candidate(
                    candidate_id=ids.candidate_id(request.experiment_id, request.cycle, index),
                    experiment_id=request.experiment_id,
                    cycle=request.cycle,
                    index=index,
                    code=self.codes[index % len(self.codes)],
                    generation=common_pb2.GenerationInfo(mode=request.mode, backend="simulated"),
                )
            )


class SimulatedEvaluator(evaluator_pb2_grpc.EvaluatorServiceServicer):
    def __init__(self, slots: int, work_seconds: float) -> None:
        self.slots, self.work = slots, work_seconds
        self.running = 0

    async def DescribeCapacity(self, request, context):
        return evaluator_pb2.DescribeCapacityResponse(
            max_concurrent_evaluations=self.slots, replica="simulated"
        )

    async def EvaluateCandidate(self, request, context):
        if self.running >= self.slots:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "all slots busy")
        self.running += 1
        try:
            await asyncio.sleep(self.work)
        finally:
            self.running -= 1
        accuracy = random.Random(request.candidate_id).uniform(0.1, 0.7)
        return evaluator_pb2.EvaluateCandidateResponse(
            result=evaluator_pb2.EvaluationResult(
                candidate_id=request.candidate_id,
                status=evaluator_pb2.EVALUATION_STATUS_OK,
                accuracy=accuracy,
                param_count=100_000,
            )
        )


class SimulatedTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    def _job(self, job_id: str) -> trainer_pb2.FineTuneJob:
        return trainer_pb2.FineTuneJob(
            job_id=job_id,
            state=trainer_pb2.FINE_TUNE_STATE_SUCCEEDED,
            adapter=common_pb2.AdapterRef(name=job_id, path="/simulated"),
        )

    async def StartFineTune(self, request, context):
        return trainer_pb2.StartFineTuneResponse(job=self._job(request.job_id))

    async def WatchFineTune(self, request, context):
        yield trainer_pb2.WatchFineTuneResponse(job=self._job(request.job_id))

    async def GetFineTune(self, request, context):
        return trainer_pb2.GetFineTuneResponse(job=self._job(request.job_id))


async def _serve(servicer, add) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _simulated_servers(codes: list[str], replicas: int, work_seconds: float, addresses) -> None:
    """Child process: the simulated generator, evaluator and trainer, so they do not share the
    controller's event loop and CPU time slice."""

    async def serve() -> None:
        servers = [
            await _serve(
                SimulatedGenerator(codes), generator_pb2_grpc.add_GeneratorServiceServicer_to_server
            ),
            await _serve(
                SimulatedEvaluator(replicas, work_seconds),
                evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server,
            ),
            await _serve(SimulatedTrainer(), trainer_pb2_grpc.add_TrainerServiceServicer_to_server),
        ]
        addresses.put([address for _, address in servers])
        await asyncio.Event().wait()

    asyncio.run(serve())


async def run_once(
    replicas: int, candidates: int, work_seconds: float, codes: list[str], novelty: str, tmp: Path
) -> dict:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    addresses = context.Queue()
    child = context.Process(
        target=_simulated_servers, args=(codes, replicas, work_seconds, addresses), daemon=True
    )
    child.start()
    generator, evaluator, trainer = addresses.get(timeout=60)
    peers = Peers(
        generator_pb2_grpc.GeneratorServiceStub(aio_channel(generator)),
        EvaluatorPool(evaluator),
        novelty_pb2_grpc.NoveltyServiceStub(aio_channel(novelty)),
        trainer_pb2_grpc.TrainerServiceStub(aio_channel(trainer)),
    )
    config = experiment_config.with_defaults(
        experiment_config.from_mapping(
            {"cycles": 1, "candidates_per_cycle": candidates, "lemur_examples_per_cycle": 1}
        )
    )
    experiment_id = f"bench-n{replicas}-w{int(work_seconds * 1000)}"
    ledger = Ledger(tmp / f"ledger-{replicas}.sqlite3")
    ledger.create_experiment(
        experiment_id, experiment_config.to_json(config), experiment_config.config_sha256(config)
    )
    runner = ExperimentRunner(
        experiment_id, config, ledger, peers, LoopSettings(tmp / "work", tmp / "corpus")
    )
    try:
        state = await runner.run()
    finally:
        child.terminate()
        child.join()
    assert state == "COMPLETED", ledger.experiment(experiment_id).error
    cycle = ledger.cycle(experiment_id, 1)
    stamps = json.loads(cycle.phase_ms)
    generate_evaluate = (stamps["FILTERING"] - cycle.started_ms) / 1000
    filtering = (stamps["FINE_TUNING"] - stamps["FILTERING"]) / 1000
    ideal = candidates * work_seconds / replicas
    ledger.close()
    return {
        "replicas": replicas,
        "candidates": candidates,
        "work_ms": work_seconds * 1000,
        "ideal_seconds": ideal,
        "generate_evaluate_seconds": generate_evaluate,
        "overhead_ms_per_candidate": (generate_evaluate - ideal) / candidates * 1000,
        # every evaluation is busy for exactly the work time, so busy slot-seconds = ideal × N
        "utilisation": ideal / generate_evaluate,
        "filter_ms_per_candidate": filtering / candidates * 1000,
    }


def markdown(r: dict) -> str:
    rows = [
        f"| {x['work_ms']:.0f} | {x['replicas']} | {x['candidates']} | {x['ideal_seconds']:.2f} | "
        f"{x['generate_evaluate_seconds']:.2f} | **{x['overhead_ms_per_candidate']:.2f}** | "
        f"**{x['utilisation']:.1%}** | {x['filter_ms_per_candidate']:.2f} |"
        for x in r["runs"]
    ]
    return "\n".join(
        [
            SECTION_START,
            "## Controller",
            "",
            f"`python bench/controller_bench.py` on {r['date']} ({r['machine']}). One cycle through the real",
            "controller loop (ledger on disk, gRPC clients) and a real novelty service; generator,",
            "evaluator (simulated work per candidate, N slots = N single-slot replicas, RESOURCE_EXHAUSTED",
            "when full) and trainer are simulated servers in a child process. Baseline: the ideal evaluation",
            "time, candidates × work / N. Goals (issue 8): overhead ≤ 5 ms per candidate, utilisation ≥ 95 %",
            "at N = 8.",
            "",
            "| work ms | N | candidates | ideal s | generate + evaluate s | overhead ms / candidate "
            "| utilisation | novelty + selection ms / candidate |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Utilisation is measured over the whole generate + evaluate phase (first candidate streamed to",
            "last verdict recorded), so it includes the phase's fixed start (connections, the capacity and",
            "limit queries: ~0.15 s), which the N = 1 rows spread over only 50 candidates. With many of them",
            "the controller spends under a millisecond of its own per candidate (the ledger commit runs in a",
            "thread); between one evaluation and the next on a slot there is then a gRPC round trip, which",
            "matters only for evaluations as short as the 50 ms stress case.",
            "",
            "Raw figures: `bench/results/controller.json`.",
            SECTION_END,
        ]
    )


async def main_async(args: argparse.Namespace) -> dict:
    most = max(args.replicas) * args.per_slot
    codes = [code for _, code in iter_model_sources(lemur_wheel()) if 1500 <= len(code) <= 6000][:most]
    runs = []
    with tempfile.TemporaryDirectory(prefix="controller-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "corpus").mkdir()
        name, code = next(iter_model_sources(lemur_wheel()))
        record = corpus.example_records(name, code, {"cifar-10": 100_000})
        (tmp / "corpus" / "examples.jsonl").write_text(json.dumps(record[0]) + "\n")
        novelty = ServiceProcess(
            "novelty", tmp, tmp / "novelty.log", ["--db-path", str(tmp / "novelty.sqlite3")]
        )
        try:
            address = novelty.wait_ready()
            for work_ms in args.work_ms:
                for replicas in args.replicas:
                    run_dir = tmp / f"run-{work_ms:g}-{replicas}"
                    run_dir.mkdir()
                    (run_dir / "corpus").symlink_to(tmp / "corpus")
                    candidates = replicas * args.per_slot
                    result = await run_once(replicas, candidates, work_ms / 1000, codes, address, run_dir)
                    print(json.dumps(result), flush=True)
                    runs.append(result)
        finally:
            novelty.stop(10)
    return {"date": datetime.now(UTC).date().isoformat(), "machine": report_machine(), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-slot", type=int, default=50, help="candidates per evaluator slot in a run")
    parser.add_argument("--work-ms", type=float, action="append", help="simulated evaluation time [500, 50]")
    parser.add_argument("--replicas", type=int, action="append", help="evaluator slots N [1, 8]")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    args.replicas = args.replicas or [1, 8]
    args.work_ms = args.work_ms or [500.0, 50.0]
    result = asyncio.run(main_async(args))
    publish("controller", result, markdown(result), SECTION_START, SECTION_END, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
