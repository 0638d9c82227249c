"""Full, delta, factor and region mode side by side on one base model: valid rates, their ratio,
entanglement, scope.

    python bench/edit_modes.py [--base-model REF] [--samples 64] [--temperature 0.5] [--corpus DIR]
        [--modes full,delta,factor,region] [--write]

Candidates are made by the generator's own engine (services.generator.engine.CandidateMaker over the
local backend: the same prompts, context-fit rule, diff application and re-prompts as the service),
`--samples` per mode with fixed seeds. Delta and factor candidates edit parents drawn (seeded) from the
base model's **held-out** corpus models (basemodel.split_by_model: it saw neither them nor edit pairs
of them) whose edit prompts fit its context; full mode asks the plain CIFAR-10 prompt. Every program is
evaluated as base_model_quality.py does (sandbox, offline digits, 1 epoch, batch 16).

Per mode: valid rate with its Wilson 95 % interval; delta's failure kinds and re-prompts; factor mode's
entanglement rate (of the programs that parse: an edit outside the chosen factor, by the factor
signatures) and how often the edit changed nothing; the exact token J of each valid edit to its parent.
The figure the issue asks for is delta valid ÷ full valid (the literature's 66–75 % vs 50.6 %: 1.41).
Region mode (services/generator/region.py): the final scope verdicts, the out-of-scope share (of all
samples: rejected after the re-samples), the sites' kinds, and of the valid edits of a wiring factor
(skip connections, attention, depth) the share whose wiring hash differs from the parent's (the
corpus's architecture.jsonl).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop import corpus, prompts  # noqa: E402
from bench.base_model_quality import _shingles, evaluate_all  # noqa: E402
from bench.report import machine, publish  # noqa: E402
from services.controller.stats import mean_t_interval, wilson_interval  # noqa: E402

MODES = ("full", "delta", "factor", "region")
WIRING_FACTORS = ("skip_connections", "attention", "depth")
UID_BASE = 52000  # sandbox uids of its own: it may run beside the evaluator's tests, which watch 61000+


def held_out_parents(
    corpus_dir: Path, maker, task: prompts.Task, count: int, seed: int
) -> list[tuple[str, str]]:
    """(model, program) of held-out corpus models whose delta and factor prompts both fit, seeded."""
    from archloop import basemodel

    examples = list(corpus.read_jsonl(corpus_dir / "examples.jsonl"))
    settings = basemodel.BaseModelSettings()
    held = sorted(
        {e["model"] for e in basemodel.split_by_model(examples, settings.holdout_share, settings.seed)[1]}
    )
    programs = corpus.training_programs(corpus_dir)
    fitting = [
        (name, programs[name])
        for name in held
        if all(maker.parent_fits(task, mode, programs[name])[0] for mode in ("delta", "factor"))
    ]
    rng = random.Random(seed)
    return [rng.choice(fitting) for _ in range(count)] if fitting else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="", help="'' = the packaged tiny model")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--corpus", type=Path, default=None, help="the model's training corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help="which modes, comma-separated")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: {args.modes!r} is not a list of {', '.join(MODES)}")

    from archloop.factors import load_factors
    from archloop.paths import corpus_dir as default_corpus
    from archloop.rewrite import canonical
    from archloop.v1 import common_pb2, generator_pb2
    from services.generator.engine import CandidateMaker
    from services.generator.local import LocalBackend
    from services.generator.plan import plan_from_request
    from services.novelty.fingerprint import exact_jaccard

    started = time.monotonic()
    corpus_dir = args.corpus or default_corpus()
    backend = LocalBackend(args.base_model, device="cpu", threads=args.threads)
    factors = load_factors()
    fim = all(backend.count_tokens(token) == 1 for token in prompts.FIM_TOKENS)
    maker = CandidateMaker(
        backend.generate, backend.name, backend.model_id, backend.batch_size, factors,
        backend.context_tokens, backend.count_tokens, backend.render, fim,
    )  # fmt: skip
    wirings = {m: r["wiring_hash"] for m, r in corpus.read_architectures(corpus_dir).items()}
    task = prompts.TASKS["cifar-10"]
    parents = held_out_parents(corpus_dir, maker, task, args.samples, args.seed)
    if not parents:
        print(f"no held-out program of {corpus_dir} fits the model's context as a parent", file=sys.stderr)
        return 2
    spec = common_pb2.TaskSpec(
        dataset="cifar10", input_shape=[1, 3, 32, 32], num_classes=10, param_budget=500_000
    )
    decoding = common_pb2.DecodingParams(
        temperature=args.temperature, top_k=50, top_p=0.9, max_new_tokens=2048
    )
    rows, everything = {}, {}
    with tempfile.TemporaryDirectory(prefix="edit-modes-") as tmp:
        for mode in modes:
            began = time.perf_counter()
            request = generator_pb2.GenerateCandidatesRequest(
                experiment_id="bench", cycle=1, task=spec, decoding=decoding, seed=args.seed + 17,
                n=args.samples,
                mode=getattr(common_pb2, f"GENERATION_MODE_{mode.upper()}"),
                parents=[] if mode == "full" else [
                    generator_pb2.ParentProgram(parent_id=name, code=code) for name, code in parents
                ],
            )  # fmt: skip
            candidates = list(maker.run(plan_from_request(request, args.samples, factors)))
            samples = []
            for candidate in candidates:
                g = candidate.generation
                samples.append({
                    "code": candidate.code, "error": candidate.generation_error, "parent": g.parent_id,
                    "factor": g.factor, "touched": list(g.touched_factors), "entangled": g.entangled,
                    "failure_kind": g.delta_failure_kind, "reprompts": g.reprompt_count,
                    "context_fit": g.context_fit, "completion_tokens": g.completion_tokens,
                    "region_site": g.region_site, "region_kind": g.region_kind, "verdict": g.region_verdict,
                })  # fmt: skip
            seconds_sampling = time.perf_counter() - began
            evaluate_all([s for s in samples if s["code"].strip()], Path(tmp) / mode, UID_BASE)
            for sample in samples:
                if not sample["code"].strip():  # no program came out (a diff that never applied)
                    sample.update(status="GENERATION_ERROR", accuracy=0.0, params=0, message=sample["error"])
            by_name = dict(parents)
            for sample in samples:
                parent = by_name.get(sample["parent"], "")
                sample["jaccard_to_parent"] = (
                    exact_jaccard(_shingles(sample["code"]), _shingles(parent))
                    if parent and sample["code"]
                    else None
                )
                try:
                    sample["unchanged"] = bool(parent) and canonical(sample["code"]) == canonical(parent)
                except SyntaxError:
                    sample["unchanged"] = False
            valid = [s for s in samples if s["status"] == "OK"]
            share, low, high = wilson_interval(len(valid), len(samples))
            parsed = [s for s in samples if s["status"] != "PARSE_ERROR" and s["code"]]
            rows[mode] = {
                "samples": len(samples),
                "valid": len(valid),
                "valid_share": share,
                "valid_ci": [low, high],
                "statuses": dict(Counter(s["status"] for s in samples).most_common()),
                "delta_failures": dict(Counter(s["failure_kind"] for s in samples if s["failure_kind"])),
                "reprompted": sum(s["reprompts"] > 0 for s in samples),
                "entangled_share_of_parsed": (
                    sum(s["entangled"] for s in parsed) / len(parsed) if mode == "factor" and parsed else None
                ),
                "unchanged": sum(s["unchanged"] for s in samples),
                "mean_jaccard_to_parent_valid": (
                    sum(s["jaccard_to_parent"] for s in valid) / len(valid)
                    if valid and mode != "full"
                    else None
                ),
                "mean_valid_accuracy": sum(s["accuracy"] for s in valid) / len(valid) if valid else None,
                "mean_valid_accuracy_ci": (
                    list(mean_t_interval([s["accuracy"] for s in valid])[1:]) if len(valid) > 1 else None
                ),
                "sampling_seconds": round(seconds_sampling, 1),
                **(_region_row(samples, valid, wirings) if mode == "region" else {}),
            }
            everything[mode] = samples
            print(json.dumps({mode: rows[mode]}), flush=True)
    ratio = (
        rows["delta"]["valid_share"] / rows["full"]["valid_share"]
        if "delta" in rows and "full" in rows and rows["full"]["valid_share"]
        else None
    )
    model = Path(args.base_model).name if args.base_model else "archloop-tiny-coder"
    start, end = f"<!-- edit-modes:{model}:start -->", f"<!-- edit-modes:{model}:end -->"
    lines = [
        start,
        f"## Edit modes: {', '.join(rows)} on {model}",
        "",
        f"`python bench/edit_modes.py {' '.join(sys.argv[1:])}` — {model}, T {args.temperature}, "
        f"{args.samples} per mode; parents: {len({p for p, _ in parents})} held-out corpus models "
        f"({machine()}, {(time.monotonic() - started) / 60:.0f} min).",
        "",
        "| mode | valid (Wilson 95 %) | statuses | delta failures | re-prompted | entangled (of parsed) | "
        "unchanged | mean J to parent (valid) | mean acc. (valid) [t 95 %] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.0%}"

    def num(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    for mode, r in rows.items():
        statuses = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        failures = ", ".join(f"{k} {v}" for k, v in r["delta_failures"].items()) or "—"
        ci = r["mean_valid_accuracy_ci"]
        interval = f" [{num(ci[0])}, {num(ci[1])}]" if ci else ""
        lines.append(
            f"| {mode} | **{pct(r['valid_share'])}** [{pct(r['valid_ci'][0])}, {pct(r['valid_ci'][1])}] | "
            f"{statuses} | {failures} | {r['reprompted']} | {pct(r['entangled_share_of_parsed'])} | "
            f"{r['unchanged']} | {num(r['mean_jaccard_to_parent_valid'])} | "
            f"{num(r['mean_valid_accuracy'])}{interval} |"
        )
    if "region" in rows:
        r = rows["region"]
        lines += [
            "",
            f"Region mode: final verdicts {r['verdicts']}; out of scope (rejected) "
            f"**{pct(r['out_of_scope_share'])}** of samples; sites {r['kinds']}; "
            "valid edits of a wiring factor that changed the wiring hash: "
            f"**{r['wiring_changed']} of {r['wiring_factor_valid']}** ({pct(r['wiring_changed_share'])}); "
            f"re-sampled {r['reprompted']}.",
        ]
    if "delta" in rows:
        shown = "—" if ratio is None else f"{ratio:.2f}"
        lines += ["", f"Delta valid ÷ full valid: **{shown}** (goal ≥ 1.4)."]
    lines.append(end)
    publish(f"edit_modes-{model}", {"model": model, "rows": rows, "ratio": ratio, "samples": everything},
            "\n".join(lines), start, end, args.write)  # fmt: skip
    return 0


def _region_row(samples: list[dict], valid: list[dict], wirings: dict[str, str]) -> dict:
    """Region mode's own figures: verdicts, out-of-scope share, site kinds, wiring changes."""
    structural = [s for s in valid if s["factor"] in WIRING_FACTORS and wirings.get(s["parent"])]
    changed = [s for s in structural if s.get("wiring_hash") and s["wiring_hash"] != wirings[s["parent"]]]
    out = sum(s["verdict"] == "out_of_scope" for s in samples)
    return {
        "verdicts": dict(Counter(s["verdict"] or "no_site" for s in samples).most_common()),
        "out_of_scope_share": out / len(samples) if samples else None,
        "kinds": dict(Counter(s["region_kind"] for s in samples if s["region_kind"]).most_common()),
        "wiring_factor_valid": len(structural),
        "wiring_changed": len(changed),
        "wiring_changed_share": len(changed) / len(structural) if structural else None,
        "valid_by_factor": dict(Counter(s["factor"] for s in valid).most_common()),
    }


if __name__ == "__main__":
    sys.exit(main())
