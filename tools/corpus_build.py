"""Building the training corpus from LEMUR (docs/method.md#corpus-and-fine-tuning, #the-lemur-wheel), and
LEMUR's proxy-reliability table.

    archloop corpus build [--out DIR]     files → image classification → contract → policy → forward →
                                          unique → pairs
    archloop corpus stats [--json]        the manifest's funnel and the stats table's summary

The funnel, like the paper's (109,913 records → 1,065 unique → 1,698 pairs):
1. every model file in the wheel (`ab/nn/nn/*.py`);
2. image classification: the model has training stats under an `img-classification_*` task;
3. contract: the LEMUR API (`supported_hyperparameters`, `Net` with its four methods), checked on the
   syntax tree by the evaluator's own check;
4. policy: the evaluator's static screen passes (a model the evaluator rejects is no lesson);
5. forward: `Net` builds for CIFAR-10 shapes and a forward pass of two images returns (2, 10) logits
   (archloop.forwardcheck; about a fifth of the files have 224-px stems that cannot run at 32 px, and a
   model that cannot run for the task it is shown with teaches the code LM to write invalid programs);
6. unique: greedy in name order, a model is dropped when it is a near-duplicate (J > 0.90, the
   novelty service's default rule and fingerprint) of one already kept;
7. examples: a chat pair per kept model and task it runs for (CIFAR-10 and MNIST user prompts,
   archloop.prompts); a model that runs at 3×32×32 but not at 1×28×28 gets only the CIFAR-10 pair.

Output (versioned by CORPUS_VERSION, deterministic for a given wheel and settings):
`examples.jsonl` (one chat pair per line), `models.jsonl` (every file and the stage it stopped at),
`proxy_stats.jsonl` (per model and run uid: accuracy at epoch 1 / 5 / 50 / last, hyperparameters),
`manifest.json` (counts, sha256 of every file, the wheel's sha256, settings). The manifest's own
sha256 identifies the corpus snapshot for the trainer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import archloop
from archloop import forwardcheck, lemur, prompts
from archloop.corpus import (
    BUDGET_STEPS,
    CORPUS_VERSION,
    CORPUS_VERSIONS,
    DATASETS,
    IMAGE_CLASSIFICATION,
    LOOP_BUDGET,
    example_records,
    stages_of,
)
from services.evaluator.screen import POLICY_V1_PATH, Policy, static_check
from services.novelty.collection import CollectionConfig
from services.novelty.index import NoveltyIndex, Submission
from services.novelty.store import EntryStore

STATS_PREFIX = "ab/nn/stat/train/"
MAX_WIDTH_SHIFT = 8  # width scaling tries divisors 2, 4, … 256
REWRITE_TABLE = Path(archloop.__file__).parent / "data" / "lemur-rewrite-v1.json.gz"


@dataclass(frozen=True)
class StatsKey:
    task: str
    dataset: str
    metric: str
    model: str


SCREEN_POLICY = {"lemur-v2": POLICY_V1_PATH, "lemur-v3": POLICY_V1_PATH}
"""The static screen each corpus version was built with: the screen is part of a version's definition
(a rebuild must give the same texts, whose manifest the packaged model is bound to). A later version
takes the evaluator's policy.yaml of its day."""


@functools.cache
def screen_policy(version: str) -> Policy:
    return Policy.load(SCREEN_POLICY[version])


def parse_stats_dir(name: str) -> StatsKey | None:
    """`img-classification_cifar-10_acc_AirNet` → its parts (dataset names use '-', never '_')."""
    parts = name.split("_", 3)
    return StatsKey(*parts) if len(parts) == 4 else None


@dataclass
class ProxyRun:
    """One training run of one model (a uid is the hash of its hyperparameters)."""

    task: str
    dataset: str
    model: str
    uid: str
    lr: float
    momentum: float
    batch: int
    dropout: float | None
    transform: str
    accuracy_by_epoch: dict[int, float] = field(default_factory=dict)

    def row(self) -> dict:
        epochs = sorted(self.accuracy_by_epoch)
        last = epochs[-1]
        return {
            "task": self.task,
            "dataset": self.dataset,
            "model": self.model,
            "uid": self.uid,
            "lr": self.lr,
            "momentum": self.momentum,
            "batch": self.batch,
            "dropout": self.dropout,
            "transform": self.transform,
            "epochs": len(epochs),
            "last_epoch": last,
            "accuracy_epoch_1": self.accuracy_by_epoch.get(1),
            "accuracy_epoch_5": self.accuracy_by_epoch.get(5),
            "accuracy_epoch_50": self.accuracy_by_epoch.get(50),
            "accuracy_last": self.accuracy_by_epoch[last],
        }


def proxy_runs(archive: zipfile.ZipFile) -> Iterator[ProxyRun]:
    """Every (model, uid) run with its per-epoch accuracy, for every task with an accuracy metric.

    Epoch files are lists of trials; the same uid across a model's epoch files is one run. A uid seen
    twice in one epoch file (a repeated trial) keeps its first record.
    """
    files: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for name in archive.namelist():
        if not name.startswith(STATS_PREFIX) or not name.endswith(".json"):
            continue
        directory, _, filename = name[len(STATS_PREFIX) :].rpartition("/")
        if filename[:-5].isdigit():
            files[directory].append((int(filename[:-5]), name))
    for directory in sorted(files):
        key = parse_stats_dir(directory)
        if key is None or key.metric != "acc":
            continue
        runs: dict[str, ProxyRun] = {}
        for epoch, name in sorted(files[directory]):
            for trial in json.loads(archive.read(name)) or []:
                uid = str(trial.get("uid", ""))
                if not uid or "accuracy" not in trial:
                    continue
                run = runs.get(uid)
                if run is None:
                    run = runs[uid] = ProxyRun(
                        task=key.task,
                        dataset=key.dataset,
                        model=key.model,
                        uid=uid,
                        lr=float(trial.get("lr", 0.0)),
                        momentum=float(trial.get("momentum", 0.0)),
                        batch=int(trial.get("batch", 0)),
                        dropout=None if trial.get("dropout") is None else float(trial["dropout"]),
                        transform=str(trial.get("transform", "")),
                    )
                run.accuracy_by_epoch.setdefault(epoch, float(trial["accuracy"]))
        yield from (runs[uid] for uid in sorted(runs))


def image_classification_models(archive: zipfile.ZipFile) -> set[str]:
    models = set()
    for name in archive.namelist():
        if name.startswith(STATS_PREFIX):
            key = parse_stats_dir(name[len(STATS_PREFIX) :].split("/", 1)[0])
            if key is not None and key.task == IMAGE_CLASSIFICATION:
                models.add(key.model)
    return models


@dataclass
class ModelOutcome:
    model: str
    stage: str  # the last stage passed ("unique" = kept)
    reason: str = ""
    code_sha256: str = ""
    parameters: int = 0  # trainable parameters built for CIFAR-10 shapes (0 when it did not build)
    datasets: dict[str, int] = field(default_factory=dict)  # task it runs for → its parameters there
    # lemur-v3 only: what the kept text is (see Rewrite); parameters / datasets then describe that text
    lazy_layers: int = 0
    width_divisor: int = 1
    final_sha256: str = ""
    source_parameters: int = 0  # the original program's at CIFAR-10 shapes


ForwardLookup = Callable[[list[tuple[str, str]]], dict[str, dict[str, forwardcheck.ForwardResult]]]


def forward_lookup(
    table_path: Path | None = forwardcheck.FORWARD_TABLE, recheck: bool = False, save: bool = False
) -> ForwardLookup:
    """A lookup {code sha256: {dataset: result}} for (model, code) pairs: from the shipped table, checking
    what it lacks (all of it with `recheck`) in worker processes; `save` writes the merged table back."""

    def lookup(pairs: list[tuple[str, str]]) -> dict[str, dict[str, forwardcheck.ForwardResult]]:
        table = {} if recheck or table_path is None else forwardcheck.load_table(table_path)
        todo = []
        for _model, code in pairs:
            sha = hashlib.sha256(code.encode()).hexdigest()
            for name in DATASETS:
                if name not in table.get(sha, {}):
                    task = prompts.TASKS[name]
                    todo.append((f"{sha}|{name}", code, task.input_shape, task.num_classes))
        todo = list({item[0]: item for item in todo}.values())
        for key, result in forwardcheck.check_many(todo).items():
            sha, name = key.split("|")
            table.setdefault(sha, {})[name] = result
        if save and table_path is not None:
            forwardcheck.save_table(table, table_path)
        return table

    return lookup


RewriteLookup = Callable[[list[tuple[str, str, str, str | None]]], dict[str, forwardcheck.ForwardResult]]


def rewrite_lookup(
    table_path: Path | None = REWRITE_TABLE, recheck: bool = False, save: bool = False
) -> RewriteLookup:
    """A lookup {key: result} for (key, dataset, code, reference-or-None) checks of rewritten texts: from
    the shipped table, running what it lacks (all of it with `recheck`) in worker processes; `save`
    writes the merged table back. Keys are `check_key`s, so one table holds both kinds of check."""

    stored = {} if recheck or table_path is None else forwardcheck.load_table(table_path)
    table = {key: per[""] for key, per in stored.items() if "" in per}
    used: dict[str, forwardcheck.ForwardResult] = {}  # what this build asked for: all a saved table holds

    def lookup(items: list[tuple[str, str, str, str | None]]) -> dict[str, forwardcheck.ForwardResult]:
        todo = {}
        for key, dataset, code, reference in items:
            if key not in table:
                task = prompts.TASKS[dataset]
                todo[key] = (key, code, task.input_shape, task.num_classes, reference)
        table.update(forwardcheck.check_many(todo.values()))
        answer = {key: table[key] for key, *_ in items}
        used.update(answer)
        if save and table_path is not None:
            forwardcheck.save_table({key: {"": result} for key, result in used.items()}, table_path)
        return answer

    return lookup


def check_key(dataset: str, code: str, reference: str | None = None) -> str:
    """The identity of a check: a forward check of `code` at `dataset`'s shapes, or (with `reference`)
    the check that `code` is the same network as `reference`."""
    parts = [dataset, code] if reference is None else [dataset, code, reference]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass
class Rewrite:
    """What lemur-v3 made of one unique LEMUR program (its provenance, kept in every example)."""

    code: str = ""  # the final text; "" when the program was dropped
    lazy_layers: int = 0  # layer calls rewritten to shape-inferring layers (0: the original's layers)
    width_divisor: int = 1  # literal output widths divided by this (1: not scaled)
    datasets: dict[str, int] = field(default_factory=dict)  # task → parameters of the final text there
    reason: str = ""  # why it was dropped


def rewrite_programs(
    programs: list[tuple[str, str, dict[str, int]]], lookup: RewriteLookup, budget: int = LOOP_BUDGET
) -> dict[str, Rewrite]:
    """{model: Rewrite} for (model, code, {task: parameters}) programs that passed the v2 funnel.

    1. canonical text, with shape-inferring layers when the lazy rewrite is proven the same network at
       CIFAR-10 shapes (same parameter count and state, same output with the same weights);
    2. a program over `budget` at CIFAR-10 shapes is width-scaled (lazy text only: an eager program's
       input sizes would need the same bookkeeping the rewrite removes): the smallest 2**k that fits and
       passes the forward check; none fits → dropped;
    3. each task's pair is kept only when the final text passes the forward check there within `budget`.
    """
    from archloop import rewrite

    main = DATASETS[0]
    lazy_of = {}
    identity: list[tuple[str, str, str, str | None]] = []
    for model, code, _ in programs:
        lazy, count = rewrite.to_lazy(code)
        lazy_of[model] = (lazy, count)
        if count:
            identity.append((check_key(main, lazy, code), main, lazy, code))
    proven = lookup(identity)

    # the canonical (or proven lazy) text at every task's shapes
    first: dict[str, tuple[str, int]] = {}
    for model, code, _ in programs:
        lazy, count = lazy_of[model]
        if count and proven[check_key(main, lazy, code)].ok:
            first[model] = (lazy, count)
        else:
            first[model] = (rewrite.canonical(code), 0)
    checked = lookup([(check_key(d, text), d, text, None) for text, _ in first.values() for d in DATASETS])

    # over budget at CIFAR-10 shapes and lazy: every width divisor, the smallest that fits is kept
    scaled: dict[str, list[tuple[int, str]]] = {}
    for model, (text, count) in first.items():
        at_main = checked[check_key(main, text)]
        if count and at_main.ok and at_main.parameters > budget:
            scaled[model] = [(k, rewrite.scale_widths(text, k)[0]) for k in range(1, MAX_WIDTH_SHIFT + 1)]
    checked.update(lookup([(check_key(main, t), main, t, None) for ts in scaled.values() for _, t in ts]))
    final: dict[str, tuple[int, str]] = {}
    for model, (text, _count) in first.items():
        for shift, candidate in [(0, text), *scaled.get(model, [])]:
            result = checked[check_key(main, candidate)]
            if result.ok and result.parameters <= budget:
                final[model] = (shift, candidate)
                break
    checked.update(lookup([(check_key(d, t), d, t, None) for _, t in final.values() for d in DATASETS[1:]]))

    out: dict[str, Rewrite] = {}
    for model, (text, count) in first.items():
        rewritten = Rewrite(lazy_layers=count)
        if model in final:
            shift, rewritten.code = final[model]
            rewritten.width_divisor = 2**shift
            for dataset in DATASETS:
                there = checked[check_key(dataset, rewritten.code)]
                if there.ok and there.parameters <= budget:
                    rewritten.datasets[dataset] = there.parameters
        else:
            at_main = checked[check_key(main, text)]
            rewritten.reason = (
                f"{main} {at_main.reason}"
                if not at_main.ok
                else f"{at_main.parameters:,} parameters > {budget:,}"
                + (" and no width scale fits" if count else " (not rewritable to shape-inferring layers)")
            )
        out[model] = rewritten
    return out


def screen_models(
    sources: Iterable[tuple[str, str]],
    image_models: set[str],
    threshold: float,
    forward: ForwardLookup | None = None,
    policy: Policy | None = None,
) -> Iterator[tuple[ModelOutcome, str]]:
    """Run each model file through the funnel; yield its outcome and source, in the sources' order.
    `policy`: the screen's (default: the one the corpus versions were built with, SCREEN_POLICY)."""

    policy = policy or screen_policy(CORPUS_VERSION)  # once: it is a YAML file
    static: list[tuple[ModelOutcome, str]] = []
    for model, code in sources:
        outcome = ModelOutcome(model, "file", code_sha256=hashlib.sha256(code.encode()).hexdigest())
        static.append((outcome, code))
        if model not in image_models:
            outcome.reason = "no image-classification stats"
            continue
        outcome.stage = "image_classification"
        # the evaluator's static funnel (one call, all three checks); the corpus versions' STAGES put the
        # contract before the policy, so a model failing both is recorded as off the contract
        check = static_check(code, policy)
        if check.syntax_error is not None:
            outcome.reason = f"does not parse: {check.syntax_error.msg}"
            continue
        if not check.contract.ok:
            outcome.reason = "; ".join(check.contract.problems)
            continue
        outcome.stage = "contract"
        if check.violations:
            first = check.violations[0]
            outcome.reason = (
                f"{len(check.violations)} policy violation(s), first: {first.rule} at line {first.line} "
                f"({first.detail})"
            )
            continue
        outcome.stage = "policy"

    results = (forward or forward_lookup())([(o.model, code) for o, code in static if o.stage == "policy"])
    index = NoveltyIndex(EntryStore(":memory:"))
    index.create_collection("corpus", CollectionConfig(near_duplicate_threshold=threshold), exist_ok=False)
    for outcome, code in static:
        if outcome.stage == "policy":
            per_task = results[outcome.code_sha256]
            main = per_task[DATASETS[0]]
            outcome.parameters = main.parameters
            outcome.datasets = {name: per_task[name].parameters for name in DATASETS if per_task[name].ok}
            if not main.ok:
                outcome.reason = f"{DATASETS[0]} {main.reason}"
            else:
                outcome.stage = "forward"
                result = index.check_and_admit("corpus", Submission(code=code, entry_id=outcome.model), [])
                if not result.admitted:
                    outcome.reason = result.reason
                else:
                    outcome.stage = "unique"
        yield outcome, code


def _provenance(outcome: ModelOutcome) -> dict:
    return {
        "source_file": f"{lemur.MODEL_PREFIX}{outcome.model}.py",
        "source_sha256": outcome.code_sha256,
        "rewritten": outcome.lazy_layers > 0,
        "lazy_layers": outcome.lazy_layers,
        "width_divisor": outcome.width_divisor,
        "source_parameters": outcome.source_parameters,
    }


def _apply_rewrites(
    kept: list[tuple[ModelOutcome, str]], lookup: RewriteLookup, threshold: float
) -> list[tuple[ModelOutcome, str]]:
    """lemur-v3's budget and distinct stages on the v2 funnel's unique models: (outcome, final text) of
    those kept, in order; the others' outcomes say why they stopped."""

    rewrites = rewrite_programs([(o.model, code, o.datasets) for o, code in kept], lookup)
    index = NoveltyIndex(EntryStore(":memory:"))
    index.create_collection("final", CollectionConfig(near_duplicate_threshold=threshold), exist_ok=False)
    out = []
    for outcome, _code in kept:
        result = rewrites[outcome.model]
        outcome.lazy_layers, outcome.width_divisor = result.lazy_layers, result.width_divisor
        outcome.source_parameters = outcome.parameters
        if not result.code or DATASETS[0] not in result.datasets:
            outcome.reason = result.reason or f"{DATASETS[0]}: the final text fails its forward check"
            continue
        outcome.stage, outcome.datasets = "budget", result.datasets
        outcome.parameters = result.datasets[DATASETS[0]]
        outcome.final_sha256 = hashlib.sha256(result.code.encode()).hexdigest()
        admitted = index.check_and_admit("final", Submission(code=result.code, entry_id=outcome.model), [])
        if not admitted.admitted:
            outcome.reason = f"final text: {admitted.reason}"
            continue
        outcome.stage = "distinct"
        out.append((outcome, result.code))
    return out


def _write_jsonl(path: Path, rows: Iterable[dict]) -> tuple[int, str]:
    digest, count = hashlib.sha256(), 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            line = json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
            handle.write(line)
            digest.update(line.encode())
            count += 1
    return count, digest.hexdigest()


@dataclass
class BuildReport:
    out_dir: Path
    manifest: dict
    seconds: float


def build_corpus(
    out_dir: Path,
    wheel: Path | None = None,
    threshold: float = 0.90,
    forward: ForwardLookup | None = None,
    version: str = CORPUS_VERSION,
    rewrites: RewriteLookup | None = None,
) -> BuildReport:
    """Build the corpus into `out_dir` (written to a temporary sibling, then renamed into place)."""
    if version not in CORPUS_VERSIONS:
        raise ValueError(f"version {version!r} is not one of {', '.join(CORPUS_VERSIONS)}")
    started = time.perf_counter()
    wheel = wheel or lemur.lemur_wheel()
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + f".building-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    stages = stages_of(version)
    funnel = dict.fromkeys(stages, 0)
    outcomes: list[ModelOutcome] = []
    examples: list[dict] = []
    with zipfile.ZipFile(wheel) as archive:
        image_models = image_classification_models(archive)
        policy = screen_policy(version)
        sources = lemur.iter_model_sources(wheel)
        screened = list(screen_models(sources, image_models, threshold, forward, policy))
        outcomes = [outcome for outcome, _ in screened]
        kept = [(outcome, code) for outcome, code in screened if outcome.stage == "unique"]
        if version == "lemur-v2":
            for outcome, code in kept:
                examples.extend(example_records(outcome.model, code, outcome.datasets))
        else:
            for outcome, code in _apply_rewrites(kept, rewrites or rewrite_lookup(), threshold):
                examples.extend(example_records(outcome.model, code, outcome.datasets, _provenance(outcome)))
        for outcome in outcomes:
            for stage in stages[: stages.index(outcome.stage) + 1]:
                funnel[stage] += 1
        files = {}
        files["examples.jsonl"] = _write_jsonl(staging / "examples.jsonl", examples)
        files["models.jsonl"] = _write_jsonl(staging / "models.jsonl", (asdict(o) for o in outcomes))
        files["proxy_stats.jsonl"] = _write_jsonl(
            staging / "proxy_stats.jsonl", (run.row() for run in proxy_runs(archive))
        )
    manifest = {
        "version": version,
        "source": {"requirement": lemur.WHEEL_REQUIREMENT, "wheel_sha256": lemur.WHEEL_SHA256},
        "settings": {
            "near_duplicate_threshold": threshold,
            "fingerprint": "novelty service defaults (k 10, 256 permutations, exact verification near τ)",
            "datasets": list(DATASETS),
            "budget_steps": list(BUDGET_STEPS),
            "forward_check": {
                "batch": 2,
                "prm": forwardcheck.PRM,
                "table_version": forwardcheck.TABLE_VERSION,
            },
            "prompt_version": prompts.PROMPT_VERSION,
            "prompt_sha256": prompts.prompt_sha256(),
            **(
                {}
                if version == "lemur-v2"
                else {
                    "rewrite": {
                        "budget": LOOP_BUDGET,
                        "max_width_divisor": 2**MAX_WIDTH_SHIFT,
                        "identity_check": "lazy text vs original at cifar-10 shapes: parameters, "
                        "state names, output bit for bit with the original's weights",
                        "canonical_text": "ast.unparse",
                    }
                }
            ),
        },
        "funnel": {"files": funnel["file"], **{s: funnel[s] for s in stages[1:]}, "examples": len(examples)},
        "files": {name: {"records": n, "sha256": sha} for name, (n, sha) in files.items()},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + f".old-{os.getpid()}")
        out_dir.rename(old)
        staging.rename(out_dir)
        for child in old.iterdir():
            child.unlink()
        old.rmdir()
    else:
        staging.rename(out_dir)
    return BuildReport(out_dir, manifest, time.perf_counter() - started)
