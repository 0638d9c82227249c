"""Engine-only search (generation.mode engine, issue 35): each candidate is one verified mutation-engine
edit (archloop.evolve) of a parent the archive's policy picks (aging evolution in engine.yaml); no
language model samples anything and no cycle fine-tunes one (the runner skips the fine-tune).

Candidate k of cycle c is seeded by `<experiment seed>:<cycle>:<index>` (its parent's draw and its
edit's), so a resumed cycle makes the same candidates it would have made. A parent with no verified
edit of any factor gives a candidate with a generation error naming it, like a model's answer
without code.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from archloop import evolve, ids, mutate
from archloop.v1 import common_pb2
from services.controller.ledger import CycleRow
from services.controller.phases.context import Record, RunContext
from services.controller.phases.parents import Parents


class MutationEngine:
    name = "the mutation engine"

    def __init__(self, ctx: RunContext, parents: Parents) -> None:
        self.ctx, self.parents = ctx, parents
        self.factors = tuple(ctx.config.generation.factors) or mutate.FACTORS

    async def batch_size(self) -> int:
        return self.ctx.config.candidates_per_cycle

    async def produce(self, cycle: int, row: CycleRow, start: int, n: int, record: Record) -> None:
        ctx = self.ctx
        for offset, (parent_id, parent) in enumerate(self.parents.choose(cycle, start, n)):
            index = start + offset
            began = time.monotonic()
            seed = f"{ctx.config.seed}:{cycle}:{index}"
            made = await asyncio.to_thread(evolve.child, parent, seed, self.factors)
            info = common_pb2.GenerationInfo(
                mode=common_pb2.GENERATION_MODE_ENGINE,
                backend="engine",
                seed=ctx.config.seed * 1000 + cycle,
                parent_id=parent_id,
                parent_sha256=hashlib.sha256(parent.encode()).hexdigest(),
                latency_seconds=time.monotonic() - began,
            )
            candidate = common_pb2.Candidate(
                candidate_id=ids.candidate_id(ctx.experiment_id, cycle, index),
                experiment_id=ctx.experiment_id,
                cycle=cycle,
                index=index,
                generation=info,
            )
            if made is None:
                candidate.generation_error = (
                    f"the mutation engine has no verified edit of {parent_id} for any of {list(self.factors)}"
                )
            else:
                candidate.code = made.code
                g = candidate.generation  # (the constructor copied `info`)
                g.factor, g.engine_edit = made.factor, made.edit
                g.touched_factors.append(made.factor)
            await record(candidate)
