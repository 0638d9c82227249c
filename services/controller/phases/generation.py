"""Generation: the cycle's candidates stream from the generator (start_index = how many the cycle
already has, so a restart asks only for the rest), each written to the ledger and handed to its proxy
evaluation at once; the phase ends when every evaluation has (events cycle_generated, cycle_evaluated).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from archloop.v1 import common_pb2
from services.controller import requests
from services.controller.ledger import CycleRow
from services.controller.peers import PeerFailed
from services.controller.phases.context import PrecheckPhase, ProxyEvaluation, RunContext, cancel_all
from services.controller.phases.parents import Parents
from services.controller.states import Phase, Stage
from services.controller.summary import cycle_counts, evaluated_payload


class Generation:
    def __init__(
        self, ctx: RunContext, evaluation: ProxyEvaluation, precheck: PrecheckPhase, parents: Parents
    ) -> None:
        self.ctx, self.evaluation, self.precheck, self.parents = ctx, evaluation, precheck, parents

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

    async def _generate(
        self, cycle: int, row: CycleRow, record: Callable[[common_pb2.Candidate], Awaitable[None]]
    ) -> None:
        """What the cycle still lacks, in requests of at most the generator's limit."""
        ctx = self.ctx
        have = len(ctx.ledger.candidates(ctx.experiment_id, cycle))
        wanted = ctx.config.candidates_per_cycle
        most = await ctx.peers.generator.max_candidates_per_request() if have < wanted else 0
        while have < wanted:
            n = min(most, wanted - have)
            request = requests.generation(
                ctx.experiment_id,
                ctx.config,
                ctx.prompt_task,
                row,
                have,
                n,
                self.parents.choose(cycle, have, n),
            )
            await ctx.peers.generator.stream(request, record)
            before, have = have, len(ctx.ledger.candidates(ctx.experiment_id, cycle))
            if have == before:
                raise PeerFailed(f"generator.GenerateCandidates: the stream ended with none of {request.n}")

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
