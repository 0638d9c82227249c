"""Proxy evaluation: each generated candidate's static stages, sandboxed instantiation, forward pass,
budget and one-epoch training on the evaluator, recorded in the ledger (docs/method.md#the-loop).

A candidate with no program is recorded as a generation error; with the novelty pre-check on, one the
pre-check decides is not trained at all. A repaired candidate's raw program (what the model itself
wrote) is evaluated too, so reports can put its valid rate beside the repaired one's.
"""

from __future__ import annotations

import asyncio
import json

from archloop.ids import EvaluationKind
from archloop.v1 import evaluator_pb2
from services.controller import requests
from services.controller.phases.context import PrecheckPhase, RunContext
from services.controller.states import short_name


class Evaluation:
    def __init__(self, ctx: RunContext, precheck: PrecheckPhase) -> None:
        self.ctx, self.precheck = ctx, precheck

    async def evaluate(self, cycle: int, candidate_id: str, code: str, error: str) -> None:
        """The candidate decided by the pre-check or given its proxy evaluation; either way the
        candidates of the cycle waiting on it are told."""
        ctx = self.ctx
        try:
            if error or not code.strip():
                ctx.ledger.record_generation_error(candidate_id)
                ctx.notify.set()
                return
            if await self.precheck.decides(cycle, candidate_id, code):
                return
            await self.run_proxy(cycle, candidate_id, code)
        finally:
            await self.precheck.screened(candidate_id)

    async def run_proxy(self, cycle: int, candidate_id: str, code: str) -> None:
        """The proxy evaluation (static stages, sandboxed instantiate … one epoch), recorded."""
        ctx = self.ctx
        raw_status = ""
        row = ctx.ledger.candidate(candidate_id)
        if row is not None and row.repaired:
            raw_code = json.loads(row.generation_json).get("raw_code", "")
            raw_result = await self._run(cycle, candidate_id, raw_code, EvaluationKind.RAW)
            raw_status = short_name(evaluator_pb2.EvaluationStatus, raw_result.status)
        result = await self._run(cycle, candidate_id, code, EvaluationKind.PROXY)
        await asyncio.to_thread(ctx.ledger.record_evaluation, candidate_id, result, raw_status)
        ctx.notify.set()

    async def _run(
        self, cycle: int, candidate_id: str, code: str, kind: EvaluationKind
    ) -> evaluator_pb2.EvaluationResult:
        ctx = self.ctx
        request, timeout = requests.evaluation(ctx.experiment_id, ctx.config, candidate_id, code, cycle, kind)
        return await ctx.peers.evaluator.evaluate(request, timeout)
