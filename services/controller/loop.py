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
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from archloop import corpus, topology
from archloop.v1 import (
    common_pb2,
    controller_pb2,
    evaluator_pb2,
    novelty_pb2,
    trainer_pb2,
)
from services.controller import archive, audit, requests, selection
from services.controller.ledger import CandidateRow, Ledger
from services.controller.peers import Clients, PeerFailed, Peers, Retry, StopRequested
from services.controller.states import ExperimentState, Phase, Stage, selection_rules, short_name
from services.controller.trainset import Admitted, write_training_set

log = structlog.get_logger("archloop.controller")


def record_failed(ledger: Ledger, experiment_id: str, message: str) -> None:
    """The experiment FAILED with `message`, and its experiment_failed event, in one ledger write (the
    loop's own failures, and a local supervisor that gave up on a component)."""
    cycle = ledger.experiment_of(experiment_id).current_cycle
    ledger.set_experiment(
        experiment_id,
        requests.event(experiment_id, cycle, "experiment_failed", error=message, cycle=cycle),
        state=ExperimentState.FAILED,
        error=message,
    )


async def _cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel the tasks and wait until each has ended (what a failure or a stop leaves behind)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class LoopSettings:
    work_dir: Path  # per-experiment files (training sets) go to <work_dir>/<experiment>/
    corpus_dir: Path  # the LEMUR corpus (examples.jsonl)
    retry_budget_seconds: float = 600.0
    rpc_timeout_seconds: float = 60.0


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
        self.settings = settings
        retry = Retry(
            settings.retry_budget_seconds, settings.rpc_timeout_seconds, self._stopping, experiment_id
        )
        self.peers = Clients(peers, retry)
        self.notify = notify or asyncio.Event()
        self.stop_requested = False
        self._stopped = asyncio.Event()
        self.prompt_task = requests.prompt_task(config)
        self.started = time.monotonic()
        self.fine_tune_step: trainer_pb2.FineTuneStep | None = None  # the running fine-tune's last step
        # the novelty pre-check's view of the cycle in evaluation: candidates whose static stages are done
        # (or that need none), those among them that passed and joined the static collection, and the
        # condition every change is announced on
        self._screened: set[str] = set()
        self._registered: set[str] = set()
        self._precheck_changed = asyncio.Condition()
        self.lemur_models = 0  # LEMUR models in the corpus collection (set by _prepare_corpus)

    # -- helpers --------------------------------------------------------------------------------
    def _step(self, cycle: int, kind: str, payload: dict, **fields: object) -> None:
        """Record a step of the cycle (its fields, usually its new phase) and its event in one ledger
        transaction, then wake the event publisher and watchers."""
        self.ledger.set_cycle(self.id, cycle, requests.event(self.id, cycle, kind, **payload), **fields)
        self.notify.set()

    def request_stop(self) -> None:
        """Stop at the next safe point; evaluations in flight are abandoned (re-run on resume)."""
        self.stop_requested = True
        self._stopped.set()

    def _stopping(self) -> bool:
        return self.stop_requested

    def _check_stop(self) -> None:
        if self.stop_requested:
            raise StopRequested()

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> str:
        """Run to the end (or a stop); returns the final state name."""
        row = self.ledger.experiment_of(self.id)
        self.ledger.set_experiment(
            self.id,
            requests.event(
                self.id,
                0,
                "experiment_started",
                cycles=self.config.cycles,
                candidates_per_cycle=self.config.candidates_per_cycle,
                config_sha256=row.config_sha256,
            ),
            state=ExperimentState.RUNNING,
            error="",
        )
        self.notify.set()
        try:
            await self._prepare_corpus()
            first = max(1, row.current_cycle)
            for cycle in range(first, self.config.cycles + 1):
                if self._budget_spent(cycle):
                    break
                await self._cycle(cycle)
            await self._final_training()
        except StopRequested:
            self.ledger.set_experiment(self.id, state=ExperimentState.STOPPED)
            log.info("experiment_stopped", experiment_id=self.id)
            return ExperimentState.STOPPED
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            log.error(
                "experiment_failed",
                experiment_id=self.id,
                error=message,
                exc_info=not isinstance(exc, PeerFailed),
            )
            record_failed(self.ledger, self.id, message)
            self.notify.set()
            return ExperimentState.FAILED
        counts = self.ledger.counts(self.id)
        completed = self._cycles_completed()
        self.ledger.set_experiment(
            self.id,
            requests.event(
                self.id,
                max(completed, default=0),
                "experiment_completed",
                cycles_completed=len(completed),
                budget_spent=len(completed) < self.config.cycles,
                candidates_generated=counts["generated"],
                candidates_admitted=counts["admitted"],
                duration_seconds=time.monotonic() - self.started,
            ),
            state=ExperimentState.COMPLETED,
            finished_ms=int(time.time() * 1000),
        )
        self.notify.set()
        log.info("experiment_completed", experiment_id=self.id, **counts)
        return ExperimentState.COMPLETED

    def _cycles_completed(self) -> list[int]:
        return [c.cycle for c in self.ledger.cycles(self.id) if c.phase == Phase.COMPLETED]

    def _budget_spent(self, cycle: int) -> bool:
        """Whether the wall-clock budget forbids starting `cycle` (one already started always finishes):
        the completed cycles' durations, summed from the ledger, so a resume keeps the count."""
        budget = self.config.wall_clock_budget_seconds
        rows = self.ledger.cycles(self.id)
        if not budget or any(c.cycle == cycle for c in rows):
            return False
        spent = sum((c.completed_ms - c.started_ms) / 1000 for c in rows if c.phase == Phase.COMPLETED)
        if spent < budget:
            return False
        log.info("wall_clock_budget_spent", experiment_id=self.id, cycle=cycle, spent_seconds=spent)
        return True

    async def _prepare_corpus(self) -> None:
        """The experiment's corpus collection holds the LEMUR training codes (idempotent import)."""
        name = requests.corpus_collection(self.id)
        await self.peers.novelty.create_collection(name, self.config.novelty_threshold)
        codes = corpus.training_programs(self.settings.corpus_dir)
        structure = corpus.read_structure(self.settings.corpus_dir, codes)  # {} before `corpus structure`
        self.lemur_models = len(codes)
        summary = await self.peers.novelty.import_entries(name, codes, structure)
        log.info("corpus_collection_ready", experiment_id=self.id, collection=name,
                 created=summary.created, unchanged=summary.unchanged,
                 with_structure=len(structure))  # fmt: skip

    # -- the archive of parents (delta / factor) -------------------------------------------------
    def _edits(self) -> bool:
        return self.config.generation.mode != common_pb2.GENERATION_MODE_FULL

    async def _update_archive(self, cycle: int) -> None:
        """Enter the baseline (before cycle 1) and every candidate admitted before `cycle` that the
        archive lacks, each with whether its edit prompt fits the generator's context (idempotent)."""
        have = {e.entry_id for e in self.ledger.archive(self.id)}
        new: list[tuple[str, int, str, float, int, str]] = []
        if archive.BASELINE_ID not in have:
            new.append((archive.BASELINE_ID, 0, requests.baseline_code(self.config), 0.0, 0, ""))
        for c in self.ledger.admitted(self.id, cycle - 1):
            if c.candidate_id not in have:
                new.append((c.candidate_id, c.cycle, c.code, c.accuracy or 0.0, c.param_count or 0, c.factor))
        if not new:
            return
        spec = requests.task_spec(self.prompt_task)
        fits = await self.peers.generator.prompt_fits(spec, self.config.generation.mode, [n[2] for n in new])
        entries = [
            archive.ArchiveEntry(i, c, code, acc, params, archive.depth(code), factor, ok)
            for (i, c, code, acc, params, factor), ok in zip(new, fits, strict=True)
        ]
        added = await asyncio.to_thread(self.ledger.add_to_archive, self.id, entries)
        log.info("archive_updated", experiment_id=self.id, cycle=cycle, added=added,
                 not_fitting=sum(not e.fits for e in entries))  # fmt: skip

    def _admitted(self, cycle: int) -> list[Admitted]:
        """The candidates admitted up to `cycle` for the training set, each with the parent it edited
        (from the archive, read once)."""
        parents = {e.entry_id: e.code for e in self.ledger.archive(self.id)}
        return [
            Admitted(row.candidate_id, row.code, row.mode,
                     parents.get(json.loads(row.generation_json).get("parent_id", ""), ""), row.factor)
            for row in self.ledger.admitted(self.id, cycle)
        ]  # fmt: skip

    def _parents(self, cycle: int, start: int, n: int) -> list[tuple[str, str]]:
        """(id, code) of the program each of candidates start … start + n - 1 edits; none in full mode."""
        if not self._edits():
            return []
        g = self.config.generation
        chosen = archive.choose_parents(
            g.parent_policy, self.ledger.archive(self.id, before_cycle=cycle), self.config.seed, cycle,
            range(start, start + n), g.tournament_size or 3,
        )  # fmt: skip
        return [(entry.entry_id, entry.code) for entry in chosen]

    async def _cycle(self, cycle: int) -> None:
        self._check_stop()
        if self._edits():
            await self._update_archive(cycle)
        adapter = self.ledger.adapter_before(self.id, cycle)
        corpus_size = self.lemur_models + len(self.ledger.admitted(self.id, cycle - 1))
        self.ledger.start_cycle(
            self.id,
            cycle,
            requests.event(
                self.id, cycle, "cycle_started", adapter_name=adapter.name, corpus_size=corpus_size
            ),
            adapter_name=adapter.name,
            adapter_path=adapter.path,
            adapter_sha256=adapter.weights_sha256,
            temperature=requests.cycle_temperature(self.config, cycle),
            corpus_size_start=corpus_size,
        )
        self.notify.set()
        row = self.ledger.cycle_of(self.id, cycle)
        if row.phase in (Phase.GENERATING, Phase.EVALUATING):
            await self._generate_and_evaluate(cycle, row)
        if self.ledger.cycle_of(self.id, cycle).phase == Phase.FILTERING:
            await self._filter(cycle)
        if self.ledger.cycle_of(self.id, cycle).phase == Phase.FINE_TUNING:
            await self._fine_tune(cycle)
        if self.ledger.cycle_of(self.id, cycle).phase != Phase.COMPLETED:
            admitted = sum(c.admitted for c in self.ledger.candidates(self.id, cycle))
            started = row.started_ms / 1000
            self._step(
                cycle,
                "cycle_completed",
                dict(
                    candidates_admitted=admitted,
                    corpus_size=corpus_size + admitted,
                    duration_seconds=time.time() - started,
                ),
                phase=Phase.COMPLETED,
            )

    # -- generate + evaluate --------------------------------------------------------------------
    async def _generate_and_evaluate(self, cycle: int, row) -> None:
        started = time.monotonic()
        tasks: list[asyncio.Task] = []
        await self._open_precheck(cycle)

        def evaluate_later(candidate_id: str, code: str, error: str) -> None:
            tasks.append(asyncio.create_task(self._evaluate(cycle, candidate_id, code, error)))

        for candidate in self.ledger.candidates(self.id, cycle):  # left from before a restart
            if candidate.stage is Stage.GENERATED:
                evaluate_later(candidate.candidate_id, candidate.code, candidate.generation_error)
        try:
            have = len(self.ledger.candidates(self.id, cycle))
            wanted = self.config.candidates_per_cycle
            most = await self.peers.generator.max_candidates_per_request() if have < wanted else 0
            while have < wanted:  # in requests of at most the generator's limit
                n = min(most, wanted - have)
                request = requests.generation(
                    self.id, self.config, self.prompt_task, row, have, n, self._parents(cycle, have, n)
                )
                await self.peers.generator.stream(request, self._recorder(evaluate_later))
                before, have = have, len(self.ledger.candidates(self.id, cycle))
                if have == before:
                    raise PeerFailed(
                        f"generator.GenerateCandidates: the stream ended with none of {request.n}"
                    )
            existing = self.ledger.candidates(self.id, cycle)
            errors = sum(bool(c.generation_error) for c in existing)
            self._step(
                cycle,
                "cycle_generated",
                dict(
                    candidates_generated=len(existing),
                    generation_errors=errors,
                    duration_seconds=time.monotonic() - started,
                ),
                phase=Phase.EVALUATING,
            )
            evaluations = asyncio.ensure_future(asyncio.gather(*tasks))
            stop = asyncio.ensure_future(self._stopped.wait())
            await asyncio.wait({evaluations, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            self._check_stop()
            await evaluations
        except BaseException:
            await _cancel_all(tasks)
            raise
        evaluated = self.ledger.candidates(self.id, cycle)
        accuracies = [c.accuracy for c in evaluated if c.valid and c.accuracy is not None]
        skipped = sum(c.decided_before_training for c in evaluated)
        self._step(
            cycle,
            "cycle_evaluated",
            dict(
                candidates_evaluated=len(evaluated) - skipped,
                decided_before_training=skipped,
                evaluator_seconds=sum(c.eval_seconds or 0.0 for c in evaluated),
                candidates_valid=len(accuracies),
                best_accuracy=max(accuracies, default=0.0),
                mean_accuracy=sum(accuracies) / len(accuracies) if accuracies else 0.0,
                duration_seconds=time.monotonic() - started,
            ),
            phase=Phase.FILTERING,
        )

    def _recorder(self, evaluate_later):
        """For each streamed candidate: the ledger row, then its evaluation started (once: a candidate
        the ledger already holds, re-sent after a restart, is not evaluated twice)."""

        async def record(c: common_pb2.Candidate) -> None:
            # the commit (an fsync) runs in a thread: the loop keeps dispatching evaluations meanwhile
            added = await asyncio.to_thread(self.ledger.record_generated, self.id, c)
            self.notify.set()
            if added:
                evaluate_later(c.candidate_id, c.code, c.generation_error)

        return record

    async def _evaluate(self, cycle: int, candidate_id: str, code: str, error: str) -> None:
        try:
            if error or not code.strip():
                self.ledger.record_generation_error(candidate_id)
                self.notify.set()
                return
            if self.config.novelty_precheck and await self._precheck(cycle, candidate_id, code):
                return
            await self._train(cycle, candidate_id, code)
        finally:
            async with self._precheck_changed:  # the candidates waiting on this one look again
                self._screened.add(candidate_id)
                self._precheck_changed.notify_all()

    async def _train(self, cycle: int, candidate_id: str, code: str) -> None:
        """The full evaluation (static stages, sandboxed instantiate … train), recorded."""
        raw_status = ""
        row = self.ledger.candidate(candidate_id)
        if row is not None and row.repaired:
            # what the model itself wrote, evaluated too: reports put its valid rate beside the repaired one
            raw_code = json.loads(row.generation_json).get("raw_code", "")
            raw, timeout = requests.evaluation(self.id, self.config, f"{candidate_id}-raw", raw_code, cycle)
            raw_result = await self.peers.evaluator.evaluate(raw, timeout)
            raw_status = short_name(evaluator_pb2.EvaluationStatus, raw_result.status)
        request, timeout = requests.evaluation(
            self.id, self.config, candidate_id, code, cycle, structural_tokens=True
        )
        result = await self.peers.evaluator.evaluate(request, timeout)
        await asyncio.to_thread(self.ledger.record_evaluation, candidate_id, result, raw_status)
        self.notify.set()

    # -- novelty before training (config novelty_precheck; docs/method.md#novelty-before-training) ---
    async def _open_precheck(self, cycle: int) -> None:
        """The cycle's static collection, with τ_nov (idempotent; nothing without the pre-check)."""
        if self.config.novelty_precheck:
            static_name = requests.precheck_collection(self.id, cycle)
            await self.peers.novelty.create_collection(static_name, self.config.novelty_threshold)

    async def _precheck(self, cycle: int, candidate_id: str, code: str) -> bool:
        """Whether the candidate was decided without training: its static stages pass, and its text is a
        near-duplicate of the corpus or of an earlier candidate of the cycle that ends valid.

        Exactly the post-training filter's decision: the corpus collection does not change before the
        cycle's filter step, and J_gen counts only earlier candidates that end valid, so the pre-check
        waits for the result of an earlier near-duplicate still in training (and looks again if it ends
        invalid). An earlier candidate decided here without training (its validity unknown) is left to
        the filter, which trains it when a later one's decision depends on it (`_filter`)."""
        screen_request, timeout = requests.evaluation(
            self.id, self.config, candidate_id, code, cycle, static_only=True
        )
        screen = await self.peers.evaluator.screen(screen_request, timeout)
        passed = screen.status == evaluator_pb2.EVALUATION_STATUS_OK
        static_name = requests.precheck_collection(self.id, cycle)
        if passed:
            await self.peers.novelty.admit(
                novelty_pb2.AdmitEntryRequest(collection=static_name, entry_id=candidate_id, code=code)
            )
        async with self._precheck_changed:
            self._screened.add(candidate_id)
            if passed:
                self._registered.add(candidate_id)
            self._precheck_changed.notify_all()
        if not passed:
            return False  # the full evaluation fails it in the same stage, and records it
        index = self.ledger.candidate_of(candidate_id).idx
        async with self._precheck_changed:  # every earlier candidate screened, so none is missed
            await self._precheck_changed.wait_for(lambda: self._earlier_screened(cycle, index))
        corpus_name = requests.corpus_collection(self.id)
        [train] = await self.peers.novelty.check(code, [corpus_name])
        if train.near_duplicate:
            self.ledger.record_precheck(candidate_id, screen, train, None)
            return True
        while True:
            pending, valid = self._earlier_in_the_running(cycle, index)
            if not pending and not valid:
                return False
            [generation] = await self.peers.novelty.check(code, [static_name], among=pending + valid)
            if not generation.near_duplicate:
                return False
            nearest = generation.nearest_entry_id
            async with self._precheck_changed:
                await self._precheck_changed.wait_for(functools.partial(self._evaluated, nearest))
            if self.ledger.candidate_of(nearest).valid:
                self.ledger.record_precheck(candidate_id, screen, train, generation)
                return True
            # it ended invalid or untrained: it is out of the running; ask about the rest

    def _evaluated(self, candidate_id: str) -> bool:
        return self.ledger.candidate_of(candidate_id).stage is not Stage.GENERATED

    def _earlier_screened(self, cycle: int, index: int) -> bool:
        rows = [c for c in self.ledger.candidates(self.id, cycle) if c.idx < index]
        return len(rows) == index and all(
            c.stage is not Stage.GENERATED or c.candidate_id in self._screened for c in rows
        )

    def _earlier_in_the_running(self, cycle: int, index: int) -> tuple[list[str], list[str]]:
        """(still in evaluation, ended valid): the cycle's earlier candidates that passed the static
        stages and may be, or are, valid."""
        pending, valid = [], []
        for c in self.ledger.candidates(self.id, cycle):
            if c.idx >= index:
                break
            if c.valid:
                valid.append(c.candidate_id)
            elif c.stage is Stage.GENERATED and c.candidate_id in self._registered:
                pending.append(c.candidate_id)
        return pending, valid

    # -- novelty + selection --------------------------------------------------------------------
    async def _filter(self, cycle: int) -> None:
        started = time.monotonic()
        corpus_name, cycle_name = (
            requests.corpus_collection(self.id),
            requests.cycle_collection(self.id, cycle),
        )
        await self.peers.novelty.create_collection(cycle_name, self.config.novelty_threshold)
        # 1. novelty figures of every valid candidate, in index order (J_gen: earlier ones of the cycle),
        #    by text and by structure (the evaluator's forward-order layer tokens), and its topology
        topologies = self.ledger.first_topologies(self.id, cycle)
        untrained: list[str] = []  # decided before training, validity unknown (novelty pre-check)
        for c in self.ledger.candidates(self.id, cycle):
            self._check_stop()
            if c.decided_before_training:
                untrained.append(c.candidate_id)
                continue
            if not c.valid:
                continue
            tokens, sha = c.structural_tokens, c.topology_sha256  # (recorded before a restart)
            if c.nn_jaccard_train is None:
                train, generation = await self._novelty_of(c, [corpus_name, cycle_name], untrained)
                self.ledger.record_novelty(c.candidate_id, train, generation)
            if not sha:  # (one the pre-check decided has its J already, its topology once trained)
                sha = topology.signature(topology.forward_topology(tokens))
                if sha:
                    self.ledger.record_topology(c.candidate_id, sha, topologies.get(sha, ""))
            if sha:
                topologies.setdefault(sha, c.candidate_id)
            await self.peers.novelty.admit(
                novelty_pb2.AdmitEntryRequest(
                    collection=cycle_name, entry_id=c.candidate_id, code=c.code, structural_tokens=tokens
                )
            )
        # 2. promotion: the top-k valid, novel ones trained longer, and the cycle's proxy audit on them
        if self.config.promotion.top_k:
            await self._promote(cycle)
        # 3. decisions, recorded before the corpus learns of them
        candidates = self.ledger.candidates(self.id, cycle)
        on_promoted = self.config.promotion.select_on_promoted
        decisions = selection.decide(
            [c.for_selection(on_promoted) for c in candidates], *selection_rules(self.config)
        )
        for c in candidates:
            if c.decision is None:
                self.ledger.record_decision(c.candidate_id, decisions[c.candidate_id])
        # 4. admitted candidates join the corpus collection (idempotent by id), then `decided`
        for c in self.ledger.candidates(self.id, cycle):
            if c.stage is Stage.DECIDED:
                continue
            self._check_stop()
            if c.admitted:
                await self._admit_to_corpus(c, corpus_name)
            self.ledger.record_decided(c.candidate_id)
        self.notify.set()
        final = self.ledger.candidates(self.id, cycle)
        admitted = sum(c.admitted for c in final)
        trained_later = sum(c.trained_for_a_later_decision for c in final)
        above = sum((c.accuracy or 0.0) >= self.config.accuracy_threshold for c in final if c.valid)
        corpus_size = self.ledger.cycle_of(self.id, cycle).corpus_size_start + admitted
        self._step(
            cycle,
            "cycle_filtered",
            dict(
                candidates_above_threshold=above,
                near_duplicates_train=sum(bool(c.near_dup_text_train) for c in final),
                near_duplicates_generation=sum(bool(c.near_dup_text_gen) for c in final),
                candidates_admitted=admitted,
                corpus_size=corpus_size,
                decided_before_training=sum(c.decided_before_training for c in final),
                trained_for_a_later_decision=trained_later,
                duration_seconds=time.monotonic() - started,
            ),
            phase=Phase.FINE_TUNING,
        )

    # -- promotion and the proxy audit (config promotion) ---------------------------------------
    async def _promote(self, cycle: int) -> None:
        """Train the cycle's top-k valid, novel candidates for promotion.epochs (concurrently, on the
        evaluator replicas; one already promoted before a restart is not run again), then audit the
        first-epoch proxy on them (once per cycle: the audit and its event are one ledger write)."""
        promotion = self.config.promotion
        candidates = self.ledger.candidates(self.id, cycle)
        chosen = set(
            selection.promotable(
                [c.for_selection() for c in candidates], promotion.top_k, *selection_rules(self.config)[1:]
            )
        )
        pending = [c for c in candidates if c.candidate_id in chosen and not c.promoted_status]

        async def promote(c: CandidateRow) -> None:
            request, timeout = requests.evaluation(
                self.id, self.config, f"{c.candidate_id}-promoted", c.code, cycle, epochs=promotion.epochs
            )
            result = await self.peers.evaluator.evaluate(request, timeout)
            await asyncio.to_thread(self.ledger.record_promotion, c.candidate_id, result)
            self.notify.set()

        tasks = [asyncio.ensure_future(promote(c)) for c in pending]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a failed or stopped promotion leaves no evaluation running
            await _cancel_all(tasks)
            raise
        self._check_stop()
        if self.ledger.cycle_of(self.id, cycle).audit_json:
            return
        result = audit.proxy_audit(self.ledger.candidates(self.id, cycle), promotion.epochs,
                                   promotion.min_spearman)  # fmt: skip
        payload = {k: v for k, v in result.items() if k not in ("points", "beats_params", "beats_flops")}
        self._step(cycle, "cycle_audited", payload, audit_json=json.dumps(audit.as_json(result)))
        say = log.warning if result["warning"] else log.info
        say("proxy_audited", experiment_id=self.id, cycle=cycle, warning=result["warning"],
            message=result["message"])  # fmt: skip

    async def _novelty_of(
        self, c: CandidateRow, collections: list[str], untrained: list[str]
    ) -> tuple[novelty_pb2.CollectionMatch, novelty_pb2.CollectionMatch]:
        """J_train and J_gen of a valid candidate. With the pre-check, an earlier candidate decided
        without training would be in the cycle's collection had it been trained and ended valid: when
        this one's text is novel but a near-duplicate of such a one, that one is trained now, and joins
        the collection if valid (then this one is asked again), so the decision is the paper-order one."""
        cycle_name = collections[1]
        while True:
            train, generation = await self.peers.novelty.check(c.code, collections, c.structural_tokens)
            if not untrained or train.near_duplicate or generation.near_duplicate:
                return train, generation
            static_name = requests.precheck_collection(self.id, c.cycle)
            [match] = await self.peers.novelty.check(c.code, [static_name], among=untrained)
            if not match.near_duplicate:
                return train, generation
            earlier = self.ledger.candidate_of(match.nearest_entry_id)
            log.info("trained_for_a_later_decision", experiment_id=self.id, candidate_id=earlier.candidate_id,
                     for_candidate=c.candidate_id)  # fmt: skip
            self.ledger.record_trained_later(earlier.candidate_id)
            await self._train(c.cycle, earlier.candidate_id, earlier.code)
            untrained.remove(earlier.candidate_id)
            trained = self.ledger.candidate_of(earlier.candidate_id)
            if trained.valid:
                entry = novelty_pb2.AdmitEntryRequest(
                    collection=cycle_name,
                    entry_id=trained.candidate_id,
                    code=trained.code,
                    structural_tokens=trained.structural_tokens,
                )
                await self.peers.novelty.admit(entry)

    async def _admit_to_corpus(self, c: CandidateRow, corpus_name: str) -> None:
        entry = novelty_pb2.AdmitEntryRequest(
            collection=corpus_name,
            entry_id=c.candidate_id,
            code=c.code,
            structural_tokens=c.structural_tokens,
            labels={"experiment": self.id, "cycle": str(c.cycle)},
        )
        if self.config.ablations.no_novelty_filter:
            await self.peers.novelty.admit(entry)
            return
        result = await self.peers.novelty.check_and_admit(entry, [corpus_name])
        if not result.admitted:
            self.ledger.record_late_rejection(c.candidate_id, result.reason)

    # -- fine-tuning ----------------------------------------------------------------------------
    async def _fine_tune(self, cycle: int) -> None:
        started = time.monotonic()
        if self.config.ablations.no_iteration and cycle > 1:
            self._step(
                cycle,
                "cycle_fine_tuned",
                dict(skipped=True, duration_seconds=0.0),
                phase=Phase.FINE_TUNED,
                fine_tune_skipped=1,
            )
            return
        self.fine_tune_step = None
        path = self.settings.work_dir / self.id / f"cycle-{cycle}" / "train.jsonl"
        examples = write_training_set(
            path,
            self.settings.corpus_dir,
            self.config.lemur_examples_per_cycle,
            self.config.seed,
            self.prompt_task,
            self._admitted(cycle),
            corpus.edits_dir(self.settings.corpus_dir),
            self.config.edit_pair_share,
        )
        request = requests.fine_tune(
            self.id, self.config, cycle, path, self.ledger.adapter_before(self.id, cycle)
        )
        job_id = request.job_id
        self.ledger.set_cycle(self.id, cycle, fine_tune_job_id=job_id, fine_tune_examples=examples)
        job = await self.peers.trainer.start(request)
        while True:
            job = await self.peers.trainer.follow(job, on_step=self._fine_tune_step)
            if job.state == trainer_pb2.FINE_TUNE_STATE_SUCCEEDED:
                break
            if job.state == trainer_pb2.FINE_TUNE_STATE_INTERRUPTED:
                resume = trainer_pb2.StartFineTuneRequest()
                resume.CopyFrom(request)
                resume.resume = True
                job = await self.peers.trainer.start(resume)
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
            phase=Phase.FINE_TUNED,
            fine_tune_adapter_name=job.adapter.name,
            fine_tune_adapter_path=job.adapter.path,
            fine_tune_adapter_sha256=job.adapter.weights_sha256,
            fine_tune_loss=job.loss,
        )

    def _fine_tune_step(self, step: trainer_pb2.FineTuneStep) -> None:
        self.fine_tune_step = step

    # -- proxy reliability ----------------------------------------------------------------------
    async def _final_training(self) -> None:
        """Fully train the top-k admitted models (final_training.epochs) to test the 1-epoch proxy."""
        final = self.config.final_training
        if not final.top_k:
            return
        admitted = sorted(self.ledger.admitted(self.id), key=lambda c: (-(c.accuracy or 0), c.candidate_id))
        for c in admitted[: final.top_k]:
            self._check_stop()
            if c.final_accuracy is not None:
                continue
            request, timeout = requests.evaluation(
                self.id, self.config, f"{c.candidate_id}-full", c.code, c.cycle, epochs=final.epochs
            )
            result = await self.peers.evaluator.evaluate(request, timeout)
            self.ledger.record_final_accuracy(c.candidate_id, result.accuracy)
