"""The fine-tune: the cycle's training set (a seeded sample of LEMUR pairs and every admitted
candidate, with the parent it edited) written once, then the trainer's job (id
archloop.ids.fine_tune_job_id: the trainer is idempotent by it, so a restart never starts a job twice;
an interrupted job is resumed from its checkpoint). Its adapter generates the next cycle (event
cycle_fine_tuned). With the no_iteration ablation only cycle 1 is fine-tuned; a mode without a language
model (engine, corpus_sample) fine-tunes nothing (the cycle's event says why).
"""

from __future__ import annotations

import time

from archloop import corpus
from archloop.v1 import trainer_pb2
from services.controller import requests
from services.controller.config import uses_language_model
from services.controller.phases.context import RunContext
from services.controller.phases.parents import Parents
from services.controller.states import Phase
from services.controller.trainset import write_training_set


class FineTune:
    def __init__(self, ctx: RunContext, parents: Parents) -> None:
        self.ctx, self.parents = ctx, parents
        self.last_step: trainer_pb2.FineTuneStep | None = None  # the running job's last step

    async def run(self, cycle: int) -> None:
        ctx = self.ctx
        started = time.monotonic()
        if not uses_language_model(ctx.config.generation):
            why = "no language model (generation.mode engine or corpus_sample)"
            payload = dict(skipped=True, skipped_reason=why, duration_seconds=0.0)
            ctx.step(cycle, "cycle_fine_tuned", payload, phase=Phase.FINE_TUNED, fine_tune_skipped=1)
            return
        if ctx.config.ablations.no_iteration and cycle > 1:
            ctx.step(cycle, "cycle_fine_tuned", dict(skipped=True, duration_seconds=0.0),
                     phase=Phase.FINE_TUNED, fine_tune_skipped=1)  # fmt: skip
            return
        self.last_step = None
        path = ctx.settings.work_dir / ctx.experiment_id / f"cycle-{cycle}" / "train.jsonl"
        examples = write_training_set(
            path, ctx.settings.corpus_dir, ctx.config.lemur_examples_per_cycle, ctx.config.seed,
            ctx.prompt_task, self.parents.admitted(cycle), corpus.edits_dir(ctx.settings.corpus_dir),
            ctx.config.edit_pair_share,
        )  # fmt: skip
        previous = ctx.ledger.adapter_before(ctx.experiment_id, cycle)
        request = requests.fine_tune(ctx.experiment_id, ctx.config, cycle, path, previous)
        ctx.ledger.set_cycle(ctx.experiment_id, cycle, fine_tune_job_id=request.job_id,
                             fine_tune_examples=examples)  # fmt: skip
        job = await ctx.peers.trainer.run(request, on_step=self._on_step)
        ctx.step(
            cycle,
            "cycle_fine_tuned",
            dict(
                job_id=request.job_id,
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

    def _on_step(self, step: trainer_pb2.FineTuneStep) -> None:
        self.last_step = step
