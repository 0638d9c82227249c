"""The archive of parents behind one interface: its upkeep (the baseline and every admitted candidate
entered, each with whether its edit prompt fits the generator), the parent each delta / factor / engine
candidate edits, and the admitted candidates with the parents they edited (for the training set).

The policies are pure functions in services.controller.archive; the entries are a ledger table.
"""

from __future__ import annotations

import asyncio
import json

import structlog

from archloop.factors import load_factors
from archloop.v1 import common_pb2, controller_pb2
from services.controller import archive, factor_bandit, requests
from services.controller.phases.context import RunContext
from services.controller.trainset import Admitted

log = structlog.get_logger("archloop.controller")
EDIT_MODES = (
    common_pb2.GENERATION_MODE_DELTA,
    common_pb2.GENERATION_MODE_FACTOR,
    common_pb2.GENERATION_MODE_REGION,
    common_pb2.GENERATION_MODE_ENGINE,
)


class Parents:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._arms: tuple[int, dict[str, factor_bandit.Arm]] | None = None  # (cycle, the bandit's arms)

    @property
    def edits(self) -> bool:
        """Whether candidates edit a parent (delta / factor / region / engine mode) rather than come
        whole."""
        return self.ctx.config.generation.mode in EDIT_MODES

    async def update(self, cycle: int) -> None:
        """Enter the baseline (before cycle 1) and every candidate admitted before `cycle` that the
        archive lacks, each with whether its edit prompt fits the generator's context (idempotent)."""
        ctx = self.ctx
        if not self.edits:
            return
        have = {e.entry_id for e in ctx.ledger.archive(ctx.experiment_id)}
        new: list[tuple[str, int, str, float, int, str]] = []
        if archive.BASELINE_ID not in have:
            new.append((archive.BASELINE_ID, 0, requests.baseline_code(ctx.config), 0.0, 0, ""))
        for c in ctx.ledger.admitted(ctx.experiment_id, cycle - 1):
            if c.candidate_id not in have:
                new.append((c.candidate_id, c.cycle, c.code, c.accuracy or 0.0, c.param_count or 0, c.factor))
        if not new:
            return
        if ctx.config.generation.mode == common_pb2.GENERATION_MODE_ENGINE:
            fits = [True] * len(new)  # no prompt: the engine edits any program
        else:
            spec, mode = requests.task_spec(ctx.prompt_task), ctx.config.generation.mode
            fits = await ctx.peers.generator.prompt_fits(spec, mode, [n[2] for n in new])
        entries = [
            archive.ArchiveEntry(i, c, code, acc, params, archive.depth(code), factor, ok)
            for (i, c, code, acc, params, factor), ok in zip(new, fits, strict=True)
        ]
        added = await asyncio.to_thread(ctx.ledger.add_to_archive, ctx.experiment_id, entries)
        log.info("archive_updated", experiment_id=ctx.experiment_id, cycle=cycle, added=added,
                 not_fitting=sum(not e.fits for e in entries))  # fmt: skip

    def choose(self, cycle: int, start: int, n: int) -> list[tuple[str, str]]:
        """(id, code) of the program each of candidates start … start + n - 1 edits; none in full mode."""
        if not self.edits:
            return []
        ctx, g = self.ctx, self.ctx.config.generation
        chosen = archive.choose_parents(
            g.parent_policy, ctx.ledger.archive(ctx.experiment_id, before_cycle=cycle), ctx.config.seed,
            cycle, range(start, start + n), g.tournament_size or 3, g.population_size or 16,
        )  # fmt: skip
        return [(entry.entry_id, entry.code) for entry in chosen]

    def factor_choices(self, cycle: int, start: int, n: int) -> list[tuple[str, str]]:
        """(factor, what the bandit drew) for candidates start … start + n - 1 under
        `factor_policy: bandit`, from the outcomes of earlier cycles; none otherwise (the generator
        chooses from the list)."""
        ctx, g = self.ctx, self.ctx.config.generation
        if g.factor_policy != controller_pb2.FACTOR_POLICY_BANDIT:
            return []
        if self._arms is None or self._arms[0] != cycle:  # read once a cycle: earlier cycles do not change
            listed = list(g.factors) or list(load_factors())
            outcomes = [
                (
                    row.factor,
                    factor_bandit.reward(row.admitted, bool(row.topology_sha256), row.wiring_known_as),
                )
                for row in ctx.ledger.candidates(ctx.experiment_id)
                if row.cycle < cycle and row.decision is not None and row.factor
            ]
            self._arms = (cycle, factor_bandit.arms(outcomes, listed))
        state = self._arms[1]
        return [factor_bandit.choose(state, ctx.config.seed, cycle, i) for i in range(start, start + n)]

    def admitted(self, cycle: int) -> list[Admitted]:
        """The candidates admitted up to `cycle` for the training set, each with the parent it edited
        (from the archive, read once)."""
        ctx = self.ctx
        parents = {e.entry_id: e.code for e in ctx.ledger.archive(ctx.experiment_id)}
        admitted = []
        for row in ctx.ledger.admitted(ctx.experiment_id, cycle):
            generation = json.loads(row.generation_json)
            parent = parents.get(generation.get("parent_id", ""), "")
            fim = bool(generation.get("region_fim", False))  # proto3 JSON leaves out a false bool
            admitted.append(Admitted(row.candidate_id, row.code, row.mode, parent, row.factor, fim))
        return admitted
