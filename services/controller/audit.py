"""The per-cycle proxy audit (issue 21; docs/method.md#promotion-and-the-proxy-audit): does the first-epoch
accuracy still rank the cycle's promoted candidates as their accuracy after `promotion.epochs` does?

On the promoted candidates with both accuracies: Pearson, Spearman and Kendall between the two;
Theorem 8's SNR = Var(q) / Var(q − q̂) and the Spearman ρ it predicts (selection is only as good as
σ²_arch ≫ σ²_noise); and the baselines the proxy must beat, the Spearman ρ of parameter count and of
FLOPs (one forward pass of one image) with the promoted accuracy. A warning when Spearman falls below
`promotion.min_spearman`. A pure function of ledger rows, so a report recomputes it exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from services.controller import stats
from services.controller.ledger import CandidateRow

MIN_PROMOTED = 3  # fewer: no correlation is defined


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy import stats as scipy_stats

    return float(scipy_stats.spearmanr(x, y)[0])


def proxy_audit(rows: Sequence[CandidateRow], epochs: int, min_spearman: float) -> dict:
    """The audit of one cycle from its candidates' rows (those with a promoted accuracy count), in
    candidate order; NaN (None in JSON) where a figure is undefined."""
    promoted = sorted((r for r in rows if r.promoted_accuracy is not None), key=lambda r: r.idx)
    proxy = [r.accuracy or 0.0 for r in promoted]
    longer = [r.promoted_accuracy or 0.0 for r in promoted]
    params = [float(r.param_count or 0) for r in promoted]
    flops = [float(r.flops or 0) for r in promoted]
    points = [
        [r.candidate_id, proxy[i], longer[i], r.param_count or 0, r.flops or 0]
        for i, r in enumerate(promoted)
    ]
    audit: dict = {"promoted": len(points), "epochs": epochs, "points": points}
    nan = math.nan
    figures = dict(pearson=nan, spearman=nan, kendall=nan, snr=nan, predicted_spearman=nan,
                   params_spearman=nan, flops_spearman=nan)  # fmt: skip
    if len(points) >= MIN_PROMOTED:
        with warnings.catch_warnings():  # a constant side gives NaN, which is the answer
            warnings.simplefilter("ignore")
            observed = stats.correlations(longer, proxy)
            figures.update({k: observed[k] for k in ("pearson", "spearman", "kendall")})
            theorem = stats.theorem8(longer, proxy)
            figures.update(snr=theorem["snr"], predicted_spearman=theorem["predicted_spearman"])
            figures["params_spearman"] = _spearman(params, longer)
            if all(flops):
                figures["flops_spearman"] = _spearman(flops, longer)
    audit.update(figures)
    spearman = figures["spearman"]
    if len(points) < MIN_PROMOTED:
        audit["warning"], audit["message"] = False, f"{len(points)} promoted: too few to audit"
    elif math.isnan(spearman) or spearman < min_spearman:
        audit["warning"] = True
        audit["message"] = (
            f"the first-epoch proxy no longer ranks: Spearman ρ {spearman:.3f} < {min_spearman:g} "
            f"over {len(points)} promoted candidates (epoch 1 vs epoch {epochs})"
        )
    else:
        audit["warning"] = False
        audit["message"] = f"Spearman ρ {spearman:.3f} ≥ {min_spearman:g} over {len(points)} promoted"
    for name in ("params", "flops"):
        baseline = figures[f"{name}_spearman"]
        audit[f"beats_{name}"] = None if math.isnan(baseline) or math.isnan(spearman) else spearman > baseline
    return audit


def as_json(audit: dict) -> dict:
    """The audit with NaN and infinity as None (strict JSON)."""
    return stats.finite(audit)
