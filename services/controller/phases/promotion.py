"""Promotion and the proxy audit (config promotion; docs/method.md#promotion-and-the-proxy-audit): the
cycle's top-k valid, novel candidates trained for promotion.epochs, concurrently on the evaluator
replicas (one already promoted before a restart is not run again), then the audit of the first-epoch
proxy on them, once per cycle (the audit and its event cycle_audited are one ledger write).
"""

from __future__ import annotations

import asyncio
import json

import structlog

from archloop.ids import EvaluationKind
from services.controller import audit, requests, selection
from services.controller.ledger import CandidateRow
from services.controller.phases.context import RunContext, cancel_all
from services.controller.states import selection_rules

log = structlog.get_logger("archloop.controller")


class PromotionAndAudit:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    async def promote(self, cycle: int) -> None:
        ctx = self.ctx
        promotion = ctx.config.promotion
        candidates = ctx.ledger.candidates(ctx.experiment_id, cycle)
        chosen = set(
            selection.promotable(
                [c.for_selection() for c in candidates], promotion.top_k, *selection_rules(ctx.config)[1:]
            )
        )
        pending = [c for c in candidates if c.candidate_id in chosen and not c.promoted_status]
        tasks = [asyncio.ensure_future(self._promote_one(cycle, c)) for c in pending]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a failed or stopped promotion leaves no evaluation running
            await cancel_all(tasks)
            raise
        ctx.stop.check()
        if not ctx.ledger.cycle_of(ctx.experiment_id, cycle).audit_json:
            self._audit(cycle)

    async def _promote_one(self, cycle: int, c: CandidateRow) -> None:
        ctx = self.ctx
        request, timeout = requests.evaluation(
            ctx.experiment_id, ctx.config, c.candidate_id, c.code, cycle, EvaluationKind.PROMOTED
        )
        result = await ctx.peers.evaluator.evaluate(request, timeout)
        await asyncio.to_thread(ctx.ledger.record_promotion, c.candidate_id, result)
        ctx.notify.set()

    def _audit(self, cycle: int) -> None:
        ctx, promotion = self.ctx, self.ctx.config.promotion
        result = audit.proxy_audit(ctx.ledger.candidates(ctx.experiment_id, cycle), promotion.epochs,
                                   promotion.min_spearman)  # fmt: skip
        payload = {k: v for k, v in result.items() if k not in ("points", "beats_params", "beats_flops")}
        ctx.step(cycle, "cycle_audited", payload, audit_json=json.dumps(audit.as_json(result)))
        say = log.warning if result["warning"] else log.info
        say("proxy_audited", experiment_id=ctx.experiment_id, cycle=cycle, warning=result["warning"],
            message=result["message"])  # fmt: skip
