"""A cycle's fine-tuning set: a seeded sample of the LEMUR chat pairs (the same sample every cycle) and a
chat pair for every candidate admitted so far, in the corpus's record format (archloop.corpus)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from archloop import corpus, prompts


def write_training_set(
    path: Path,
    corpus_dir: Path,
    lemur_examples: int,
    seed: int,
    task: prompts.Task,
    admitted: Iterable[tuple[str, str]],
) -> int:
    """Write the set to `path` once and return how many pairs it holds; a restart finds the file and
    reuses it, so the trainer's job request stays identical. `admitted`: (candidate id, code);
    `lemur_examples` 0 = every LEMUR pair."""
    if path.exists():
        with path.open() as handle:
            return sum(1 for _ in handle)
    examples = list(corpus.read_jsonl(corpus_dir / "examples.jsonl"))
    if 0 < lemur_examples < len(examples):
        examples = random.Random(seed).sample(examples, lemur_examples)
    for candidate_id, code in admitted:
        examples.append(
            {
                "id": f"{candidate_id}#{task.dataset}",
                "model": candidate_id,
                "dataset": task.dataset,
                "source": "generated",
                "messages": prompts.chat_messages(task, code),
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text("".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in examples))
    staging.replace(path)
    return len(examples)
