"""The novelty pre-check (config novelty_precheck; docs/method.md#novelty-before-training): a candidate
whose static stages pass and whose text is a near-duplicate of the corpus, or of an earlier candidate of
the cycle that ends valid, is decided without training; with architecture_novelty require, so is one
whose forward-only run records the wiring of a corpus program or of an admitted candidate.

`Precheck` owns the cycle's view of who has been screened (its static stages done, or needing none)
and who passed and joined the cycle's static collection, and the condition every change is announced
on. `NoPrecheck` is its twin when the setting is off: it decides nothing and waits for nothing.
"""

from __future__ import annotations

import asyncio
import functools

import structlog

from archloop import ids
from archloop.v1 import controller_pb2, evaluator_pb2, novelty_pb2
from services.controller import requests
from services.controller.ledger import CandidateRow
from services.controller.phases.context import RunContext
from services.controller.states import Stage

log = structlog.get_logger("archloop.controller")


class NoPrecheck:
    """The pre-check switched off: every candidate is trained."""

    async def open(self, cycle: int) -> None:
        pass

    async def decides(self, cycle: int, candidate_id: str, code: str) -> bool:
        return False

    async def screened(self, candidate_id: str) -> None:
        pass

    async def untrained_neighbour(self, c: CandidateRow, untrained: list[str]) -> str:
        return ""


class Precheck:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._screened: set[str] = set()
        self._registered: set[str] = set()
        self._changed = asyncio.Condition()

    async def open(self, cycle: int) -> None:
        """The cycle's static collection, with τ_nov (idempotent)."""
        collection = ids.precheck_collection(self.ctx.experiment_id, cycle)
        await self.ctx.peers.novelty.create_collection(collection, self.ctx.config.novelty_threshold)

    async def screened(self, candidate_id: str) -> None:
        """The candidate's evaluation ended (or it was decided): those waiting on it look again."""
        async with self._changed:
            self._screened.add(candidate_id)
            self._changed.notify_all()

    async def decides(self, cycle: int, candidate_id: str, code: str) -> bool:
        """Whether the candidate was decided without training: its static stages pass, and its text is a
        near-duplicate of the corpus or of an earlier candidate of the cycle that ends valid; with
        architecture_novelty require, or its forward-only run records the wiring of a corpus program
        or of a candidate admitted in an earlier cycle.

        Exactly the post-training filter's decision: the corpus collection does not change before the
        cycle's filter step, and J_gen counts only earlier candidates that end valid, so the pre-check
        waits for the result of an earlier near-duplicate still in training (and looks again if it ends
        invalid). An earlier candidate decided here without training (its validity unknown) is left to
        the filter, which trains it when a later one's decision depends on it (`untrained_neighbour`).
        A wiring shared only with an earlier candidate of the cycle is left to the filter too."""
        ctx = self.ctx
        screen_request, timeout = requests.evaluation(
            ctx.experiment_id, ctx.config, candidate_id, code, cycle, static_only=True
        )
        screen = await ctx.peers.evaluator.screen(screen_request, timeout)
        passed = screen.status == evaluator_pb2.EVALUATION_STATUS_OK
        static = ids.precheck_collection(ctx.experiment_id, cycle)
        if passed:
            await ctx.peers.novelty.admit(static, candidate_id, code)
        async with self._changed:
            self._screened.add(candidate_id)
            if passed:
                self._registered.add(candidate_id)
            self._changed.notify_all()
        if not passed:
            return False  # the proxy evaluation fails it in the same stage, and records it
        index = ctx.ledger.candidate_of(candidate_id).idx
        async with self._changed:  # every earlier candidate screened, so none is missed
            await self._changed.wait_for(lambda: self._earlier_screened(cycle, index))
        [train] = await ctx.peers.novelty.check(code, [ids.corpus_collection(ctx.experiment_id)])
        if train.near_duplicate:
            ctx.ledger.record_precheck(candidate_id, screen, train, None)
            return True
        generation = await self._earlier_near_duplicate(cycle, index, code)
        if generation is not None:
            ctx.ledger.record_precheck(candidate_id, screen, train, generation)
            return True
        if ctx.config.architecture_novelty == controller_pb2.ARCHITECTURE_NOVELTY_REQUIRE:
            return await self._known_wiring(cycle, candidate_id, code)
        return False

    async def _earlier_near_duplicate(
        self, cycle: int, index: int, code: str
    ) -> novelty_pb2.CollectionMatch | None:
        """The match when the text is a near-duplicate of an earlier candidate of the cycle that ended
        valid (waiting for those still in evaluation), else None."""
        ctx = self.ctx
        static = ids.precheck_collection(ctx.experiment_id, cycle)
        while True:
            pending, valid = self._earlier_in_the_running(cycle, index)
            if not pending and not valid:
                return None
            [generation] = await ctx.peers.novelty.check(code, [static], among=pending + valid)
            if not generation.near_duplicate:
                return None
            nearest = generation.nearest_entry_id
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._evaluated, nearest))
            if ctx.ledger.candidate_of(nearest).valid:
                return generation
            # it ended invalid or untrained: it is out of the running; ask about the rest

    async def _known_wiring(self, cycle: int, candidate_id: str, code: str) -> bool:
        """architecture_novelty require: the sandboxed stages up to the parameter budget, no training
        (a request with forward_only); decided when the recorded wiring is a corpus program's or an
        admitted candidate's (recorded with its J_train by text and architecture). One that fails
        those stages is left to the proxy evaluation, which fails it in the same stage and records it."""
        ctx = self.ctx
        request, timeout = requests.evaluation(
            ctx.experiment_id, ctx.config, candidate_id, code, cycle, forward_only=True
        )
        forward = await ctx.peers.evaluator.evaluate(request, timeout)
        known_as = ctx.wiring.before(cycle).get(forward.wiring_hash, "") if forward.wiring_hash else ""
        if forward.status != evaluator_pb2.EVALUATION_STATUS_OK or not known_as:
            return False
        corpus_name = ids.corpus_collection(ctx.experiment_id)
        [train] = await ctx.peers.novelty.check(code, [corpus_name], list(forward.structural_tokens))
        ctx.ledger.record_precheck(candidate_id, forward, train, None, wiring_known_as=known_as)
        return True

    async def untrained_neighbour(self, c: CandidateRow, untrained: list[str]) -> str:
        """The filter's question for a valid candidate `c` whose text is novel: is it a near-duplicate
        of one decided before training (`untrained`)? That one would be in the cycle's collection had it
        been trained and ended valid, so the filter trains it first (the paper-order decision)."""
        if not untrained:
            return ""
        static = ids.precheck_collection(self.ctx.experiment_id, c.cycle)
        [match] = await self.ctx.peers.novelty.check(c.code, [static], among=untrained)
        return match.nearest_entry_id if match.near_duplicate else ""

    def _evaluated(self, candidate_id: str) -> bool:
        return self.ctx.ledger.candidate_of(candidate_id).stage is not Stage.GENERATED

    def _earlier_screened(self, cycle: int, index: int) -> bool:
        rows = [c for c in self.ctx.ledger.candidates(self.ctx.experiment_id, cycle) if c.idx < index]
        return len(rows) == index and all(
            c.stage is not Stage.GENERATED or c.candidate_id in self._screened for c in rows
        )

    def _earlier_in_the_running(self, cycle: int, index: int) -> tuple[list[str], list[str]]:
        """(still in evaluation, ended valid): the cycle's earlier candidates that passed the static
        stages and may be, or are, valid."""
        pending, valid = [], []
        for c in self.ctx.ledger.candidates(self.ctx.experiment_id, cycle):
            if c.idx >= index:
                break
            if c.valid:
                valid.append(c.candidate_id)
            elif c.stage is Stage.GENERATED and c.candidate_id in self._registered:
                pending.append(c.candidate_id)
        return pending, valid
