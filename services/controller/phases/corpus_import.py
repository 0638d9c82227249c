"""Corpus import: the experiment's corpus collection holds the LEMUR training programs, with their
structural tokens once `archloop corpus structure` has run (idempotent by entry id, so a resumed run
imports nothing twice)."""

from __future__ import annotations

import structlog

from archloop import corpus, ids
from services.controller.phases.context import RunContext

log = structlog.get_logger("archloop.controller")


async def import_corpus(ctx: RunContext) -> int:
    """Import the LEMUR programs into the corpus collection; returns how many it holds."""
    name = ids.corpus_collection(ctx.experiment_id)
    await ctx.peers.novelty.create_collection(name, ctx.config.novelty_threshold)
    codes = corpus.training_programs(ctx.settings.corpus_dir)
    structure = corpus.read_structure(ctx.settings.corpus_dir, codes)  # {} before `corpus structure`
    summary = await ctx.peers.novelty.import_entries(name, codes, structure)
    log.info("corpus_collection_ready", experiment_id=ctx.experiment_id, collection=name,
             created=summary.created, unchanged=summary.unchanged, with_structure=len(structure))  # fmt: skip
    return len(codes)
