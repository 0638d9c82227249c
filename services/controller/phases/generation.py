"""Generation: the cycle's candidates stream from their source (start_index = how many the cycle
already has, so a restart asks only for the rest), each written to the ledger and handed to its proxy
evaluation at once; the phase ends when every evaluation has (events cycle_generated, cycle_evaluated).

The source is the generator's language model (`LanguageModel`, modes full / delta / factor), or a search
without one (issue 35): services.controller.phases.engine, services.controller.phases.corpus_sample.
"""

from __future__ import annotations

import asyncio
import time

from archloop.v1 import common_pb2
from services.controller import requests
from services.controller.ledger import CycleRow
from services.controller.peers import PeerFailed
from services.controller.phases.context import (
    CandidateSource,
    PrecheckPhase,
    ProxyEvaluation,
    Record,
    RunContext,
    cancel_all,
)
from services.controller.phases.parents import Parents
from services.controller.states import Phase, Stage
from services.controller.summary import cycle_counts, evaluated_payload


class LanguageModel:
    """Candidates sampled by the generator service's model (full, delta, factor, region)."""

    name = "generator.GenerateCandidates"

    def __init__(self, ctx: RunContext, parents: Parents) -> None:
        self.ctx, self.parents = ctx, parents

    async def batch_size(self) -> int:
        return await self.ctx.peers.generator.max_candidates_per_request()

    async def produce(self, cycle: int, row: CycleRow, start: int, n: int, record: Record) -> None:
        ctx, parents = self.ctx, self.parents.choose(cycle, start, n)
        factors = await asyncio.to_thread(self.parents.factor_choices, cycle, start, n)
        request = requests.generation(
            ctx.experiment_id, ctx.config, ctx.prompt_task, row, start, n, parents, factors
        )
        await ctx.peers.generator.stream(request, record)


class Generation:
    def __init__(
        self, ctx: RunContext, evaluation: ProxyEvaluation, precheck: PrecheckPhase, source: CandidateSource
    ) -> None:
        self.ctx, self.evaluation, self.precheck, self.source = ctx, evaluation, precheck, source

    async def run(self, cycle: int, row: CycleRow) -> None:
        ctx = self.ctx
        started = time.monotonic()
        tasks: list[asyncio.Task] = []
        await self.precheck.open(cycle)

        def evaluate_later(candidate_id: str, code: str, error: str) -> None:
            tasks.append(asyncio.create_task(self.evaluation.evaluate(cycle, candidate_id, code, error)))

        for candidate in ctx.ledger.candidates(ctx.experiment_id, cycle):  # left from before a restart
            if candidate.stage is Stage.GENERATED:
                evaluate_later(candidate.candidate_id, candidate.code, candidate.generation_error)
        try:
            await self._generate(cycle, row, self._recorder(evaluate_later))
            counts = cycle_counts(ctx.ledger.candidates(ctx.experiment_id, cycle))
            ctx.step(cycle, "cycle_generated", dict(
                candidates_generated=counts.generated,
                generation_errors=counts.generation_errors,
                duration_seconds=time.monotonic() - started,
            ), phase=Phase.EVALUATING)  # fmt: skip
            evaluations = asyncio.ensure_future(asyncio.gather(*tasks))
            stop = asyncio.ensure_future(ctx.stop.event.wait())
            await asyncio.wait({evaluations, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            ctx.stop.check()
            await evaluations
        except BaseException:
            await cancel_all(tasks)
            raise
        payload = evaluated_payload(ctx.ledger.candidates(ctx.experiment_id, cycle))
        ctx.step(cycle, "cycle_evaluated", dict(**payload, duration_seconds=time.monotonic() - started),
                 phase=Phase.FILTERING)  # fmt: skip

    async def _generate(self, cycle: int, row: CycleRow, record: Record) -> None:
        """What the cycle still lacks, in requests of at most the source's limit."""
        ctx = self.ctx
        have = len(ctx.ledger.candidates(ctx.experiment_id, cycle))
        wanted = ctx.config.candidates_per_cycle
        most = await self.source.batch_size() if have < wanted else 0
        while have < wanted:
            n = min(most, wanted - have)
            await self.source.produce(cycle, row, have, n, record)
            before, have = have, len(ctx.ledger.candidates(ctx.experiment_id, cycle))
            if have == before:
                raise PeerFailed(f"{self.source.name}: the stream ended with none of {n}")

    def _recorder(self, evaluate_later):
        """For each streamed candidate: the ledger row, then its evaluation started (once: a candidate
        the ledger already holds, re-sent after a restart, is not evaluated twice)."""
        ctx = self.ctx

        async def record(c: common_pb2.Candidate) -> None:
            # the commit (an fsync) runs in a thread: the loop keeps dispatching evaluations meanwhile
            added = await asyncio.to_thread(ctx.ledger.record_generated, ctx.experiment_id, c)
            ctx.notify.set()
            if added:
                evaluate_later(c.candidate_id, c.code, c.generation_error)

        return record
