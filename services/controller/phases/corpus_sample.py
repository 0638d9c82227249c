"""Corpus sampling (generation.mode corpus_sample, issue 35): the "just pick from LEMUR" search. Each
candidate is a corpus program as it is, drawn without replacement in an order seeded by the experiment's
seed (`<seed>:corpus_sample`; past the corpus's size the order starts again); no language model and no
fine-tune.

Every such candidate is its own corpus program's text, so the novelty filter rejects it (J_train = 1):
the arm is read by its accuracies (best so far against evaluations, the corpus leaderboard), not by its
admissions; the novelty pre-check is off in this mode so that every candidate is trained.
"""

from __future__ import annotations

import random
import time

from archloop import corpus, ids
from archloop.v1 import common_pb2
from services.controller.ledger import CycleRow
from services.controller.phases.context import Record, RunContext


class CorpusSample:
    name = "the corpus sample"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._order: list[tuple[str, str]] | None = None

    def order(self) -> list[tuple[str, str]]:
        """(model, code) of every corpus program in the run's seeded order (read once)."""
        if self._order is None:
            programs = sorted(corpus.training_programs(self.ctx.settings.corpus_dir).items())
            if not programs:
                raise corpus.CorpusError(f"the corpus at {self.ctx.settings.corpus_dir} has no programs")
            random.Random(f"{self.ctx.config.seed}:corpus_sample").shuffle(programs)
            self._order = programs
        return self._order

    async def batch_size(self) -> int:
        return self.ctx.config.candidates_per_cycle

    async def produce(self, cycle: int, row: CycleRow, start: int, n: int, record: Record) -> None:
        ctx, order = self.ctx, self.order()
        for index in range(start, start + n):
            began = time.monotonic()
            model, code = order[((cycle - 1) * ctx.config.candidates_per_cycle + index) % len(order)]
            info = common_pb2.GenerationInfo(
                mode=common_pb2.GENERATION_MODE_CORPUS_SAMPLE,
                backend="corpus",
                seed=ctx.config.seed,
                corpus_model=model,
                latency_seconds=time.monotonic() - began,
            )
            await record(
                common_pb2.Candidate(
                    candidate_id=ids.candidate_id(ctx.experiment_id, cycle, index),
                    experiment_id=ctx.experiment_id,
                    cycle=cycle,
                    index=index,
                    code=code,
                    generation=info,
                )
            )
