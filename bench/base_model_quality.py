"""What a base model writes: valid, novel, and how far from what it was trained on.

    python bench/base_model_quality.py [--base-model REF] [--adapter DIR] [--samples 64]
        [--temperature 0.2 --temperature 0.5 --temperature 0.8] [--corpus DIR] [--write]

For each temperature: sample programs token by token with the generator's local backend and its
CIFAR-10 prompt (what the embedded experiment asks; top-k 50, top-p 0.9, up to 2,048 new tokens or
the context's end, fixed seeds), extract the code, and
- evaluate it with the evaluator (sandbox, offline digits, 1 epoch, batch 16: the embedded protocol):
  the **raw** verdict; then archloop.repair, and when a repair changed the program the **repaired**
  verdict too (raw and repaired rates are reported apart);
- novelty: max J against the corpus the model was trained on (its bound corpus: near-duplicate iff
  J > 0.90), and max J against the original LEMUR texts (all 10,482 files of the wheel);
- architecture: the wiring hash (archloop.archgraph) against the training programs': how often a valid
  program re-emits a training program's wiring with new numbers, how many wirings the valid programs
  have, and the mean nearest J_arch (WL tokens) to a training program;
- speed: completion tokens per second of sampling.

`--write` replaces the model's measured section of its card (docs/base-model.md for the tiny model,
docs/smollm2.md for SmolLM2); raw figures and every sample go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop import corpus, forwardcheck, lemur, prompts  # noqa: E402
from archloop.archgraph import token_jaccard  # noqa: E402
from archloop.repair import repair  # noqa: E402
from bench.report import machine, write_section  # noqa: E402
from tools import corpus_build  # noqa: E402

CARDS = {"": ROOT / "docs" / "base-model.md"}
DEFAULT_CARD = ROOT / "docs" / "smollm2.md"
BATCH = 8


def _slug(reference: str, adapter: str) -> str:
    name = Path(reference).name if reference else "archloop-tiny-coder"
    return name + (f"+{Path(adapter).name}" if adapter else "")


def sample_programs(backend, count: int, temperature: float, seed: int, adapter: str) -> list[dict]:
    from services.generator.backend import Decoding

    chat = prompts.chat_messages(prompts.TASKS["cifar-10"])
    decoding = Decoding(temperature=temperature, top_k=50, top_p=0.9, max_new_tokens=2048)
    out = []
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        completions = backend.generate([chat] * n, decoding, [seed + start] * n, adapter)
        for completion in completions:
            code, how = prompts.extract_code(completion.text)
            out.append(
                {
                    "completion_tokens": completion.completion_tokens,
                    "finished": completion.finished,
                    "batch_seconds": completion.latency_seconds,
                    "batch_size": n,
                    "code": code,
                    "extraction": how,
                }
            )
    return out


def evaluate_all(samples: list[dict], workdir: Path, uid_base: int = 61000) -> None:
    from services.evaluator.evaluation import Evaluator, Protocol
    from services.evaluator.sandbox import Sandbox

    sandbox = Sandbox(workdir / "jobs", uid_base=uid_base)
    sandbox.start()
    protocol = Protocol(batch_size=16, time_limit_seconds=300)
    try:
        evaluator = Evaluator(sandbox, workdir / "data")
        for i, sample in enumerate(samples):
            result = evaluator.evaluate(f"sample-{i}", sample["code"], protocol, True)
            sample["status"], sample["accuracy"], sample["params"] = (
                result.status,
                result.accuracy,
                result.param_count,
            )
            sample["message"] = result.stages[-1].message if result.stages else ""
            sample["wiring_hash"] = result.architecture.get("wiring_hash", "")
            fixed = repair(sample["code"])
            sample["repairs"] = fixed.applied
            if fixed.changed:
                again = evaluator.evaluate(f"sample-{i}-repaired", fixed.code, protocol, True)
                sample["repaired_status"], sample["repaired_accuracy"] = again.status, again.accuracy
            else:
                sample["repaired_status"], sample["repaired_accuracy"] = result.status, result.accuracy
    finally:
        sandbox.stop()


def _index(name: str, sources):
    from services.novelty.collection import CollectionConfig
    from services.novelty.index import NoveltyIndex, Submission
    from services.novelty.store import EntryStore

    index = NoveltyIndex(EntryStore(":memory:"))
    index.create_collection(name, CollectionConfig(), exist_ok=False)
    index.import_entries(name, (Submission(code, key) for key, code in sources), skip_near_duplicates=False)
    return index


def _shingles(code: str):
    from services.novelty.collection import CollectionConfig
    from services.novelty.fingerprint import fingerprint_source

    c = CollectionConfig()
    return fingerprint_source(code, c.shingle_size, c.num_permutations, c.minhash_seed).shingles


def novelty_all(samples: list[dict], trained: dict[str, str], known: dict[str, dict]) -> None:
    """J against the training programs as the novelty service decides it (LSH retrieval, then exact
    verification: a program nothing is retrieved for scores 0), the exact max J against every original
    LEMUR text by brute force (no retrieval threshold: the true nearest original), and the architecture
    against the training programs' (`known`: the corpus's architecture.jsonl records)."""
    from services.novelty.fingerprint import exact_jaccard
    from services.novelty.index import Submission

    training = _index("training", trained.items())
    originals = [_shingles(code) for _, code in lemur.iter_model_sources()]
    for sample in samples:
        code = Submission(sample["code"])
        match = training.check(code, ["training"]).matches[0]
        sample["max_jaccard"], sample["near_duplicate"] = match.text.max_jaccard, match.near_duplicate
        sample["nearest_training_program"] = match.text.nearest_entry_id
        mine = _shingles(sample["code"])
        sample["max_jaccard_lemur"] = max(exact_jaccard(mine, other) for other in originals)
    architecture_all(samples, known)


def architecture_all(samples: list[dict], known: dict[str, dict]) -> None:
    """Each valid sample's architecture (archloop.archgraph, recorded as the corpus's are: the forward-
    check workers at the prompt's shapes): whether its wiring hash is a training program's (a re-emitted
    architecture) and its nearest J_arch to one (exact Jaccard over the WL tokens)."""
    task = prompts.TASKS["cifar-10"]
    valid = {str(i): s for i, s in enumerate(samples) if s["status"] == "OK"}
    results = forwardcheck.check_many(
        ((key, s["code"], task.input_shape, task.num_classes) for key, s in valid.items()), structure=True
    )
    wirings = {record["wiring_hash"] for record in known.values()}
    token_sets = [record["tokens"] for record in known.values()]
    for sample in samples:
        for key in ("layers", "topology_seen", "topology_similarity"):  # (the layer sequence's, before)
            sample.pop(key, None)
        sample["wiring_hash"], sample["wiring_seen"], sample["architecture_similarity"] = "", None, None
    for key, result in results.items():
        sample = valid[key]
        if not result.architecture:
            continue
        sample["wiring_hash"] = result.architecture["wiring_hash"]
        sample["wiring_seen"] = sample["wiring_hash"] in wirings
        tokens = result.architecture["tokens"]
        sample["architecture_similarity"] = max((token_jaccard(tokens, t) for t in token_sets), default=0.0)


def _share(items: list[dict], predicate) -> float | None:
    return sum(bool(predicate(s)) for s in items) / len(items) if items else None


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def summarise(temperature: float, samples: list[dict]) -> dict:
    valid = [s for s in samples if s["status"] == "OK"]
    repaired_valid = [s for s in samples if s["repaired_status"] == "OK"]
    batches = {(s["batch_seconds"], s["batch_size"]) for s in samples}
    return {
        "temperature": temperature,
        "samples": len(samples),
        "finished_share": _share(samples, lambda s: s["finished"]),
        "parses_share": _share(samples, lambda s: s["status"] != "PARSE_ERROR"),
        "valid_share": len(valid) / len(samples),
        "repaired_valid_share": len(repaired_valid) / len(samples),
        "repaired_share": _share(samples, lambda s: s["repairs"]),
        "near_duplicate_share": _share(samples, lambda s: s["near_duplicate"]),
        "novel_share_of_valid": _share(valid, lambda s: not s["near_duplicate"]),
        "valid_novel_share": sum(not s["near_duplicate"] for s in valid) / len(samples),
        "mean_max_jaccard": _mean([s["max_jaccard"] for s in samples]),
        "mean_max_jaccard_valid": _mean([s["max_jaccard"] for s in valid]),
        "mean_max_jaccard_lemur_valid": _mean([s["max_jaccard_lemur"] for s in valid]),
        "wiring_recorded_valid": sum(bool(s["wiring_hash"]) for s in valid),
        "wiring_seen_share_of_valid": _share(
            [s for s in valid if s["wiring_hash"]], lambda s: s["wiring_seen"]
        ),
        "distinct_wiring_valid": len({s["wiring_hash"] for s in valid if s["wiring_hash"]}),
        "mean_architecture_similarity_valid": _mean(
            [s["architecture_similarity"] for s in valid if s["wiring_hash"]]
        ),
        "mean_valid_accuracy": _mean([s["accuracy"] for s in valid]),
        "best_accuracy": max((s["accuracy"] for s in valid), default=None),
        "mean_valid_parameters": _mean([s["params"] for s in valid]),
        "mean_completion_tokens": statistics.mean(s["completion_tokens"] for s in samples),
        "tokens_per_second": sum(s["completion_tokens"] for s in samples) / sum(t for t, _ in batches),
        "statuses": dict(Counter(s["status"] for s in samples).most_common()),
    }


def markdown(
    model: str, corpus_version: str, rows: list[dict], start: str, end: str, args: str, rescored: bool
) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.0f} %"

    def num(x: float | None, digits: int = 3) -> str:
        return "–" if x is None else f"{x:.{digits}f}"

    lines = [
        start,
        f"Measured {datetime.now(UTC):%Y-%m-%d} ({machine()}) with "
        f"`python bench/base_model_quality.py {args}`: {model}, CIFAR-10 prompt, top-k 50, top-p 0.9; "
        "evaluator: sandbox, offline digits, 1 epoch, batch 16; novelty: J > 0.90 against its training "
        f"corpus ({corpus_version})."
        + (
            " The samples and their verdicts are the saved ones; novelty and architecture scored again."
            if rescored
            else ""
        ),
        "",
        "| T | samples | parse | **raw valid** | repaired valid | valid and novel | novel share of valid "
        "| mean max J train, as the novelty service decides (valid) | mean max J LEMUR originals, exact "
        "(valid) | training wiring re-emitted (valid) | distinct wirings (valid) "
        "| nearest J_arch to training (valid) | mean / best accuracy of valid | tokens/s | statuses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        statuses = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        lines.append(
            f"| {r['temperature']} | {r['samples']} | {pct(r['parses_share'])} | **{pct(r['valid_share'])}** "
            f"| {pct(r['repaired_valid_share'])} | {pct(r['valid_novel_share'])} "
            f"| {pct(r['novel_share_of_valid'])} | {num(r['mean_max_jaccard_valid'])} "
            f"| {num(r['mean_max_jaccard_lemur_valid'])} | {pct(r['wiring_seen_share_of_valid'])} "
            f"| {r['distinct_wiring_valid']} | {num(r['mean_architecture_similarity_valid'])} "
            f"| {num(r['mean_valid_accuracy'])} / {num(r['best_accuracy'])} | {r['tokens_per_second']:.0f} "
            f"| {statuses} |"
        )
    lines += ["", f"Raw figures and every sample: `bench/results/base_model_quality-{model}.json`.", end]
    return "\n".join(lines)


def _publish(
    model: str,
    version: str,
    rows: list[dict],
    everything: list[dict],
    write: bool,
    card: Path,
    rescored: bool = False,
) -> None:
    start, end = f"<!-- base-model-quality:{model}:start -->", f"<!-- base-model-quality:{model}:end -->"
    shown = " ".join(sys.argv[1:])
    section = markdown(model, version, rows, start, end, shown, rescored)
    results = ROOT / "bench" / "results" / f"base_model_quality-{model}.json"
    results.write_text(
        json.dumps({"model": model, "version": version, "summary": rows, "samples": everything}, indent=2)
    )
    print(section)
    if write:
        write_section(section, start, end, card)


def rescore(args: argparse.Namespace) -> int:
    saved = json.loads(args.rescore.read_text())
    if args.corpus is None:
        print("--rescore needs --corpus (the model's training corpus)", file=sys.stderr)
        return 2
    trained = corpus.training_programs(args.corpus)
    known = corpus.require_architectures(args.corpus, trained)
    version = corpus.load_manifest(args.corpus)["version"]
    rows = []
    for run in saved["samples"]:
        novelty_all(run["samples"], trained, known)
        seconds = {r["temperature"]: r.get("seconds") for r in saved["summary"]}  # (its sampling's)
        rows.append(
            {**summarise(run["temperature"], run["samples"]), "seconds": seconds.get(run["temperature"])}
        )
        print(json.dumps(rows[-1]), flush=True)
    card = CARDS.get(args.base_model, DEFAULT_CARD)
    _publish(saved["model"], version, rows, saved["samples"], args.write, card, rescored=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-model", default="", help="'' = the packaged tiny model, or a base model reference"
    )
    parser.add_argument("--adapter", default="", help="a LoRA adapter folder to sample with")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--temperature", type=float, action="append")
    parser.add_argument(
        "--corpus", type=Path, default=None, help="the model's training corpus [default: build it]"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update the model's card in docs/")
    parser.add_argument(
        "--rescore",
        type=Path,
        help="a results file of this bench: recompute the novelty and architecture figures of its samples "
        "(their sampling and evaluation are kept) against --corpus",
    )
    args = parser.parse_args()
    temperatures = args.temperature or [0.2, 0.5, 0.8]
    if args.rescore:
        return rescore(args)

    from archloop import basemodel
    from services.generator.local import LocalBackend

    bound = basemodel.training_corpus(basemodel.resolve_base_model(args.base_model))
    model = _slug(args.base_model, args.adapter)
    backend = LocalBackend(args.base_model, device="cpu", threads=args.threads)
    adapter = ""
    if args.adapter:
        backend.load_adapter("bench", args.adapter)
        adapter = "bench"
        from services.trainer.lora import ADAPTER_METADATA

        meta = json.loads((Path(args.adapter) / ADAPTER_METADATA).read_text())
        if meta.get("corpus_manifest_sha256"):  # an adapter is bound to the corpus it was tuned on
            bound = {
                "version": meta.get("corpus_version", ""),
                "manifest_sha256": meta["corpus_manifest_sha256"],
            }
    rows, everything = [], []
    with tempfile.TemporaryDirectory(prefix="base-model-quality-") as tmp:
        version = (bound or {}).get("version", corpus.CORPUS_VERSION)
        corpus_dir = args.corpus or corpus_build.build_corpus(Path(tmp) / version, version=version).out_dir
        if bound and corpus.manifest_sha256(corpus_dir) != bound["manifest_sha256"]:
            print(f"{corpus_dir} is not the corpus {model} was trained on", file=sys.stderr)
            return 2
        trained = corpus.training_programs(corpus_dir)
        known = corpus.require_architectures(corpus_dir, trained)
        for i, temperature in enumerate(temperatures):
            began = time.perf_counter()
            samples = sample_programs(backend, args.samples, temperature, 1000 * (i + 1), adapter)
            evaluate_all(samples, Path(tmp))
            novelty_all(samples, trained, known)
            rows.append(summarise(temperature, samples))
            rows[-1]["seconds"] = round(time.perf_counter() - began, 1)
            everything.append({"temperature": temperature, "samples": samples})
            print(json.dumps(rows[-1]), flush=True)
    _publish(model, version, rows, everything, args.write, CARDS.get(args.base_model, DEFAULT_CARD))
    return 0


if __name__ == "__main__":
    sys.exit(main())
