"""One experiment's cycle loop: generate → evaluate → novelty → select → fine-tune → next
(docs/method.md#the-loop).

Every step reads what is left to do from the ledger and records its result there before the next
starts, so `run()` after a crash (or a stop) continues where the ledger says:

    generate   candidates stream from the generator (start_index = how many the cycle already has);
               each is written to the ledger and handed to evaluation at once
    evaluate   every candidate still at stage `generated`, concurrently up to the evaluators' capacity,
               retried with backoff on UNAVAILABLE / RESOURCE_EXHAUSTED, a deadline per candidate
    novelty    valid candidates in index order: J_train against the experiment's corpus collection
               (LEMUR + every admitted candidate of earlier cycles), J_gen against this cycle's
               collection (its earlier valid candidates), recorded, then the candidate joins the
               cycle's collection
    select     the selection policy over the cycle (threshold; threshold + top-k fill; top-k) with the
               ablation switches; the decision is recorded, then admitted candidates join the corpus
               collection (atomic check-and-admit), then the candidate is `decided`
    fine-tune  the cycle's training set (a seeded sample of LEMUR pairs + every admitted candidate)
               is written once; the trainer job id is `<experiment>-c<cycle>` (the trainer is
               idempotent by job id, so a restart never starts a job twice); an interrupted job is
               resumed from its checkpoint; the adapter generates the next cycle

Events are ledger rows written in the same transactions (services.controller.ledger).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from google.protobuf import json_format

from archloop import corpus, datasets, prompts
from archloop.v1 import (
    common_pb2,
    controller_pb2,
    evaluator_pb2,
    events_pb2,
    generator_pb2,
    generator_pb2_grpc,
    novelty_pb2,
    novelty_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from services.controller.evaluators import EvaluatorPool
from services.controller.ledger import Ledger

log = structlog.get_logger("archloop.controller")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
TRAINER_TERMINAL = {
    trainer_pb2.FINE_TUNE_STATE_SUCCEEDED,
    trainer_pb2.FINE_TUNE_STATE_FAILED,
    trainer_pb2.FINE_TUNE_STATE_CANCELLED,
    trainer_pb2.FINE_TUNE_STATE_INTERRUPTED,
}


class StopRequested(Exception):
    """The experiment was asked to stop; the ledger holds everything done so far."""


class PeerFailed(Exception):
    """A service kept failing past the retry budget; the experiment fails with this message."""


@dataclass
class Peers:
    generator: generator_pb2_grpc.GeneratorServiceStub
    evaluator: EvaluatorPool
    novelty: novelty_pb2_grpc.NoveltyServiceStub
    trainer: trainer_pb2_grpc.TrainerServiceStub


@dataclass(frozen=True)
class LoopSettings:
    work_dir: Path  # per-experiment files (training sets) go to <work_dir>/<experiment>/
    corpus_dir: Path  # the LEMUR corpus (examples.jsonl)
    retry_budget_seconds: float = 600.0
    rpc_timeout_seconds: float = 60.0


def corpus_collection(experiment_id: str) -> str:
    return f"{experiment_id}-corpus"


def cycle_collection(experiment_id: str, cycle: int) -> str:
    return f"{experiment_id}-c{cycle}"


def cycle_temperature(config: controller_pb2.ExperimentConfig, cycle: int) -> float:
    """Constant, or cyclic between the base temperature and temperature_max over the period (002)."""
    g = config.generation
    base = g.decoding.temperature
    if g.temperature_schedule != controller_pb2.TEMPERATURE_SCHEDULE_CYCLIC:
        return base
    phase = ((cycle - 1) % g.temperature_period_cycles) / g.temperature_period_cycles
    return base + (g.temperature_max - base) * (1 - math.cos(2 * math.pi * phase)) / 2


def _event(experiment_id: str, at_cycle: int, kind: str, **payload: object) -> events_pb2.Event:
    """An event of `kind` with its payload fields; the id (experiment, cycle, kind) makes it happen once."""
    event = events_pb2.Event(
        event_id=f"{experiment_id}.{at_cycle}.{kind}", experiment_id=experiment_id, cycle=at_cycle
    )
    getattr(event, kind).SetInParent()
    for name, value in payload.items():
        setattr(getattr(event, kind), name, value)
    return event


class ExperimentRunner:
    def __init__(
        self,
        experiment_id: str,
        config: controller_pb2.ExperimentConfig,
        ledger: Ledger,
        peers: Peers,
        settings: LoopSettings,
        notify: asyncio.Event | None = None,
    ) -> None:
        self.id = experiment_id
        self.config = config
        self.ledger = ledger
        self.peers = peers
        self.settings = settings
        self.notify = notify or asyncio.Event()
        self.stop_requested = False
        self._stopped = asyncio.Event()
        self.dataset = config.datasets[0]
        evaluated = datasets.CATALOGUE[self.dataset]  # config.validate has checked the name
        self.prompt_task = prompts.task_for(
            config.generation.prompt_dataset or self.dataset,
            evaluated.input_shape,
            evaluated.num_classes,
            config.protocol.param_budget,
        )
        self.started = time.monotonic()
        self.fine_tune_step: trainer_pb2.FineTuneStep | None = None  # the running fine-tune's last step
        self.lemur_models = 0  # LEMUR models in the corpus collection (set by _prepare_corpus)

    # -- helpers --------------------------------------------------------------------------------
    def _step(self, cycle: int, kind: str, payload: dict, **fields: object) -> None:
        """Record a step of the cycle (its fields, usually its new phase) and its event in one ledger
        transaction, then wake the event publisher and watchers."""
        self.ledger.set_cycle(self.id, cycle, _event(self.id, cycle, kind, **payload), **fields)
        self.notify.set()

    def request_stop(self) -> None:
        """Stop at the next safe point; evaluations in flight are abandoned (re-run on resume)."""
        self.stop_requested = True
        self._stopped.set()

    def _check_stop(self) -> None:
        if self.stop_requested:
            raise StopRequested()

    async def _call(self, what: str, call, request, timeout: float | None = None):  # type: ignore[no-untyped-def]
        """A unary call, retried with backoff on UNAVAILABLE / RESOURCE_EXHAUSTED within the retry budget."""
        deadline = time.monotonic() + self.settings.retry_budget_seconds
        delay = 0.2
        while True:
            self._check_stop()
            try:
                return await call(request, timeout=timeout or self.settings.rpc_timeout_seconds)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise PeerFailed(f"{what}: {exc.code().name}: {exc.details()}") from None
                log.warning(
                    "peer_retry", experiment_id=self.id, call=what, code=exc.code().name, delay_s=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> str:
        """Run to the end (or a stop); returns the final state name."""
        row = self.ledger.experiment(self.id)
        assert row is not None
        self.ledger.set_experiment(
            self.id,
            _event(
                self.id,
                0,
                "experiment_started",
                cycles=self.config.cycles,
                candidates_per_cycle=self.config.candidates_per_cycle,
                config_sha256=row["config_sha256"],
            ),
            state="RUNNING",
            error="",
        )
        self.notify.set()
        try:
            await self._prepare_corpus()
            first = max(1, row["current_cycle"])
            for cycle in range(first, self.config.cycles + 1):
                await self._cycle(cycle)
            await self._final_training()
        except StopRequested:
            self.ledger.set_experiment(self.id, state="STOPPED")
            log.info("experiment_stopped", experiment_id=self.id)
            return "STOPPED"
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            cycle = self.ledger.experiment(self.id)["current_cycle"]
            log.error(
                "experiment_failed",
                experiment_id=self.id,
                error=message,
                exc_info=not isinstance(exc, PeerFailed),
            )
            self.ledger.set_experiment(
                self.id,
                _event(self.id, cycle, "experiment_failed", error=message, cycle=cycle),
                state="FAILED",
                error=message,
            )
            self.notify.set()
            return "FAILED"
        counts = self.ledger.counts(self.id)
        self.ledger.set_experiment(
            self.id,
            _event(
                self.id,
                self.config.cycles,
                "experiment_completed",
                cycles_completed=self.config.cycles,
                candidates_generated=counts["generated"],
                candidates_admitted=counts["admitted"],
                duration_seconds=time.monotonic() - self.started,
            ),
            state="COMPLETED",
            finished_ms=int(time.time() * 1000),
        )
        self.notify.set()
        log.info("experiment_completed", experiment_id=self.id, **counts)
        return "COMPLETED"

    async def _create_collection(self, name: str) -> None:
        """A novelty collection with the experiment's τ_nov (kept when it exists: a resumed run)."""
        settings = novelty_pb2.CollectionSettings(near_duplicate_threshold=self.config.novelty_threshold)
        request = novelty_pb2.CreateCollectionRequest(name=name, settings=settings, exist_ok=True)
        await self._call("novelty.CreateCollection", self.peers.novelty.CreateCollection, request)

    async def _prepare_corpus(self) -> None:
        """The experiment's corpus collection holds the LEMUR training codes (idempotent import)."""
        name = corpus_collection(self.id)
        await self._create_collection(name)
        codes = {}
        for example in corpus.read_jsonl(self.settings.corpus_dir / "examples.jsonl"):
            if example["model"] not in codes:
                codes[example["model"]] = prompts.extract_code(example["messages"][-1]["content"])[0]
        self.lemur_models = len(codes)

        def requests():  # type: ignore[no-untyped-def]
            for model, code in codes.items():
                yield novelty_pb2.ImportEntriesRequest(
                    entry=novelty_pb2.AdmitEntryRequest(collection=name, entry_id=model, code=code)
                )

        summary = await self.peers.novelty.ImportEntries(requests(), timeout=600)
        log.info(
            "corpus_collection_ready",
            experiment_id=self.id,
            collection=name,
            created=summary.created,
            unchanged=summary.unchanged,
        )

    def _generation_adapter(self, cycle: int) -> common_pb2.AdapterRef:
        """The adapter of the last fine-tune before `cycle` (none: the base model)."""
        for previous in reversed(self.ledger.cycles(self.id)):
            if previous.cycle < cycle and previous.fine_tune_adapter_name and not previous.fine_tune_skipped:
                return common_pb2.AdapterRef(
                    name=previous.fine_tune_adapter_name,
                    path=previous.fine_tune_adapter_path,
                    weights_sha256=previous.fine_tune_adapter_sha256,
                )
        return common_pb2.AdapterRef()

    async def _cycle(self, cycle: int) -> None:
        self._check_stop()
        adapter = self._generation_adapter(cycle)
        corpus_size = self.lemur_models + len(self.ledger.admitted(self.id, cycle - 1))
        self.ledger.start_cycle(
            self.id,
            cycle,
            _event(self.id, cycle, "cycle_started", adapter_name=adapter.name, corpus_size=corpus_size),
            adapter_name=adapter.name,
            adapter_path=adapter.path,
            adapter_sha256=adapter.weights_sha256,
            temperature=cycle_temperature(self.config, cycle),
            corpus_size_start=corpus_size,
        )
        self.notify.set()
        row = self.ledger.cycle(self.id, cycle)
        assert row is not None
        if row.phase in ("GENERATING", "EVALUATING"):
            await self._generate_and_evaluate(cycle, row)
        if self.ledger.cycle(self.id, cycle).phase == "FILTERING":
            await self._filter(cycle)
        if self.ledger.cycle(self.id, cycle).phase == "FINE_TUNING":
            await self._fine_tune(cycle)
        if self.ledger.cycle(self.id, cycle).phase != "COMPLETED":
            admitted = len([c for c in self.ledger.candidates(self.id, cycle) if c["decision"] == "admitted"])
            started = row.started_ms / 1000
            self._step(
                cycle,
                "cycle_completed",
                dict(
                    candidates_admitted=admitted,
                    corpus_size=corpus_size + admitted,
                    duration_seconds=time.time() - started,
                ),
                phase="COMPLETED",
            )

    # -- generate + evaluate --------------------------------------------------------------------
    def _generation_request(
        self, cycle: int, row, start: int, n: int
    ) -> generator_pb2.GenerateCandidatesRequest:  # type: ignore[no-untyped-def]
        g = self.config.generation
        decoding = common_pb2.DecodingParams()
        decoding.CopyFrom(g.decoding)
        decoding.temperature = row.temperature
        task = self.prompt_task
        return generator_pb2.GenerateCandidatesRequest(
            experiment_id=self.id,
            cycle=cycle,
            task=common_pb2.TaskSpec(
                dataset=task.dataset,
                input_shape=[1, *task.input_shape],
                num_classes=task.num_classes,
                param_budget=task.max_parameters,
            ),
            mode=g.mode,
            decoding=decoding,
            adapter=common_pb2.AdapterRef(
                name=row.adapter_name, path=row.adapter_path, weights_sha256=row.adapter_sha256
            ),
            seed=self.config.seed * 1000 + cycle,
            n=n,
            baseline_code=g.baseline_code or self._default_baseline(),
            factors=list(g.factors),
            start_index=start,
            repair=g.repair,
        )

    def _default_baseline(self) -> str:
        if self.config.generation.mode == common_pb2.GENERATION_MODE_FULL:
            return ""
        return prompts.BASELINE_FILE.read_text()

    async def _generator_limit(self) -> int:
        described = await self._call(
            "generator.DescribeBackend",
            self.peers.generator.DescribeBackend,
            generator_pb2.DescribeBackendRequest(),
        )
        return max(1, described.max_candidates_per_request)

    async def _evaluation(
        self, request: evaluator_pb2.EvaluateCandidateRequest, timeout: float
    ) -> evaluator_pb2.EvaluateCandidateResponse:
        """One evaluation on the replica with the most free slots; `_call` retries it (on whichever
        replica is free then) on UNAVAILABLE / RESOURCE_EXHAUSTED within the retry budget."""
        pool = self.peers.evaluator

        async def on_a_free_replica(request, timeout):  # type: ignore[no-untyped-def]
            if pool.capacity == 0 and not await pool.wait_capacity(self.settings.retry_budget_seconds):
                raise PeerFailed(
                    f"evaluator.DescribeCapacity: UNAVAILABLE: no evaluator replica at {pool.target} answered"
                    f" within {self.settings.retry_budget_seconds:g} s"
                )
            async with pool.slot() as stub:
                try:
                    return await stub.EvaluateCandidate(request, timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in RETRYABLE:
                        pool.replica_failed(stub)  # re-describe it before it gets more work
                    raise

        return await self._call("evaluator.EvaluateCandidate", on_a_free_replica, request, timeout)

    async def _generate_and_evaluate(self, cycle: int, row) -> None:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        tasks: list[asyncio.Task] = []

        def evaluate_later(candidate_id: str, code: str, error: str) -> None:
            tasks.append(asyncio.create_task(self._evaluate(cycle, candidate_id, code, error)))

        for candidate in self.ledger.candidates(self.id, cycle):  # left from before a restart
            if candidate["stage"] == "generated":
                evaluate_later(candidate["candidate_id"], candidate["code"], candidate["generation_error"])
        try:
            have = len(self.ledger.candidates(self.id, cycle))
            wanted = self.config.candidates_per_cycle
            most = await self._generator_limit() if have < wanted else 0
            while have < wanted:  # in requests of at most the generator's limit
                request = self._generation_request(cycle, row, have, min(most, wanted - have))
                await self._stream_candidates(request, evaluate_later)
                before, have = have, len(self.ledger.candidates(self.id, cycle))
                if have == before:
                    raise PeerFailed(
                        f"generator.GenerateCandidates: the stream ended with none of {request.n}"
                    )
            existing = self.ledger.candidates(self.id, cycle)
            errors = sum(bool(c["generation_error"]) for c in existing)
            self._step(
                cycle,
                "cycle_generated",
                dict(
                    candidates_generated=len(existing),
                    generation_errors=errors,
                    duration_seconds=time.monotonic() - started,
                ),
                phase="EVALUATING",
            )
            evaluations = asyncio.ensure_future(asyncio.gather(*tasks))
            stop = asyncio.ensure_future(self._stopped.wait())
            await asyncio.wait({evaluations, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            self._check_stop()
            await evaluations
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        evaluated = self.ledger.candidates(self.id, cycle)
        accuracies = [c["accuracy"] for c in evaluated if c["valid"]]
        self._step(
            cycle,
            "cycle_evaluated",
            dict(
                candidates_evaluated=len(evaluated),
                candidates_valid=len(accuracies),
                best_accuracy=max(accuracies, default=0.0),
                mean_accuracy=sum(accuracies) / len(accuracies) if accuracies else 0.0,
                duration_seconds=time.monotonic() - started,
            ),
            phase="FILTERING",
        )

    async def _stream_candidates(self, request, evaluate_later) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + self.settings.retry_budget_seconds
        delay = 0.5
        while True:
            self._check_stop()
            try:
                stream = self.peers.generator.GenerateCandidates(request, timeout=24 * 3600)
                async for response in stream:
                    c = response.candidate
                    generation = json_format.MessageToJson(c.generation, preserving_proto_field_name=True)
                    # the commit (an fsync) runs in a thread: the loop keeps dispatching evaluations meanwhile
                    added = await asyncio.to_thread(
                        self.ledger.add_candidate,
                        {
                            "candidate_id": c.candidate_id,
                            "experiment_id": self.id,
                            "cycle": c.cycle,
                            "idx": c.index,
                            "code": c.code,
                            "generation_json": generation,
                            "generation_error": c.generation_error,
                            "mode": common_pb2.GenerationMode.Name(c.generation.mode)
                            .removeprefix("GENERATION_MODE_")
                            .lower(),
                            "factor": c.generation.factor,
                            "adapter_name": c.generation.adapter_name,
                            "repaired": int(c.generation.repaired),
                        },
                    )
                    self.notify.set()
                    if added:
                        evaluate_later(c.candidate_id, c.code, c.generation_error)
                    request.start_index = c.index + 1
                    request.n -= 1
                    self._check_stop()
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline or request.n <= 0:
                    if request.n <= 0:
                        return
                    raise PeerFailed(
                        f"generator.GenerateCandidates: {exc.code().name}: {exc.details()}"
                    ) from None
                log.warning("generator_retry", experiment_id=self.id, code=exc.code().name, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _evaluate(self, cycle: int, candidate_id: str, code: str, error: str) -> None:
        if error or not code.strip():
            self.ledger.set_candidate(
                candidate_id, stage="evaluated", valid=0, eval_status="GENERATION_ERROR"
            )
            self.notify.set()
            return
        protocol = common_pb2.EvaluationProtocol()
        protocol.CopyFrom(self.config.protocol)
        timeout = self.config.protocol.time_limit_seconds + 120
        raw_status = ""
        row = self.ledger.candidate(candidate_id)
        if row is not None and row["repaired"]:
            # what the model itself wrote, evaluated too: reports put its valid rate beside the repaired one
            raw_code = json.loads(row["generation_json"]).get("raw_code", "")
            raw = evaluator_pb2.EvaluateCandidateRequest(
                candidate_id=f"{candidate_id}-raw", code=raw_code, protocol=protocol,
                experiment_id=self.id, cycle=cycle,
            )  # fmt: skip
            raw_result = (await self._evaluation(raw, timeout)).result
            raw_status = evaluator_pb2.EvaluationStatus.Name(raw_result.status).removeprefix(
                "EVALUATION_STATUS_"
            )
        request = evaluator_pb2.EvaluateCandidateRequest(
            candidate_id=candidate_id,
            code=code,
            protocol=protocol,
            structural_tokens=True,
            experiment_id=self.id,
            cycle=cycle,
        )
        response = await self._evaluation(request, timeout)
        result = response.result
        status = evaluator_pb2.EvaluationStatus.Name(result.status).removeprefix("EVALUATION_STATUS_")
        await asyncio.to_thread(
            self.ledger.set_candidate,
            candidate_id,
            stage="evaluated",
            raw_eval_status=raw_status,
            eval_status=status,
            valid=int(status == "OK"),
            accuracy=result.accuracy if status == "OK" else None,
            param_count=result.param_count,
            eval_seconds=result.total_duration_seconds,
            eval_replica=result.evaluator_replica,
            eval_json=json_format.MessageToJson(result, preserving_proto_field_name=True),
        )
        self.notify.set()

    # -- novelty + selection --------------------------------------------------------------------
    async def _filter(self, cycle: int) -> None:
        started = time.monotonic()
        corpus_name, cycle_name = corpus_collection(self.id), cycle_collection(self.id, cycle)
        await self._create_collection(cycle_name)
        # 1. novelty figures of every valid candidate, in index order (J_gen: earlier ones of the cycle)
        for c in self.ledger.candidates(self.id, cycle):
            self._check_stop()
            if not c["valid"]:
                continue
            if c["nn_jaccard_train"] is None:
                check = await self._call(
                    "novelty.CheckNovelty",
                    self.peers.novelty.CheckNovelty,
                    novelty_pb2.CheckNoveltyRequest(code=c["code"], collections=[corpus_name, cycle_name]),
                )
                train, gen = check.matches[0], check.matches[1]
                self.ledger.set_candidate(
                    c["candidate_id"],
                    nn_jaccard_train=train.max_jaccard,
                    near_dup_text_train=int(train.near_duplicate),
                    nearest_train=train.nearest_entry_id,
                    nn_jaccard_gen=gen.max_jaccard,
                    near_dup_text_gen=int(gen.near_duplicate),
                    nearest_gen=gen.nearest_entry_id,
                )
            await self._call(
                "novelty.AdmitEntry",
                self.peers.novelty.AdmitEntry,
                novelty_pb2.AdmitEntryRequest(
                    collection=cycle_name, entry_id=c["candidate_id"], code=c["code"]
                ),
            )
        # 2. decisions, recorded before the corpus learns of them
        candidates = self.ledger.candidates(self.id, cycle)
        for candidate_id, (decision, reason, rejections) in self._select(candidates).items():
            current = next(c for c in candidates if c["candidate_id"] == candidate_id)
            if not current["decision"]:
                self.ledger.set_candidate(
                    candidate_id, decision=decision, reason=reason, rejection_count=rejections
                )
        # 3. admitted candidates join the corpus collection (idempotent by id), then `decided`
        for c in self.ledger.candidates(self.id, cycle):
            if c["stage"] == "decided":
                continue
            self._check_stop()
            if c["decision"] == "admitted":
                await self._admit_to_corpus(c, corpus_name)
            self.ledger.set_candidate(c["candidate_id"], stage="decided")
        self.notify.set()
        final = self.ledger.candidates(self.id, cycle)
        admitted = sum(c["decision"] == "admitted" for c in final)
        above = sum(bool(c["valid"]) and c["accuracy"] >= self.config.accuracy_threshold for c in final)
        corpus_size = self.ledger.cycle(self.id, cycle).corpus_size_start + admitted
        self._step(
            cycle,
            "cycle_filtered",
            dict(
                candidates_above_threshold=above,
                near_duplicates_train=sum(bool(c["near_dup_text_train"]) for c in final),
                near_duplicates_generation=sum(bool(c["near_dup_text_gen"]) for c in final),
                candidates_admitted=admitted,
                corpus_size=corpus_size,
                duration_seconds=time.monotonic() - started,
            ),
            phase="FINE_TUNING",
        )

    def _select(self, candidates) -> dict[str, tuple[str, str, int]]:  # type: ignore[no-untyped-def]
        """{candidate_id: (decision, reason, rejection_count)} for the whole cycle, in index order.

        rejection_count is the paper's: how many near-duplicates (that were good enough) the cycle had
        rejected up to and including this candidate."""
        ablate = self.config.ablations
        tau, policy, k = (
            self.config.accuracy_threshold,
            self.config.selection_policy,
            self.config.selection_top_k,
        )
        decisions: dict[str, tuple[str, str, int]] = {}
        rejections = 0
        eligible = []  # (candidate, reaches τ, rejection count): valid and novel
        for c in candidates:
            if not c["valid"]:
                decisions[c["candidate_id"]] = ("invalid", f"not valid: {c['eval_status']}", rejections)
                continue
            good = bool(ablate.no_accuracy_threshold or c["accuracy"] >= tau)
            if not ablate.no_novelty_filter and (c["near_dup_text_train"] or c["near_dup_text_gen"]):
                train = bool(c["near_dup_text_train"])
                which, j = (
                    (c["nearest_train"], c["nn_jaccard_train"])
                    if train
                    else (c["nearest_gen"], c["nn_jaccard_gen"])
                )
                rejections += good
                decisions[c["candidate_id"]] = (
                    "rejected",
                    f"near-duplicate of {which} (J={j:.3f})",
                    rejections,
                )
                continue
            eligible.append((c, good, rejections))
        ranked = sorted(eligible, key=lambda item: (-item[0]["accuracy"], item[0]["idx"]))
        if policy == controller_pb2.SELECTION_POLICY_TOP_K:
            chosen = {item[0]["candidate_id"] for item in ranked[:k]}
        elif policy == controller_pb2.SELECTION_POLICY_THRESHOLD_TOP_K_FILL:
            chosen = {item[0]["candidate_id"] for item in eligible if item[1]}
            fill = [item for item in ranked if not item[1]][: max(0, k - len(chosen))]
            chosen |= {item[0]["candidate_id"] for item in fill}
        else:
            chosen = {item[0]["candidate_id"] for item in eligible if item[1]}
        for c, good, count in eligible:
            cid = c["candidate_id"]
            if cid in chosen:
                why = (
                    "accuracy ≥ τ and novel"
                    if good and not ablate.no_accuracy_threshold
                    else f"novel, top {k} by accuracy"
                )
                if ablate.no_accuracy_threshold and policy == controller_pb2.SELECTION_POLICY_THRESHOLD:
                    why = "novel (no accuracy threshold)"
                decisions[cid] = ("admitted", why, count)
            elif policy == controller_pb2.SELECTION_POLICY_TOP_K:
                decisions[cid] = ("rejected", f"not in the top {k} by accuracy", count)
            else:
                decisions[cid] = ("rejected", f"accuracy {c['accuracy']:.4f} < τ {tau}", count)
        return decisions

    async def _admit_to_corpus(self, c, corpus_name: str) -> None:  # type: ignore[no-untyped-def]
        entry = novelty_pb2.AdmitEntryRequest(
            collection=corpus_name,
            entry_id=c["candidate_id"],
            code=c["code"],
            labels={"experiment": self.id, "cycle": str(c["cycle"])},
        )
        if self.config.ablations.no_novelty_filter:
            await self._call("novelty.AdmitEntry", self.peers.novelty.AdmitEntry, entry)
            return
        result = await self._call(
            "novelty.CheckAndAdmit",
            self.peers.novelty.CheckAndAdmit,
            novelty_pb2.CheckAndAdmitRequest(entry=entry, check_collections=[corpus_name]),
        )
        if not result.admitted:
            self.ledger.set_candidate(c["candidate_id"], decision="rejected", reason=result.reason)

    # -- fine-tuning ----------------------------------------------------------------------------
    def _training_set(self, cycle: int) -> tuple[Path, int]:
        """The cycle's chat pairs, written once (a restart reuses the file: the job request is identical)."""
        folder = self.settings.work_dir / self.id / f"cycle-{cycle}"
        path = folder / "train.jsonl"
        if path.exists():
            return path, sum(1 for _ in path.open())
        examples = list(corpus.read_jsonl(self.settings.corpus_dir / "examples.jsonl"))
        wanted = self.config.lemur_examples_per_cycle
        if 0 < wanted < len(examples):
            examples = random.Random(self.config.seed).sample(examples, wanted)  # the same sample every cycle
        budget_task = self.prompt_task
        for c in self.ledger.admitted(self.id, cycle):
            examples.append(
                {
                    "id": f"{c['candidate_id']}#{budget_task.dataset}",
                    "model": c["candidate_id"],
                    "dataset": budget_task.dataset,
                    "source": "generated",
                    "messages": prompts.chat_messages(budget_task, c["code"]),
                }
            )
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in examples))
        tmp.replace(path)
        return path, len(examples)

    async def _fine_tune(self, cycle: int) -> None:
        started = time.monotonic()
        if self.config.ablations.no_iteration and cycle > 1:
            self._step(
                cycle,
                "cycle_fine_tuned",
                dict(skipped=True, duration_seconds=0.0),
                phase="FINE_TUNED",
                fine_tune_skipped=1,
            )
            return
        self.fine_tune_step = None
        path, examples = self._training_set(cycle)
        job_id = f"{self.id}-c{cycle}"
        self.ledger.set_cycle(self.id, cycle, fine_tune_job_id=job_id, fine_tune_examples=examples)
        request = trainer_pb2.StartFineTuneRequest(
            job_id=job_id,
            experiment_id=self.id,
            cycle=cycle,
            base_model=self.config.base_model,
            corpus=trainer_pb2.CorpusSnapshot(path=str(path)),
            lora=self.config.lora,
            schedule=self.config.fine_tune_schedule,
            adapter_name=job_id,
            seed=self.config.seed * 1000 + cycle,
            init=self.config.adapter_init,
        )
        if self.config.adapter_init == trainer_pb2.ADAPTER_INIT_CONTINUE:
            previous = self._generation_adapter(cycle)
            if previous.name:
                request.init_adapter.CopyFrom(previous)
        job = (await self._call("trainer.StartFineTune", self.peers.trainer.StartFineTune, request)).job
        while True:
            job = await self._watch_job(job_id, job)
            if job.state == trainer_pb2.FINE_TUNE_STATE_SUCCEEDED:
                break
            if job.state == trainer_pb2.FINE_TUNE_STATE_INTERRUPTED:
                resume = trainer_pb2.StartFineTuneRequest()
                resume.CopyFrom(request)
                resume.resume = True
                job = (
                    await self._call("trainer.StartFineTune", self.peers.trainer.StartFineTune, resume)
                ).job
                continue
            state = trainer_pb2.FineTuneState.Name(job.state)
            raise PeerFailed(f"fine-tune {job_id} ended {state}: {job.error}")
        self._step(
            cycle,
            "cycle_fine_tuned",
            dict(
                job_id=job_id,
                adapter_name=job.adapter.name,
                final_loss=job.loss,
                examples=examples,
                duration_seconds=time.monotonic() - started,
            ),
            phase="FINE_TUNED",
            fine_tune_adapter_name=job.adapter.name,
            fine_tune_adapter_path=job.adapter.path,
            fine_tune_adapter_sha256=job.adapter.weights_sha256,
            fine_tune_loss=job.loss,
        )

    async def _watch_job(self, job_id: str, job: trainer_pb2.FineTuneJob) -> trainer_pb2.FineTuneJob:
        """Follow the job until it is terminal; re-attach after a dropped stream."""
        delay = 0.5
        deadline = time.monotonic() + self.settings.retry_budget_seconds
        while job.state not in TRAINER_TERMINAL:
            self._check_stop()
            try:
                async for update in self.peers.trainer.WatchFineTune(
                    trainer_pb2.WatchFineTuneRequest(job_id=job_id), timeout=24 * 3600
                ):
                    if update.HasField("job"):
                        job = update.job
                    elif update.HasField("step"):
                        self.fine_tune_step = update.step
                    self._check_stop()
                    if job.state in TRAINER_TERMINAL:
                        break
                if job.state not in TRAINER_TERMINAL:
                    job = (
                        await self._call(
                            "trainer.GetFineTune",
                            self.peers.trainer.GetFineTune,
                            trainer_pb2.GetFineTuneRequest(job_id=job_id),
                        )
                    ).job
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise PeerFailed(f"trainer.WatchFineTune: {exc.code().name}: {exc.details()}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        return job

    # -- proxy reliability ----------------------------------------------------------------------
    async def _final_training(self) -> None:
        """Fully train the top-k admitted models (final_training.epochs) to test the 1-epoch proxy."""
        final = self.config.final_training
        if not final.top_k:
            return
        admitted = sorted(
            self.ledger.admitted(self.id), key=lambda c: (-(c["accuracy"] or 0), c["candidate_id"])
        )
        for c in admitted[: final.top_k]:
            self._check_stop()
            if c["final_accuracy"] is not None:
                continue
            protocol = common_pb2.EvaluationProtocol()
            protocol.CopyFrom(self.config.protocol)
            protocol.epochs = final.epochs
            protocol.time_limit_seconds = self.config.protocol.time_limit_seconds * final.epochs
            request = evaluator_pb2.EvaluateCandidateRequest(
                candidate_id=f"{c['candidate_id']}-full",
                code=c["code"],
                protocol=protocol,
                experiment_id=self.id,
                cycle=c["cycle"],
            )
            response = await self._evaluation(request, protocol.time_limit_seconds + 120)
            self.ledger.set_candidate(c["candidate_id"], final_accuracy=response.result.accuracy)
