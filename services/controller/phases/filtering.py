"""Filter and admission: the cycle's novelty figures, promotion, the selection policy's decisions, and
the admitted candidates' entry into the corpus (event cycle_filtered).

1. Every valid candidate, in index order: J_train against the corpus collection (LEMUR + every
   candidate admitted before), J_gen against the cycle's collection (its earlier valid candidates), by
   text and by architecture; its wiring hash, and what already has that wiring (a corpus program, an
   admitted candidate, an earlier valid candidate of the cycle; none = wiring-new); recorded, then it
   joins the cycle's collection.
2. Promotion and the proxy audit (services.controller.phases.promotion).
3. The decisions (services.controller.selection), recorded before the corpus learns of them.
4. Each admitted candidate joins the corpus collection (atomic check-and-admit: a near-duplicate that
   slipped through is rejected late), then every candidate is `decided`.
"""

from __future__ import annotations

import time

import structlog

from archloop import ids
from archloop.v1 import novelty_pb2
from services.controller import selection
from services.controller.ledger import CandidateRow
from services.controller.phases.context import PrecheckPhase, Promotion, ProxyEvaluation, RunContext
from services.controller.states import Phase, Stage, selection_rules
from services.controller.summary import filtered_payload

log = structlog.get_logger("archloop.controller")


class Filtering:
    def __init__(
        self, ctx: RunContext, evaluation: ProxyEvaluation, precheck: PrecheckPhase, promotion: Promotion
    ) -> None:
        self.ctx, self.evaluation, self.precheck, self.promotion = ctx, evaluation, precheck, promotion

    async def run(self, cycle: int) -> None:
        ctx = self.ctx
        started = time.monotonic()
        await self._novelty(cycle)
        if ctx.config.promotion.top_k:
            await self.promotion.promote(cycle)
        self._decide(cycle)
        await self._admit(cycle)
        final = ctx.ledger.candidates(ctx.experiment_id, cycle)
        start = ctx.ledger.cycle_of(ctx.experiment_id, cycle).corpus_size_start
        payload = filtered_payload(final, ctx.config.accuracy_threshold, start)
        ctx.step(cycle, "cycle_filtered", dict(**payload, duration_seconds=time.monotonic() - started),
                 phase=Phase.FINE_TUNING)  # fmt: skip

    async def _novelty(self, cycle: int) -> None:
        """Step 1: every valid candidate's novelty figures and topology, in index order."""
        ctx = self.ctx
        corpus_name = ids.corpus_collection(ctx.experiment_id)
        cycle_name = ids.cycle_collection(ctx.experiment_id, cycle)
        await ctx.peers.novelty.create_collection(cycle_name, ctx.config.novelty_threshold)
        topologies = ctx.ledger.first_topologies(ctx.experiment_id, cycle)
        known = ctx.wiring.before(cycle)
        untrained: list[str] = []  # decided before training, validity unknown (novelty pre-check)
        for c in ctx.ledger.candidates(ctx.experiment_id, cycle):
            ctx.stop.check()
            if c.decided_before_training:
                untrained.append(c.candidate_id)
                continue
            if not c.valid:
                continue
            tokens, sha = c.structural_tokens, c.topology_sha256  # (recorded before a restart)
            if c.nn_jaccard_train is None:
                train, generation = await self._novelty_of(c, [corpus_name, cycle_name], untrained)
                ctx.ledger.record_novelty(c.candidate_id, train, generation)
            if not sha:  # (one the pre-check decided has its J already, its wiring once trained)
                sha = c.wiring_hash
                if sha:
                    ctx.ledger.record_topology(
                        c.candidate_id, sha, topologies.get(sha, ""), known.get(sha, "")
                    )
            if sha:
                topologies.setdefault(sha, c.candidate_id)
                known.setdefault(sha, c.candidate_id)
            await ctx.peers.novelty.admit(cycle_name, c.candidate_id, c.code, tokens)

    async def _novelty_of(
        self, c: CandidateRow, collections: list[str], untrained: list[str]
    ) -> tuple[novelty_pb2.CollectionMatch, novelty_pb2.CollectionMatch]:
        """J_train and J_gen of a valid candidate. With the pre-check, an earlier candidate decided
        without training would be in the cycle's collection had it been trained and ended valid: when
        this one's text is novel but a near-duplicate of such a one, that one is trained now, and joins
        the collection if valid (then this one is asked again), so the decision is the paper-order one."""
        ctx = self.ctx
        while True:
            train, generation = await ctx.peers.novelty.check(c.code, collections, c.structural_tokens)
            if train.near_duplicate or generation.near_duplicate:
                return train, generation
            earlier_id = await self.precheck.untrained_neighbour(c, untrained)
            if not earlier_id:
                return train, generation
            log.info("trained_for_a_later_decision", experiment_id=ctx.experiment_id,
                     candidate_id=earlier_id, for_candidate=c.candidate_id)  # fmt: skip
            ctx.ledger.record_trained_later(earlier_id)
            earlier = ctx.ledger.candidate_of(earlier_id)
            await self.evaluation.run_proxy(c.cycle, earlier_id, earlier.code)
            untrained.remove(earlier_id)
            trained = ctx.ledger.candidate_of(earlier_id)
            if trained.valid:
                await ctx.peers.novelty.admit(
                    collections[1], earlier_id, trained.code, trained.structural_tokens
                )

    def _decide(self, cycle: int) -> None:
        """Step 3: the selection policy's decision for every candidate not yet decided."""
        ctx = self.ctx
        candidates = ctx.ledger.candidates(ctx.experiment_id, cycle)
        on_promoted = ctx.config.promotion.select_on_promoted
        decisions = selection.decide(
            [c.for_selection(on_promoted) for c in candidates], *selection_rules(ctx.config)
        )
        for c in candidates:
            if c.decision is None:
                ctx.ledger.record_decision(c.candidate_id, decisions[c.candidate_id])

    async def _admit(self, cycle: int) -> None:
        """Step 4: admitted candidates join the corpus collection (idempotent by id), then `decided`."""
        ctx = self.ctx
        corpus_name = ids.corpus_collection(ctx.experiment_id)
        for c in ctx.ledger.candidates(ctx.experiment_id, cycle):
            if c.stage is Stage.DECIDED:
                continue
            ctx.stop.check()
            if c.admitted:
                await self._admit_to_corpus(c, corpus_name)
            ctx.ledger.record_decided(c.candidate_id)
        ctx.notify.set()

    async def _admit_to_corpus(self, c: CandidateRow, corpus_name: str) -> None:
        ctx = self.ctx
        entry = (corpus_name, c.candidate_id, c.code, c.structural_tokens,
                 {"experiment": ctx.experiment_id, "cycle": str(c.cycle)})  # fmt: skip
        if ctx.config.ablations.no_novelty_filter:
            await ctx.peers.novelty.admit(*entry)
            return
        result = await ctx.peers.novelty.check_and_admit(*entry)
        if not result.admitted:
            ctx.ledger.record_late_rejection(c.candidate_id, result.reason)
