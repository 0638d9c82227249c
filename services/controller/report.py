"""An experiment's report from its ledger (docs/method.md#what-to-measure): files a person opens and files a
program reads.

    cycles.csv       one row per cycle: valid % with its Wilson 95 % interval, best / mean (t 95 %) /
                     median first-epoch accuracy, % of valid ≥ τ, admitted, corpus size, C_t (Wilson
                     95 %), Q_t (t 95 %) and its 3-cycle smoothing, novelty medians, fine-tune loss,
                     duration, and diversity: mean J_gen of the admitted, distinct wirings among
                     the valid, archive cells the admitted fall into
    candidates.csv   one row per candidate: generation metadata, every evaluation figure, J_train, J_gen,
                     near-duplicate flags, rejection_count, decision and reason
    report.json      all of the above plus proxy reliability (the fully trained top-k, and LEMUR's own
                     epoch-1 vs epoch-5 table: SNR, observed and Theorem 8's predicted correlations)
                     and the lineage of every admitted program (delta / factor: its chain of parents
                     back to the baseline, the factor changed and the accuracy reached at each step)
    report.html      one self-contained page (archloop.views: the dashboard's templates, plotly.js
                     inlined; opens offline): the tables, the plots (valid rate, accuracy, C_t / Q_t
                     with their intervals, novelty histograms, diversity, proxy vs promoted), the
                     proxy audit and reliability as tables, the lineage and the admitted programs
    *.png            the same plots by matplotlib, for papers

C_t is the share of a cycle's generated candidates whose first-epoch accuracy reaches τ (invalid ones
count as failures); Q_t is their mean quality (invalid = 0), smoothed over 3 cycles (CT §4;
docs/method.md#what-to-measure). With the novelty pre-check on, the candidates it rejected without
training are counted apart (decided_before_training, with the evaluator-seconds that saved). Each rate
then has two denominators, both reported: the trained (valid_fraction, elite_concentration,
mean_quality: the pre-check's rejections were never trained, so neither valid nor invalid) and every
generated candidate (valid_of_generated, elite_of_generated, mean_quality_of_generated: those rejections
counted as not valid, the paper's p = N_valid / N_generated, comparable with a run without the pre-check).
The matplotlib figures are services.controller.report_plots.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

from archloop import corpus, leaderboard
from archloop.v1 import common_pb2, controller_pb2
from services.controller import archive, report_plots, selection, stats
from services.controller import config as experiment_config
from services.controller.creativity import CREATIVITY_COLUMNS, RunSoFar, creativity_columns
from services.controller.ledger import CandidateRow, Ledger
from services.controller.standing import STANDING_COLUMNS, corpus_board, standing_columns
from services.controller.states import short_name
from services.controller.summary import CycleCounts, cycle_counts

CANDIDATE_COLUMNS = (
    "candidate_id",
    "cycle",
    "idx",
    "mode",
    "factor",
    "adapter_name",
    "generation_error",
    "eval_status",
    "valid",
    "repaired",
    "raw_eval_status",
    "accuracy",
    "param_count",
    "eval_seconds",
    "eval_replica",
    "nn_jaccard_train",
    "near_dup_text_train",
    "nearest_train",
    "nn_jaccard_gen",
    "near_dup_text_gen",
    "nearest_gen",
    "structural_jaccard_train",
    "nearest_struct_train",
    "structural_jaccard_gen",
    "nearest_struct_gen",
    "topology_sha256",
    "same_topology_as",
    "precheck",
    "flops",
    "promoted_accuracy",
    "promoted_status",
    "rejection_count",
    "decision",
    "reason",
    "final_accuracy",
    "prompt_tokens",
    "completion_tokens",
    "latency_seconds",
    "prompt_sha256",
    "touched_factors",
    "entangled",
    "delta_failure_kind",
    "diff_length_chars",
    "full_length_chars",
    "parent_id",
    "context_fit",
    "engine_edit",
    "corpus_model",
)


def cycle_rows(
    ledger: Ledger, experiment_id: str, threshold: float, board: leaderboard.Leaderboard | None = None
) -> list[dict]:
    """One row per cycle: its counts, rates with intervals, novelty figures, audit and fine-tune, new
    architectures, and (with the corpus leaderboard) where its admitted programs stand."""
    rows = []
    so_far = RunSoFar()
    for cycle in ledger.cycles(experiment_id):
        candidates = ledger.candidates(experiment_id, cycle.cycle)
        counts = cycle_counts(candidates)
        duration = (cycle.completed_ms - cycle.started_ms) / 1000 if cycle.completed_ms else math.nan
        rows.append(
            {
                "cycle": cycle.cycle,
                "phase": cycle.phase,
                "adapter": cycle.adapter_name or "(base)",
                "temperature": cycle.temperature,
                "generated": counts.generated,
                "decided_before_training": counts.decided_before_training,
                "trained_for_a_later_decision": counts.trained_for_a_later_decision,
                "evaluator_seconds": counts.evaluator_seconds,
                "evaluator_seconds_saved": seconds_saved(candidates),
                **_rates(candidates, counts, threshold),
                "admitted": counts.admitted,
                "corpus_size": cycle.corpus_size_start + counts.admitted,
                **_quality(counts, threshold),
                **_novelty_columns(candidates, counts),
                **audit_columns(cycle.audit_json),
                "fine_tune_loss": cycle.fine_tune_loss if cycle.fine_tune_loss is not None else math.nan,
                "fine_tune_examples": cycle.fine_tune_examples,
                "duration_seconds": duration,
                **diversity(candidates),
                **creativity_columns(candidates, so_far),
                **standing_columns(candidates, board),
            }
        )
    for row, smooth in zip(rows, stats.smoothed([r["mean_quality"] for r in rows], 3), strict=True):
        row["mean_quality_smoothed"] = smooth
    return rows


def _rates(candidates: list[CandidateRow], counts: CycleCounts, threshold: float) -> dict:
    """Valid rate and accuracy of a cycle, with their intervals. The denominator of `valid_fraction` is
    what the evaluator decided, the trained (the novelty pre-check's rejections were never trained: neither
    valid nor invalid); `valid_of_generated` divides by every generated candidate, the pre-check's
    rejections counted as not shown valid (a lower bound, comparable with a run without the pre-check
    and with the paper's p = N_valid / N_generated). The two differ only when the pre-check decided some."""
    generated, accuracies = counts.evaluated, counts.accuracies
    p, low, high = stats.wilson_interval(len(accuracies), generated)
    of_all, of_all_low, of_all_high = stats.wilson_interval(len(accuracies), counts.generated)
    mean, mean_low, mean_high = stats.mean_t_interval(accuracies)
    # the model's own valid rate: a repaired candidate counts by its raw program's verdict
    raw_valid = sum(c.raw_valid for c in candidates)
    return {
        "valid": len(accuracies),
        "valid_fraction": p,
        "valid_ci_low": low,
        "valid_ci_high": high,
        "valid_of_generated": of_all,
        "valid_of_generated_ci_low": of_all_low,
        "valid_of_generated_ci_high": of_all_high,
        "repaired": sum(c.repaired for c in candidates),
        "raw_valid": raw_valid,
        "raw_valid_fraction": raw_valid / generated if generated else math.nan,
        "best_accuracy": max(accuracies, default=math.nan),
        "mean_accuracy": mean,
        "mean_ci_low": mean_low,
        "mean_ci_high": mean_high,
        "median_accuracy": stats.median(accuracies),
        "fraction_above_threshold": counts.above(threshold) / len(accuracies) if accuracies else math.nan,
    }


def _quality(counts: CycleCounts, threshold: float) -> dict:
    """C_t, a share of the evaluated (Wilson interval), and Q_t, a mean over them with invalid = 0
    (t interval); and both over every generated candidate (`_of_generated`: a candidate the pre-check
    decided before training counts as not valid, as in the paper's definition over N generated)."""
    generated, accuracies = counts.evaluated, counts.accuracies
    everyone = counts.generated
    _, elite_low, elite_high = stats.wilson_interval(counts.above(threshold), generated)
    _, quality_low, quality_high = stats.mean_t_interval(accuracies + [0.0] * (generated - len(accuracies)))
    return {
        "elite_concentration": stats.elite_concentration(accuracies, generated, threshold),
        "elite_ci_low": elite_low,
        "elite_ci_high": elite_high,
        "mean_quality": sum(accuracies) / generated if generated else math.nan,
        "mean_quality_ci_low": quality_low,
        "mean_quality_ci_high": quality_high,
        "elite_of_generated": stats.elite_concentration(accuracies, everyone, threshold),
        "mean_quality_of_generated": sum(accuracies) / everyone if everyone else math.nan,
    }


def _novelty_columns(candidates: list[CandidateRow], counts: CycleCounts) -> dict:
    """Near-duplicates and the median nearest-neighbour Jaccards, by text and by structure."""

    def median_of(field: str) -> float:
        return stats.median([getattr(c, field) for c in candidates if getattr(c, field) is not None])

    return {
        "near_duplicates_train": counts.near_duplicates_train,
        "near_duplicates_gen": counts.near_duplicates_generation,
        "median_j_train": median_of("nn_jaccard_train"),
        "median_j_gen": median_of("nn_jaccard_gen"),
        "median_j_struct_train": median_of("structural_jaccard_train"),
        "median_j_struct_gen": median_of("structural_jaccard_gen"),
        "structural_rejections": sum(c.reason.startswith(selection.STRUCTURAL) for c in candidates),
        "repeated_topologies": sum(bool(c.same_topology_as) for c in candidates),
    }


AUDIT_COLUMNS = ("promoted", "spearman", "kendall", "pearson", "snr", "predicted_spearman",
                 "params_spearman", "flops_spearman", "warning")  # fmt: skip


def audit_columns(audit_json: str) -> dict:
    """The cycle's proxy audit (services.controller.audit) as audit_* columns (NaN: none or undefined)."""
    audit = json.loads(audit_json) if audit_json else {}
    out = {}
    for name in AUDIT_COLUMNS:
        value = audit.get(name)
        out[f"audit_{name}"] = math.nan if value is None else (int(value) if name == "warning" else value)
    return out


def seconds_saved(candidates: list[CandidateRow]) -> float:
    """An estimate of the evaluator-seconds the novelty pre-check saved in a cycle: for each candidate
    decided before training, the evaluation time of the earlier candidate it duplicates (a near-copy
    trains about as long), or, for a corpus duplicate, the median evaluation time of the cycle's valid
    candidates, less the static screen it did get. (The measured figure is the evaluator_seconds of a
    run with the pre-check against one without: bench/novelty_precheck.py, docs/benchmarks.md.)"""
    seconds = {c.candidate_id: c.eval_seconds for c in candidates if c.valid and c.eval_seconds}
    typical = stats.median(list(seconds.values())) if seconds else 0.0
    saved = 0.0
    for c in candidates:
        if c.decided_before_training:
            saved += max(0.0, seconds.get(c.nearest_gen, typical) - (c.eval_seconds or 0.0))
    return saved


def diversity(candidates: list[CandidateRow]) -> dict:
    """How spread a cycle's programs are (issue 20's watch on diversity): the mean J_gen of the admitted
    (each one's token J to its nearest earlier valid program of the cycle, as the novelty service
    measured it; NaN without admissions), the share of distinct wiring hashes among the valid whose
    architecture was recorded (archloop.archgraph; NaN when none was), and the archive cells
    (parameter band × depth band × factor, services.controller.archive) the admitted programs fall
    into: how many, and each one's share."""
    admitted = [c for c in candidates if c.admitted]
    wired = [c.topology_sha256 for c in candidates if c.valid and c.topology_sha256]
    j_gen = [c.nn_jaccard_gen for c in admitted if c.nn_jaccard_gen is not None]
    cells = Counter(archive.cell_of(c.code, c.param_count or 0, c.factor) for c in admitted)
    return {
        "admitted_mean_j_gen": sum(j_gen) / len(j_gen) if j_gen else math.nan,
        "valid_wiring_share": len(set(wired)) / len(wired) if wired else math.nan,
        "admitted_cells": len(cells),
        "admitted_cell_shares": " ".join(
            f"{archive.cell_name(cell)}:{count / len(admitted):.2f}" for cell, count in sorted(cells.items())
        ),
    }


def candidate_rows(ledger: Ledger, experiment_id: str) -> list[dict]:
    out = []
    for c in ledger.candidates(experiment_id):
        stored = c.stored()
        row = {k: stored[k] for k in CANDIDATE_COLUMNS if k in stored}
        generation = json.loads(c.generation_json or "{}")
        for key in (
            "prompt_tokens",
            "completion_tokens",
            "latency_seconds",
            "prompt_sha256",
            "entangled",
            "delta_failure_kind",
            "diff_length_chars",
            "full_length_chars",
            "parent_id",
            "context_fit",
            "engine_edit",
            "corpus_model",
        ):
            row[key] = generation.get(key, "")
        row["touched_factors"] = " ".join(generation.get("touched_factors", []))
        out.append(row)
    return out


def lineage(ledger: Ledger, experiment_id: str) -> list[dict]:
    """Each admitted program's chain of parents, newest first: (candidate, cycle, mode, factor, accuracy)
    at every step, ending at the baseline (or at a full-mode program, which has no parent)."""
    rows = {c.candidate_id: c for c in ledger.candidates(experiment_id)}
    out = []
    for admitted in ledger.admitted(experiment_id):
        chain, seen = [], set()
        node: CandidateRow | None = admitted
        while node is not None and node.candidate_id not in seen:
            seen.add(node.candidate_id)
            parent = json.loads(node.generation_json).get("parent_id", "")
            chain.append({"candidate_id": node.candidate_id, "cycle": node.cycle, "mode": node.mode,
                          "factor": node.factor, "accuracy": node.accuracy, "parent_id": parent})  # fmt: skip
            node = rows.get(parent)
        root = chain[-1]["parent_id"] or chain[-1]["candidate_id"]
        out.append(
            {"candidate_id": admitted.candidate_id, "generations": len(chain), "root": root, "chain": chain}
        )
    return out


def proxy_reliability(ledger: Ledger, experiment_id: str, corpus_dir: Path) -> dict:
    """Theorem 8 on the fully trained top-k (when the experiment ran a final stage) and on LEMUR's stats."""
    result: dict = {}
    full = [
        (c.accuracy, c.final_accuracy) for c in ledger.admitted(experiment_id) if c.final_accuracy is not None
    ]
    if len(full) >= 3:
        proxy, final = zip(*full, strict=True)
        result["top_k"] = {**stats.theorem8(final, proxy), **stats.correlations(final, proxy)}
    table = corpus_dir / "proxy_stats.jsonl"
    if table.exists():
        stat = table.stat()
        lemur = _lemur_reliability(str(table), stat.st_mtime_ns, stat.st_size)
        if lemur:
            result["lemur"] = lemur
    return result


@functools.lru_cache(maxsize=4)
def _lemur_reliability(table: str, mtime_ns: int, size: int) -> dict:
    """Theorem 8 on LEMUR's epoch-1 vs epoch-5 table (CIFAR-10 classification), pooled and by family
    of at least 30 models; {} with fewer than 3 pairs. Cached by the file's path, mtime and size: the
    table is fixed per corpus, and the dashboard asks for the report document at every cycle event
    (computing it was 0.28 s of the 0.32 s that took on the embedded run)."""
    by_family: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in corpus.read_jsonl(Path(table)):
        if row["dataset"] != "cifar-10" or row["task"] != corpus.IMAGE_CLASSIFICATION:
            continue
        if row.get("accuracy_epoch_1") is None or row.get("accuracy_epoch_5") is None:
            continue
        by_family[row["model"].split("-")[0]].append((row["accuracy_epoch_1"], row["accuracy_epoch_5"]))
    pooled = [pair for pairs in by_family.values() for pair in pairs]
    if len(pooled) < 3:
        return {}
    proxy, final = zip(*pooled, strict=True)
    groups = {name: pairs for name, pairs in by_family.items() if len(pairs) >= 30}
    return {
        "pooled": {**stats.theorem8(final, proxy), **stats.correlations(final, proxy)},
        "families": {
            name: {
                **stats.theorem8([b for _, b in pairs], [a for a, _ in pairs]),
                **stats.correlations([b for _, b in pairs], [a for a, _ in pairs], groups=len(groups)),
            }
            for name, pairs in sorted(groups.items())
        },
    }


def summaries(rows: list[dict]) -> list[controller_pb2.CycleSummary]:
    def num(value: float) -> float:
        return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    return [
        controller_pb2.CycleSummary(
            cycle=r["cycle"],
            generated=r["generated"],
            decided_before_training=r["decided_before_training"],
            evaluator_seconds=num(r["evaluator_seconds"]),
            evaluator_seconds_saved=num(r["evaluator_seconds_saved"]),
            valid=r["valid"],
            valid_fraction=num(r["valid_fraction"]),
            valid_fraction_ci_low=num(r["valid_ci_low"]),
            valid_fraction_ci_high=num(r["valid_ci_high"]),
            valid_fraction_of_generated=num(r["valid_of_generated"]),
            elite_concentration_of_generated=num(r["elite_of_generated"]),
            mean_quality_of_generated=num(r["mean_quality_of_generated"]),
            best_accuracy=num(r["best_accuracy"]),
            mean_accuracy=num(r["mean_accuracy"]),
            mean_accuracy_ci_low=num(r["mean_ci_low"]),
            mean_accuracy_ci_high=num(r["mean_ci_high"]),
            median_accuracy=num(r["median_accuracy"]),
            fraction_above_threshold=num(r["fraction_above_threshold"]),
            admitted=r["admitted"],
            corpus_size=r["corpus_size"],
            elite_concentration=num(r["elite_concentration"]),
            mean_quality_smoothed=num(r["mean_quality_smoothed"]),
            fine_tune_final_loss=num(r["fine_tune_loss"]),
            duration_seconds=num(r["duration_seconds"]),
            repaired=r["repaired"],
            raw_valid_fraction=num(r["raw_valid_fraction"]),
            evaluations_total=r["evaluations_total"],
            best_accuracy_so_far=num(r["best_accuracy_so_far"]),
            distinct_wiring_total=r["distinct_wiring_total"],
            wiring_new_admitted=r["wiring_new_admitted"],
        )
        for r in rows
    ]


def _write_csv(path: Path, rows: list[dict], columns: list[str] | tuple[str, ...]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                    for k, v in row.items()
                }
            )


CYCLE_TABLE = [
    "cycle",
    "generated",
    "valid",
    "valid_fraction",
    "valid_ci_low",
    "valid_ci_high",
    "valid_of_generated",
    "repaired",
    "raw_valid_fraction",
    "best_accuracy",
    "mean_accuracy",
    "mean_ci_low",
    "mean_ci_high",
    "median_accuracy",
    "fraction_above_threshold",
    "admitted",
    "corpus_size",
    "elite_concentration",
    "elite_of_generated",
    "mean_quality_smoothed",
    "mean_quality_of_generated",
    "decided_before_training",
    "evaluator_seconds",
    "evaluator_seconds_saved",
    "fine_tune_loss",
    "duration_seconds",
]


def report_document(ledger: Ledger, experiment_id: str, corpus_dir: Path, candidates: bool = True) -> dict:
    """Everything the report shows, as strict JSON (NaN → None): report.json, the static report.html and
    the dashboard's experiment page all render from it (archloop.views). `candidates`: also every
    candidate's row and the admitted programs' code (the dashboard's live page does without them)."""
    row = ledger.experiment_of(experiment_id)
    config = experiment_config.from_json(row.config_json)
    rows = ledger.candidates(experiment_id)
    audits = {str(c.cycle): json.loads(c.audit_json) for c in ledger.cycles(experiment_id) if c.audit_json}
    document = {
        "experiment_id": experiment_id,
        "state": row.state.value,
        "config": json.loads(row.config_json),
        "config_sha256": row.config_sha256,
        "dataset": config.datasets[0] if config.datasets else "",
        "threshold": config.accuracy_threshold,
        "novelty_threshold": config.novelty_threshold,
        "mode": short_name(common_pb2.GenerationMode, config.generation.mode).lower(),
        # engine / corpus_sample: no language model, so no cycle fine-tunes (the report says so)
        "language_model": experiment_config.uses_language_model(config.generation),
        "cycles": cycle_rows(
            ledger, experiment_id, config.accuracy_threshold, corpus_board(corpus_dir, config.protocol)
        ),
        "proxy_reliability": proxy_reliability(ledger, experiment_id, corpus_dir),
        "proxy_audit": audits,
        "lineage": lineage(ledger, experiment_id),
        # every trained candidate's novelty figures, for the histograms (None: not measured)
        "novelty": {
            "cycle": [c.cycle for c in rows],
            **{key: [getattr(c, column) for c in rows] for key, column in NOVELTY_FIGURES.items()},
        },
        "candidates": candidate_rows(ledger, experiment_id) if candidates else [],
        "programs": {c.candidate_id: c.code for c in rows if c.admitted} if candidates else {},
    }
    return stats.finite(document)


NOVELTY_FIGURES = {"j_train": "nn_jaccard_train", "j_gen": "nn_jaccard_gen",
                   "j_struct_train": "structural_jaccard_train"}  # fmt: skip


def write_report(
    ledger: Ledger, experiment_id: str, out: Path, corpus_dir: Path
) -> tuple[list[controller_pb2.CycleSummary], list[Path]]:
    """cycles.csv, candidates.csv, report.json, report.html (one self-contained file: archloop.views)
    and the matplotlib plots in `out`; the cycle summaries and the files written."""
    from archloop import views

    out.mkdir(parents=True, exist_ok=True)
    document = report_document(ledger, experiment_id, corpus_dir)
    cycles, candidates, audits = document["cycles"], document["candidates"], document["proxy_audit"]
    files = [out / "cycles.csv", out / "candidates.csv", out / "report.json", out / "report.html"]
    _write_csv(files[0], cycles, CYCLE_CSV_COLUMNS)
    _write_csv(files[1], candidates, CANDIDATE_COLUMNS)
    files[2].write_text(json.dumps(document, indent=2, default=str, allow_nan=False) + "\n")
    files[3].write_text(views.render_report(document), encoding="utf-8")
    plottable = [{k: math.nan if v is None else v for k, v in r.items()} for r in cycles]
    plots = report_plots.plots(out, plottable, candidates, document["threshold"]) if cycles else []
    if any(a["promoted"] for a in audits.values()):
        plots.append(report_plots.audit_plot(out, audits))
    return summaries(cycles), files + plots


CYCLE_CSV_COLUMNS = [
    *CYCLE_TABLE,
    "adapter",
    "temperature",
    "near_duplicates_train",
    "near_duplicates_gen",
    "median_j_train",
    "median_j_gen",
    "median_j_struct_train",
    "median_j_struct_gen",
    "structural_rejections",
    "repeated_topologies",
    "trained_for_a_later_decision",
    *(f"audit_{name}" for name in AUDIT_COLUMNS),
    "mean_quality",
    "mean_quality_ci_low",
    "mean_quality_ci_high",
    "elite_ci_low",
    "elite_ci_high",
    "admitted_mean_j_gen",
    "valid_wiring_share",
    "admitted_cells",
    "admitted_cell_shares",
    *CREATIVITY_COLUMNS,
    *STANDING_COLUMNS,
]


Compared = list[tuple[str, controller_pb2.ExperimentConfig, list]]  # (experiment, config, cycle summaries)


def comparison_rows(items: Compared) -> list[dict]:
    """NNGPT Table 3 across experiments (ablations, modes): one row per experiment from its cycle
    summaries."""
    rows = []
    for experiment_id, config, cycles in items:
        generated = sum(s.generated - s.decided_before_training for s in cycles)
        valid = sum(s.valid for s in cycles)
        p, low, high = stats.wilson_interval(valid, generated)
        ablations = [name for name in ("no_novelty_filter", "no_accuracy_threshold", "no_iteration")
                     if getattr(config.ablations, name)]  # fmt: skip
        rows.append(
            {
                "experiment": experiment_id,
                "mode": short_name(common_pb2.GenerationMode, config.generation.mode).lower(),
                "ablations": " ".join(ablations) or "none",
                "cycles": len(cycles),
                "generated": generated,
                "valid_fraction": p,
                "valid_ci_low": low,
                "valid_ci_high": high,
                "best_accuracy": max((s.best_accuracy for s in cycles), default=math.nan),
                "last_mean_accuracy": cycles[-1].mean_accuracy if cycles else math.nan,
                "last_elite_concentration": cycles[-1].elite_concentration if cycles else math.nan,
                "admitted": sum(s.admitted for s in cycles),
            }
        )
    full = [r for r in rows if r["mode"] == "full" and r["generated"]]
    for row in rows:
        if row["mode"] == "delta" and full and full[0]["valid_fraction"] > 0:
            # docs/method.md#what-to-measure: the delta/full valid-rate ratio (Adhikari et al.: 1.41)
            row["valid_ratio_vs_full"] = row["valid_fraction"] / full[0]["valid_fraction"]
    return rows


def comparison_series(items: Compared) -> list[dict]:
    """Each experiment's cycle summaries as plain dicts (numbers as numbers), in the order given: the
    comparison's plots."""
    return [
        {"experiment": experiment_id,
         "cycles": [{f.name: getattr(s, f.name) for f in s.DESCRIPTOR.fields} for s in cycles]}
        for experiment_id, _, cycles in items
    ]  # fmt: skip


def write_comparison(items: Compared, out: Path) -> list[Path]:
    """comparison.csv and comparison.html (one self-contained page, as report.html) of the experiments'
    NNGPT Table 3; the rows are also returned by comparison_rows."""
    from archloop import views

    rows = comparison_rows(items)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    paths = [out / "comparison.csv", out / "comparison.html"]
    _write_csv(paths[0], rows, columns)
    page = views.render_comparison(stats.finite(rows), stats.finite(comparison_series(items)))
    paths[1].write_text(page, encoding="utf-8")
    return paths
