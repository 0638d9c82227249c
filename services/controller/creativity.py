"""What the loop creates, per cycle, at the level of the architecture (issue 34; docs/method.md#architecture-
novelty): the columns the report's cycle rows carry.

A valid candidate is **wiring-new** when the filter found no program with its wiring hash
(archloop.archgraph) among the corpus, the candidates admitted before it and the earlier valid
candidates of its cycle (`wiring_known_as` is empty); only candidates whose architecture was recorded
count (architecture_novelty off records none). With require and the novelty pre-check, a candidate whose
forward-only run showed a known wiring is decided before training: it counts with the valid ones here
(its forward pass ran; not wiring-new), though it was never trained.

    wiring_recorded            valid candidates with a recorded wiring hash (and those decided before
                               training by their known wiring)
    wiring_new_valid           of those, wiring-new (share and Wilson 95 % interval)
    wiring_new_admitted        admitted and wiring-new (share of the admitted with recorded wiring,
                               and its interval)
    distinct_wiring_total      distinct wiring hashes among the valid candidates so far (the run)
    evaluations_total          trained candidates so far (the x axis of the two curves)
    best_accuracy_so_far       the best first-epoch accuracy of a valid candidate so far
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from services.controller import stats
from services.controller.ledger import CandidateRow

CREATIVITY_COLUMNS = (
    "wiring_recorded", "wiring_new_valid", "wiring_new_valid_share", "wiring_new_valid_ci_low",
    "wiring_new_valid_ci_high", "wiring_new_admitted", "wiring_new_admitted_share",
    "wiring_new_admitted_ci_low", "wiring_new_admitted_ci_high", "distinct_wiring_total",
    "evaluations_total", "best_accuracy_so_far",
)  # fmt: skip


@dataclass
class RunSoFar:
    """What the cycles before carry into the next (cumulative curves)."""

    wiring: set[str] = field(default_factory=set)
    evaluations: int = 0
    best: float = math.nan


def creativity_columns(candidates: list[CandidateRow], so_far: RunSoFar) -> dict:
    """The cycle's columns; `so_far` is updated with the cycle's candidates."""
    recorded = [c for c in candidates if c.topology_sha256 and (c.valid or c.decided_before_training)]
    new = [c for c in recorded if not c.wiring_known_as]
    admitted = [c for c in recorded if c.admitted]
    new_admitted = [c for c in admitted if not c.wiring_known_as]
    share, low, high = _share(len(new), len(recorded))
    admitted_share, admitted_low, admitted_high = _share(len(new_admitted), len(admitted))
    so_far.wiring.update(c.topology_sha256 for c in recorded)
    so_far.evaluations += sum(c.valid is not None and c.eval_status != "GENERATION_ERROR" for c in candidates)
    accuracies = [c.accuracy for c in candidates if c.valid and c.accuracy is not None]
    if accuracies:
        so_far.best = max(accuracies) if math.isnan(so_far.best) else max(so_far.best, *accuracies)
    return {
        "wiring_recorded": len(recorded),
        "wiring_new_valid": len(new),
        "wiring_new_valid_share": share,
        "wiring_new_valid_ci_low": low,
        "wiring_new_valid_ci_high": high,
        "wiring_new_admitted": len(new_admitted),
        "wiring_new_admitted_share": admitted_share,
        "wiring_new_admitted_ci_low": admitted_low,
        "wiring_new_admitted_ci_high": admitted_high,
        "distinct_wiring_total": len(so_far.wiring),
        "evaluations_total": so_far.evaluations,
        "best_accuracy_so_far": so_far.best,
    }


def _share(successes: int, trials: int) -> tuple[float, float, float]:
    """A Wilson share and interval; NaNs when there is nothing to share."""
    return stats.wilson_interval(successes, trials) if trials else (math.nan, math.nan, math.nan)


def share_errorbar(ax, rows: list[dict], key: str, low: str, high: str) -> None:
    """A share per cycle in %, with its interval as asymmetric error bars (the report's valid rate too)."""
    ax.errorbar(
        [r["cycle"] for r in rows],
        [r[key] * 100 for r in rows],
        yerr=[[(r[key] - r[low]) * 100 for r in rows], [(r[high] - r[key]) * 100 for r in rows]],
        marker="o",
        capsize=3,
    )


def creativity_figure(rows: list[dict]):  # -> matplotlib Figure
    """Left: the wiring-new share of the valid per cycle (Wilson 95 %); right: distinct wiring hashes
    and the best accuracy so far against evaluations (the run's creativity and search curves)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    shown = [r for r in rows if r["wiring_recorded"]]
    share_errorbar(
        left, shown, "wiring_new_valid_share", "wiring_new_valid_ci_low", "wiring_new_valid_ci_high"
    )
    left.set(xlabel="cycle", ylabel="wiring-new % of valid", title="New architectures (Wilson 95 %)",
             ylim=(0, 100), xticks=[r["cycle"] for r in shown])  # fmt: skip
    evaluations = [r["evaluations_total"] for r in rows]
    right.plot(evaluations, [r["distinct_wiring_total"] for r in rows], marker="o", label="distinct wiring")
    right.set(xlabel="evaluations", ylabel="distinct wiring hashes", title="Search progress")
    best = right.twinx()
    best.plot(evaluations, [r["best_accuracy_so_far"] for r in rows], marker="s", color="tab:orange",
              label="best accuracy so far")  # fmt: skip
    best.set(ylabel="best accuracy so far")
    handles = right.get_lines() + best.get_lines()
    right.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize="small")
    return fig
