"""Training examples for region edits (archloop.regions, docs/edit-modes.md#region-edits).

    archloop corpus regions [--corpus DIR] [--edits DIR] [--out DIR] [--seed S]

Two kinds, both chats rendered with the generator's own region prompt (archloop.prompts.region_messages,
fill-in-the-middle tokens):
    region  each verified engine edit of `archloop corpus edits` (a factor pair: parent → child, exactly
            one factor touched, built and run): the parent with the smallest site of that factor that
            holds the whole change cut out (archloop.regions.training_site), the child's lines there as
            the answer. An edit no single site holds is counted (`no_site`) and left out.
    fim     one per corpus program: a seeded run of one to four whole statements of one of its methods
            cut out, the original lines as the answer (random-span FIM, so that writing a middle does
            not cost full generation its skill).
Programs are taken as `ast.unparse` writes them (archloop.rewrite.canonical; the corpus is already in
that form, and so are the engine's children), the form region mode shows its parents in.
The output folder has the edit folder's layout (`edits.jsonl`, `manifest.json` with `edits_sha256`), so
`archloop base-model train --edits DIR --edit-share F` mixes it in as it mixes edit pairs, holding each
example out with its parent program.
"""

from __future__ import annotations

import ast
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from archloop import corpus, mutate, prompts, regions
from archloop.factors import load_factors
from archloop.rewrite import canonical
from tools import edit_pairs

REGIONS_VERSION = "regions-v1"
MAX_FIM_STATEMENTS = 4


@dataclass
class RegionPairsReport:
    out_dir: Path
    manifest: dict
    seconds: float


def regions_dir(corpus_dir: Path) -> Path:
    """Where a corpus's region examples go: beside it, `<name>-regions`."""
    return Path(corpus_dir).with_name(Path(corpus_dir).name + "-regions")


def _chat(task: prompts.Task, prefix: str, middle: str, suffix: str, factor: str, description: str) -> list:
    messages = prompts.region_messages(task, prefix, suffix, factor, description)
    return [*messages, {"role": "assistant", "content": prompts.region_answer(middle)}]


def fim_site(code: str, rng: random.Random) -> regions.Site | None:
    """A seeded run of 1..MAX_FIM_STATEMENTS whole statements of one method of `code` (None: no method)."""
    methods = [(name, fn) for name, fn in regions.methods(ast.parse(code)) if fn.body]
    if not methods:
        return None
    name, fn = rng.choice(methods)
    first = rng.randrange(len(fn.body))
    last = min(len(fn.body), first + rng.randint(1, MAX_FIM_STATEMENTS)) - 1
    end = fn.body[last].end_lineno or fn.body[last].lineno
    return regions.Site("", name, fn.body[first].lineno, end, "fim")


def build_region_pairs(corpus_dir: Path, edits_dir: Path, out_dir: Path, seed: int = 0) -> RegionPairsReport:
    started = time.monotonic()
    factors = load_factors()
    edits_manifest = json.loads((Path(edits_dir) / "manifest.json").read_text())
    # model → (dataset, program), as region mode shows a parent
    programs = {m: (dataset, canonical(code)) for m, dataset, code in edit_pairs.corpus_parents(corpus_dir)}
    counts: dict[str, Counter[str]] = {factor: Counter() for factor in mutate.FACTORS}
    records = []
    for edit in edit_pairs.load_edit_pairs(edits_dir):
        if edit["mode"] != "factor" or edit["parent"] not in programs:
            continue
        factor, (dataset, parent) = edit["factor"], programs[edit["parent"]]
        child = prompts.extract_code(edit["messages"][-1]["content"])[0]
        counts[factor]["edits"] += 1
        site = regions.training_site(parent, child, factor, factors)
        if site is None:
            counts[factor]["no_site"] += 1
            continue
        counts[factor][site.kind] += 1
        prefix, _, suffix = regions.cut(parent, site)
        middle = regions.child_middle(parent, child, site)
        messages = _chat(prompts.TASKS[dataset], prefix, middle, suffix, factor, factors[factor].description)
        records.append({"id": f"{edit['model']}#region", "mode": "region", "model": edit["model"],
                        "parent": edit["parent"], "dataset": dataset, "source": "mutation", "factor": factor,
                        "site": site.key, "kind": site.kind, "what": edit.get("what", ""),
                        "messages": messages})  # fmt: skip
    fim = 0
    for model, (dataset, code) in sorted(programs.items()):
        site = fim_site(code, random.Random(f"{seed}:{model}:fim"))
        if site is None:
            continue
        prefix, middle, suffix = regions.cut(code, site)
        messages = _chat(prompts.TASKS[dataset], prefix, middle, suffix, "", "")
        records.append({"id": f"{model}#fim", "mode": "fim", "model": f"{model}~fim", "parent": model,
                        "dataset": dataset, "source": "corpus", "factor": "", "site": site.key, "kind": "fim",
                        "messages": messages})  # fmt: skip
        fim += 1
    manifest = edit_pairs.write_pairs(out_dir, records, {
        "version": REGIONS_VERSION,
        "corpus_manifest_sha256": corpus.manifest_sha256(corpus_dir),
        "source_edits_sha256": edits_manifest["edits_sha256"],
        "region_prompt_version": prompts.REGION_PROMPT_VERSION,
        "seed": seed,
        "counts": {f: {k: counts[f][k] for k in ("edits", "no_site", "replace", "insert")} for f in counts},
        "region_examples": len(records) - fim,
        "fim_examples": fim,
        "pairs": len(records),
    })  # fmt: skip
    return RegionPairsReport(out_dir, manifest, time.monotonic() - started)
