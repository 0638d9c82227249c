"""A cycle's fine-tuning set: a seeded sample of the LEMUR chat pairs (the same sample every cycle), a
seeded sample of the mutation engine's edit pairs (`edit_pair_share` of the LEMUR sample; the edits
folder `archloop corpus edits` writes beside the corpus), and a chat pair for every candidate admitted so
far — plus, for one made by an edit, the edit itself (its parent in the prompt, its diff or its program
as the answer, as the generator asked for it; for a region edit the parent with the site cut out and the
lines written there), so the model learns which edits get admitted. All in the
corpus's record format (archloop.corpus)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from archloop import corpus, prompts, regions
from archloop.factors import load_factors
from archloop.rewrite import canonical


@dataclass(frozen=True)
class Admitted:
    candidate_id: str
    code: str
    mode: str = "full"  # "delta" / "factor" / "region": made by editing `parent`
    parent: str = ""
    factor: str = ""
    fim: bool = True  # region mode: the hole was shown in FIM tokens


def edit_examples(admitted: Admitted, task: prompts.Task) -> list[dict]:
    """The edit pair of an admitted delta / factor / region candidate (none for a full program)."""
    if admitted.mode == "region" and admitted.parent:
        return region_examples(admitted, task)
    if not admitted.parent or admitted.mode not in ("delta", "factor"):
        return []
    if admitted.mode == "factor" and not admitted.factor:
        return []
    factor = load_factors().get(admitted.factor) if admitted.mode == "factor" else None
    description = factor.description if factor else admitted.factor
    messages = prompts.edit_pair(
        task, admitted.mode, admitted.parent, admitted.code, admitted.factor, description
    )
    return [
        {
            "id": f"{admitted.candidate_id}#{admitted.mode}",
            "model": admitted.candidate_id,
            "dataset": task.dataset,
            "source": "generated",
            "mode": admitted.mode,
            "messages": messages,
        }
    ]


def region_examples(admitted: Admitted, task: prompts.Task) -> list[dict]:
    """The region example of an admitted region candidate: its parent with the smallest site of its
    factor that holds the change cut out, and the lines it wrote there (none when no site holds it)."""
    factors = load_factors()
    factor = factors.get(admitted.factor)
    try:
        parent = canonical(admitted.parent)
    except SyntaxError:
        return []
    site = regions.training_site(parent, admitted.code, admitted.factor, factors) if factor else None
    if factor is None or site is None:
        return []
    prefix, _, suffix = regions.cut(parent, site)
    middle = regions.child_middle(parent, admitted.code, site)
    messages = prompts.region_messages(task, prefix, suffix, factor.name, factor.description, admitted.fim)
    answer = {"role": "assistant", "content": prompts.region_answer(middle, admitted.fim)}
    return [{"id": f"{admitted.candidate_id}#region", "model": admitted.candidate_id, "dataset": task.dataset,
             "source": "generated", "mode": "region", "messages": [*messages, answer]}]  # fmt: skip


def write_training_set(
    path: Path,
    corpus_dir: Path,
    lemur_examples: int,
    seed: int,
    task: prompts.Task,
    admitted: Iterable[Admitted],
    edits_dir: Path | None = None,
    edit_share: float = 0.0,
) -> int:
    """Write the set to `path` once and return how many pairs it holds; a restart finds the file and
    reuses it, so the trainer's job request stays identical. `lemur_examples` 0 = every LEMUR pair;
    `edit_share` > 0 needs `edits_dir` (corpus.CorpusError when it holds no edits)."""
    if path.exists():
        with path.open() as handle:
            return sum(1 for _ in handle)
    examples = list(corpus.read_jsonl(corpus_dir / "examples.jsonl"))
    if 0 < lemur_examples < len(examples):
        examples = random.Random(seed).sample(examples, lemur_examples)
    if edit_share > 0:
        if edits_dir is None or not (Path(edits_dir) / "edits.jsonl").exists():
            raise corpus.CorpusError(
                f"edit_pair_share is {edit_share} but {edits_dir} holds no edit pairs; "
                "run `archloop corpus edits`"
            )
        edits = list(corpus.read_jsonl(Path(edits_dir) / "edits.jsonl"))
        wanted = min(len(edits), round(len(examples) * edit_share))
        examples += random.Random(seed).sample(edits, wanted)
    for program in admitted:
        examples.append(
            {
                "id": f"{program.candidate_id}#{task.dataset}",
                "model": program.candidate_id,
                "dataset": task.dataset,
                "source": "generated",
                "messages": prompts.chat_messages(task, program.code),
            }
        )
        examples += edit_examples(program, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text("".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in examples))
    staging.replace(path)
    return len(examples)
