"""Training pairs for the edit modes: verified factor mutations of corpus programs, rendered as delta and
factor chats (docs/method.md#generation-modes).

    archloop corpus edits [--corpus DIR] [--out DIR] [--seed S] [--programs N]

For each corpus program (one per model, the task of its first pair) and each factor of factors.yaml,
archloop.mutate proposes up to three edits; every proposal runs in a forward-check worker
(archloop.forwardcheck: `Net` builds at the task's shapes and a forward pass returns finite logits) and
must meet the corpus's budget (the loop's 500,000 parameters) and touch exactly its factor
(archloop.factors, the same rule that measures the model's entanglement). The first proposal
that passes becomes two chat pairs, both rendered with the generator's own templates (archloop.prompts):
    delta   the parent in the prompt, the unified diff (one line of context) as the answer
    factor  the parent and the factor in the prompt, the edited program as the answer
The pairs teach the edit formats and factor scoping; which edit is *better* is what the loop's own pairs
teach (services/controller/trainset.py adds a pair for each admitted edit, parent → child).

Output (deterministic for a corpus, seed and factor list): `edits.jsonl` (one chat pair per line, in the
corpus's record format plus mode, factor, what changed and the parent), and `manifest.json` (the corpus
manifest's sha256, the prompt version, per-factor counts proposed / built / in budget / scoped / kept).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from archloop import corpus, forwardcheck, mutate, prompts
from archloop.factors import load_factors, touched_factors

EDITS_VERSION = "edits-v1"
STAGES = ("proposed", "built", "in_budget", "scoped", "kept")  # proposed: checked


@dataclass
class EditPairsReport:
    out_dir: Path
    manifest: dict
    seconds: float


def corpus_parents(corpus_dir: Path) -> list[tuple[str, str, str]]:
    """(model, dataset of its first pair, program) of every corpus model, in file order."""
    seen: dict[str, tuple[str, str, str]] = {}
    for example in corpus.read_jsonl(corpus_dir / "examples.jsonl"):
        if example["model"] not in seen:
            code = prompts.extract_code(example["messages"][-1]["content"])[0]
            seen[example["model"]] = (example["model"], example["dataset"], code)
    return list(seen.values())


def build_edit_pairs(
    corpus_dir: Path,
    out_dir: Path,
    seed: int = 0,
    programs: int = 0,
    workers: int = 0,
    budget: int = corpus.LOOP_BUDGET,
) -> EditPairsReport:
    """Write the edit pairs of `corpus_dir` to `out_dir`; `programs` > 0 takes a seeded sample of them."""
    started = time.monotonic()
    factors = load_factors()
    parents = corpus_parents(corpus_dir)
    if 0 < programs < len(parents):
        parents = sorted(random.Random(seed).sample(parents, programs))
    programs_by_model = {model: code for model, _, code in parents}
    datasets = {model: dataset for model, dataset, _ in parents}
    proposals: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (model, factor) → [(text, what)]
    counts: dict[str, Counter[str]] = {factor: Counter() for factor in mutate.FACTORS}
    for model, _, code in parents:
        for factor in mutate.FACTORS:
            found = mutate.mutations(code, factor, random.Random(f"{seed}:{model}:{factor}"))
            if found:
                proposals[(model, factor)] = found
    kept: dict[tuple[str, str], tuple[str, str, int]] = {}
    # round r checks proposal r of every (model, factor) that has no pair yet: most first proposals pass
    for round_ in range(mutate.PROPOSALS):
        todo = {
            f"{model}|{factor}": (model, factor, found[round_])
            for (model, factor), found in proposals.items()
            if round_ < len(found) and (model, factor) not in kept
        }
        checked = forwardcheck.check_many(
            [
                (
                    key,
                    text,
                    prompts.TASKS[datasets[model]].input_shape,
                    prompts.TASKS[datasets[model]].num_classes,
                )
                for key, (model, _, (text, _)) in todo.items()
            ],
            workers=workers,
        )
        for key, (model, factor, (text, what)) in todo.items():
            result = checked[key]
            counts[factor]["proposed"] += 1
            if not result.ok:
                continue
            counts[factor]["built"] += 1
            if result.parameters > budget:
                continue
            counts[factor]["in_budget"] += 1
            if touched_factors(programs_by_model[model], text, factors) != [factor]:
                continue
            counts[factor]["scoped"] += 1
            counts[factor]["kept"] += 1
            kept[(model, factor)] = (text, what, result.parameters)
    records = []
    for (model, factor), (text, what, parameters) in sorted(kept.items()):
        parent = programs_by_model[model]
        task = prompts.TASKS[datasets[model]]
        common = {
            "model": f"{model}~{factor}",
            "parent": model,
            "dataset": datasets[model],
            "source": "mutation",
            "factor": factor,
            "what": what,
            "parameters": parameters,
        }
        for mode in ("delta", "factor"):
            messages = prompts.edit_pair(task, mode, parent, text, factor, factors[factor].description)
            records.append({"id": f"{model}~{factor}#{mode}", "mode": mode, **common, "messages": messages})
    manifest = {
        "version": EDITS_VERSION,
        "corpus_manifest_sha256": corpus.manifest_sha256(corpus_dir),
        "edit_prompt_version": prompts.EDIT_PROMPT_VERSION,
        "seed": seed,
        "programs": len(parents),
        "budget": budget,
        "factors": list(mutate.FACTORS),
        "counts": {factor: {stage: counts[factor][stage] for stage in STAGES} for factor in mutate.FACTORS},
        "pairs": len(records),
    }
    return EditPairsReport(out_dir, write_pairs(out_dir, records, manifest), time.monotonic() - started)


def write_pairs(out_dir: Path, records: list[dict], manifest: dict) -> dict:
    """An edits folder: `edits.jsonl` (one record a line, keys sorted) and `manifest.json`, which gets the
    body's sha256 as `edits_sha256` (what base-model training records); the manifest written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    (out_dir / "edits.jsonl").write_text(body, encoding="utf-8")
    manifest = {**manifest, "edits_sha256": hashlib.sha256(body.encode()).hexdigest()}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_edit_pairs(edits_dir: Path) -> list[dict]:
    """The pairs of an edits folder; corpus.CorpusError when it has no manifest."""
    if not (Path(edits_dir) / "manifest.json").exists():
        raise corpus.CorpusError(f"{edits_dir}/manifest.json is missing; run `archloop corpus edits`")
    return list(corpus.read_jsonl(Path(edits_dir) / "edits.jsonl"))
