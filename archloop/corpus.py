"""The corpus format shared by the builder, the trainer, the base-model trainer and the controller
(docs/method.md#corpus-and-fine-tuning): a folder of `examples.jsonl` (one chat pair per line),
`models.jsonl`, `proxy_stats.jsonl` and `manifest.json`, whose sha256 identifies the snapshot.

The builder (`archloop corpus build`, tools/corpus_build.py) writes it; this module reads it and
owns what a record is (`example_records`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from archloop import prompts
from archloop.paths import CORPUS_VERSION as CORPUS_VERSION  # re-exported: the format's default version

CORPUS_VERSIONS = ("lemur-v2", "lemur-v3")
IMAGE_CLASSIFICATION = "img-classification"

STAGES_V2 = ("file", "image_classification", "contract", "policy", "forward", "unique")
# lemur-v3 adds: budget (the canonical, lazily rewritten or width-scaled text meets the loop's budget at
# the task's shapes) and distinct (no near-duplicate of a kept program, on the final text)
STAGES = (*STAGES_V2, "budget", "distinct")
# the user prompts of each kept model (docs/method.md#corpus-and-fine-tuning), the first decides
DATASETS = ("cifar-10", "mnist")
# the parameter budget of the loop's prompt (docs/method.md#the-loop), met by every v3 program
LOOP_BUDGET = 500_000


def stages_of(version: str) -> tuple[str, ...]:
    return STAGES_V2 if version == "lemur-v2" else STAGES


BUDGET_STEPS = (500_000, 2_000_000, 10_000_000, 50_000_000, 200_000_000)


def budget_for(parameters: int) -> int:
    for step in BUDGET_STEPS:
        if parameters <= step:
            return step
    return 10 ** math.ceil(math.log10(max(parameters, 1)))


def example_records(
    model: str, code: str, datasets: dict[str, int], provenance: dict | None = None
) -> list[dict]:
    """The chat pairs of one kept model, one per task it runs for (CIFAR-10 first), each prompt stating
    the budget step its answer meets; lemur-v3 records say where the text came from (`provenance`)."""
    records = []
    for name in DATASETS:
        if name not in datasets:
            continue
        task = dataclasses.replace(prompts.TASKS[name], max_parameters=budget_for(datasets[name]))
        record = {
            "id": f"{model}#{name}",
            "model": model,
            "dataset": name,
            "source": "lemur",
            "parameters": datasets[name],
            "messages": prompts.chat_messages(task, code),
        }
        if provenance is not None:
            record["provenance"] = provenance
        records.append(record)
    return records


class CorpusError(RuntimeError):
    """The corpus is missing (no manifest) or unusable (no example fits a model)."""


def manifest_path(corpus_dir: Path) -> Path:
    return Path(corpus_dir) / "manifest.json"


def edits_dir(corpus_dir: Path) -> Path:
    """Where a corpus's edit pairs (`archloop corpus edits`, tools/edit_pairs.py) go: beside it,
    `<name>-edits`."""
    return Path(corpus_dir).with_name(Path(corpus_dir).name + "-edits")


def load_manifest(corpus_dir: Path) -> dict:
    path = manifest_path(corpus_dir)
    if not path.exists():
        raise CorpusError(f"{path} is missing; run `archloop corpus build`")
    return json.loads(path.read_text())


def manifest_sha256(corpus_dir: Path) -> str:
    return hashlib.sha256(manifest_path(corpus_dir).read_bytes()).hexdigest()


ARCHITECTURE_FILE = "architecture.jsonl"  # `archloop corpus structure` (and build): not in the manifest
ARCHITECTURE_VERSION = 1  # archloop.archtrace's labelling: records of another version are not read


class MissingArchitectures(CorpusError):
    """The corpus has no architecture graphs for some of its programs."""


def architecture_records(programs: dict[str, str], architectures: dict[str, dict]) -> list[dict]:
    """The lines of architecture.jsonl: each program's architecture (archloop.archgraph.Architecture's
    dict: wiring and op hash, tokens, graph), keyed by its code's sha256."""
    return [
        {
            "model": name,
            "code_sha256": code_sha256(code),
            "version": ARCHITECTURE_VERSION,
            **architectures[name],
        }
        for name, code in programs.items()
        if architectures.get(name)
    ]


def read_architectures(corpus_dir: Path, programs: dict[str, str] | None = None) -> dict[str, dict]:
    """{model: record} of the corpus programs whose code is still the one recorded, at this labelling
    version ({} before `archloop corpus structure`); `programs`: the corpus's, when the caller has them."""
    path = Path(corpus_dir) / ARCHITECTURE_FILE
    if not path.exists():
        return {}
    programs = training_programs(corpus_dir) if programs is None else programs
    return {
        r["model"]: r
        for r in read_jsonl(path)
        if r.get("version") == ARCHITECTURE_VERSION
        and r["model"] in programs
        and code_sha256(programs[r["model"]]) == r["code_sha256"]
    }


def read_structure(corpus_dir: Path, programs: dict[str, str] | None = None) -> dict[str, list[str]]:
    """{model: architecture tokens} (the novelty service's structural channel)."""
    return {model: list(r["tokens"]) for model, r in read_architectures(corpus_dir, programs).items()}


def require_architectures(corpus_dir: Path, programs: dict[str, str] | None = None) -> dict[str, dict]:
    """read_architectures, or MissingArchitectures naming the fix when no program has one (a program the
    recorder could not run is left out; the build reports how many)."""
    found = read_architectures(corpus_dir, programs)
    if not found:
        raise MissingArchitectures(
            f"the corpus at {corpus_dir} has no architecture graphs (of this version): run `archloop corpus "
            "structure`"
        )
    return found


def code_sha256(text: str) -> str:
    """The key of a program's code in the corpus's side tables (architectures, the leaderboard)."""
    return hashlib.sha256(text.encode()).hexdigest()


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def training_programs(corpus_dir: Path) -> dict[str, str]:
    """{model: program} of the corpus's pairs (one per model: its pairs share the answer), in file order."""
    programs: dict[str, str] = {}
    for example in read_jsonl(Path(corpus_dir) / "examples.jsonl"):
        if example["model"] not in programs:
            programs[example["model"]] = prompts.extract_code(example["messages"][-1]["content"])[0]
    return programs


def proxy_summary(rows: Iterable[dict], dataset: str = "cifar-10") -> dict:
    """Counts and the epoch-1 vs epoch-5 rank correlation of one dataset's runs
    (docs/method.md#the-lemur-wheel)."""
    from scipy import stats

    runs = [r for r in rows if r["dataset"] == dataset and r["task"] == IMAGE_CLASSIFICATION]
    paired = [r for r in runs if r["accuracy_epoch_1"] is not None and r["accuracy_epoch_5"] is not None]
    summary = {
        "dataset": dataset,
        "runs": len(runs),
        "models": len({r["model"] for r in runs}),
        "runs_with_epoch_1_and_5": len(paired),
        "runs_reaching_epoch_50": sum(r["accuracy_epoch_50"] is not None for r in runs),
    }
    if len(paired) >= 3:
        rho, p_value = stats.spearmanr(
            [r["accuracy_epoch_1"] for r in paired], [r["accuracy_epoch_5"] for r in paired]
        )
        summary["spearman_epoch_1_vs_5"] = round(float(rho), 4)
        summary["spearman_p_value"] = float(p_value)
    return summary


def corpus_stats(corpus_dir: Path) -> dict:
    manifest = load_manifest(corpus_dir)
    return {
        "corpus_dir": str(corpus_dir),
        "version": manifest["version"],
        "manifest_sha256": manifest_sha256(corpus_dir),
        "funnel": manifest["funnel"],
        "proxy_stats": proxy_summary(read_jsonl(Path(corpus_dir) / "proxy_stats.jsonl")),
    }
