"""Final training (config final_training): the run's top-k admitted candidates trained for
final_training.epochs after the last cycle, to test the one-epoch proxy against a longer run (one
already trained before a restart is not run again)."""

from __future__ import annotations

from archloop.ids import EvaluationKind
from services.controller import requests
from services.controller.phases.context import RunContext


class FinalTraining:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    async def run(self) -> None:
        ctx, final = self.ctx, self.ctx.config.final_training
        if not final.top_k:
            return
        admitted = sorted(
            ctx.ledger.admitted(ctx.experiment_id), key=lambda c: (-(c.accuracy or 0), c.candidate_id)
        )
        for c in admitted[: final.top_k]:
            ctx.stop.check()
            if c.final_accuracy is not None:
                continue
            request, timeout = requests.evaluation(
                ctx.experiment_id, ctx.config, c.candidate_id, c.code, c.cycle, EvaluationKind.FINAL
            )
            result = await ctx.peers.evaluator.evaluate(request, timeout)
            ctx.ledger.record_final_accuracy(c.candidate_id, result.accuracy)
