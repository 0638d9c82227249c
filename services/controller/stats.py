"""The statistics of the paper's reports (docs/method.md#what-to-measure, whose sources CT and NNGPT
are): confidence intervals, the loop's dynamics and proxy reliability. Plain functions over numbers;
scipy for distributions and rank correlations.

    wilson_interval        valid rate p = k/n with a Wilson 95 % interval (NNGPT Table 2)
    mean_t_interval        mean with a t-based 95 % interval
    elite_concentration    C_t = P(q ≥ τ) over a cycle's candidates (CT §4)
    smoothed               a trailing moving average (Q_t with a 3-cycle smoother)
    theorem8               SNR = Var(q) / Var(q − q̂), predicted Pearson and Spearman (CT Theorem 8)
    corollary6             exp[(1 − α)·L·ln(1/λ)] (CT Corollary 6)
    correlations           Pearson, Spearman, Kendall with p-values, Bonferroni-adjusted over groups
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float, float]:
    """(p, low, high) with low ≤ p ≤ high exactly (rounding would put the low end of 0 successes at
    2.8e-17, and a plot's error bar below zero); (0, 0, 0) for no trials."""
    if trials <= 0:
        return 0.0, 0.0, 0.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def mean_t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) with Student's t; one value gives (v, v, v); none gives NaNs."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan
    middle = n // 2
    return ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def elite_concentration(accuracies: Sequence[float], generated: int, threshold: float) -> float:
    """C_t: the share of a cycle's generated candidates whose quality reaches τ (invalid ones count as 0)."""
    if generated <= 0:
        return 0.0
    return sum(a >= threshold for a in accuracies) / generated


def smoothed(series: Sequence[float], window: int = 3) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    out = []
    for i in range(len(series)):
        part = [v for v in series[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out


def predicted_correlations(snr: float) -> tuple[float, float]:
    """Theorem 8: (ρ_P, ρ_S) predicted from the signal-to-noise ratio."""
    if snr <= 0:
        return 0.0, 0.0
    rho_p = (1 + 1 / snr) ** -0.5
    return rho_p, 6 / math.pi * math.asin(rho_p / 2)


def theorem8(full: Sequence[float], proxy: Sequence[float]) -> dict:
    """SNR = Var(q) / Var(q − q̂) of full accuracies q and proxies q̂, and the predicted correlations."""
    if len(full) != len(proxy) or len(full) < 2:
        raise ValueError("theorem8 needs two equally long sequences of at least 2 values")
    n = len(full)
    mean_q = sum(full) / n
    diffs = [q - p for q, p in zip(full, proxy, strict=True)]
    mean_d = sum(diffs) / n
    var_q = sum((q - mean_q) ** 2 for q in full) / (n - 1)
    var_d = sum((d - mean_d) ** 2 for d in diffs) / (n - 1)
    snr = math.inf if var_d == 0 else var_q / var_d
    rho_p, rho_s = (1.0, 1.0) if math.isinf(snr) else predicted_correlations(snr)
    return {"snr": snr, "predicted_pearson": rho_p, "predicted_spearman": rho_s}


def corollary6(alpha: float, length: int, lam: float) -> float:
    """exp[(1 − α)·L·ln(1/λ)]."""
    return math.exp((1 - alpha) * length * math.log(1 / lam))


def correlations(full: Sequence[float], proxy: Sequence[float], groups: int = 1) -> dict:
    """Observed Pearson, Spearman and Kendall with p-values, and Bonferroni-adjusted p-values for
    `groups` tests of each kind."""
    from scipy import stats

    if len(full) != len(proxy) or len(full) < 3:
        raise ValueError("correlations need two equally long sequences of at least 3 values")
    out: dict[str, float] = {"n": len(full)}
    for name, test in (
        ("pearson", stats.pearsonr),
        ("spearman", stats.spearmanr),
        ("kendall", stats.kendalltau),
    ):
        result = test(full, proxy)
        statistic, p_value = float(result[0]), float(result[1])
        out[name] = statistic
        out[f"{name}_p"] = p_value
        out[f"{name}_p_bonferroni"] = min(1.0, p_value * max(1, groups))
    return out


def finite(value):
    """`value` with every NaN or infinity, however deeply nested in lists and dicts, as None: strict
    JSON (reports, the ledger's audit, the dashboard's data; browsers' JSON.parse refuses NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return value
