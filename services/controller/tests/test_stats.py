"""The report's statistics against hand-computed values and scipy (docs/method.md#what-to-measure gives
the Theorem 8 and Corollary 6 check values)."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from services.controller import stats


def test_wilson_interval_by_hand() -> None:
    # 22 of 50 valid (001 cycle 1: 44 %): centre (0.44 + 1.96²/100)/(1 + 1.96²/50), half-width by hand
    p, low, high = stats.wilson_interval(22, 50)
    z = stats.Z95
    centre = (0.44 + z * z / 100) / (1 + z * z / 50)
    half = z * math.sqrt(0.44 * 0.56 / 50 + z * z / 10_000) / (1 + z * z / 50)
    assert p == 0.44 and low == pytest.approx(centre - half) and high == pytest.approx(centre + half)
    scipy_ci = sps.binomtest(22, 50).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((scipy_ci.low, scipy_ci.high))
    assert stats.wilson_interval(0, 10)[1] == 0.0 and stats.wilson_interval(10, 10)[2] == pytest.approx(1.0)
    assert stats.wilson_interval(0, 0) == (0.0, 0.0, 0.0)


def test_mean_t_interval_matches_scipy() -> None:
    values = [0.31, 0.47, 0.52, 0.18, 0.44, 0.39]
    mean, low, high = stats.mean_t_interval(values)
    expected = sps.t.interval(0.95, len(values) - 1, loc=sps.tmean(values), scale=sps.sem(values))
    assert mean == pytest.approx(sum(values) / 6) and (low, high) == pytest.approx(expected)
    assert stats.mean_t_interval([0.5]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(v) for v in stats.mean_t_interval([]))


@pytest.mark.parametrize(("snr", "rho_s"), [(0.011, 0.0997), (0.330, 0.481)])
def test_theorem8_check_values(snr: float, rho_s: float) -> None:
    assert stats.predicted_correlations(snr)[1] == pytest.approx(rho_s, abs=5e-4)


def test_theorem8_from_data_and_corollary6() -> None:
    full = [0.50, 0.62, 0.71, 0.44, 0.58, 0.66]
    proxy = [0.30, 0.41, 0.49, 0.33, 0.35, 0.47]
    result = stats.theorem8(full, proxy)
    diffs = [f - p for f, p in zip(full, proxy, strict=True)]
    assert result["snr"] == pytest.approx(sps.tvar(full) / sps.tvar(diffs))
    assert result["predicted_pearson"] == pytest.approx((1 + 1 / result["snr"]) ** -0.5)
    assert stats.corollary6(0.2, 200, 0.995) == pytest.approx(2.23, abs=0.005)


def test_correlations_match_scipy_and_bonferroni_caps_at_one() -> None:
    full = [0.50, 0.62, 0.71, 0.44, 0.58, 0.66, 0.40]
    proxy = [0.30, 0.41, 0.49, 0.33, 0.35, 0.47, 0.36]
    result = stats.correlations(full, proxy, groups=4)
    assert result["spearman"] == pytest.approx(sps.spearmanr(full, proxy)[0])
    assert result["kendall_p"] == pytest.approx(sps.kendalltau(full, proxy)[1])
    assert result["pearson_p_bonferroni"] == pytest.approx(min(1.0, 4 * sps.pearsonr(full, proxy)[1]))
    with pytest.raises(ValueError):
        stats.correlations([1.0, 2.0], [1.0, 2.0])


def test_elite_concentration_and_the_smoother() -> None:
    assert stats.elite_concentration([0.5, 0.3, 0.45], generated=6, threshold=0.4) == pytest.approx(2 / 6)
    assert stats.smoothed([0.1, 0.4, 0.7, 1.0]) == pytest.approx([0.1, 0.25, 0.4, 0.7])
    assert stats.median([3.0, 1.0, 2.0, 4.0]) == 2.5


def test_wilson_interval_holds_its_estimate_exactly_at_the_ends() -> None:
    for trials in range(1, 300):
        for successes in (0, trials):
            p, low, high = stats.wilson_interval(successes, trials)
            assert low <= p <= high and low >= 0.0 and high <= 1.0
    assert stats.wilson_interval(0, 12)[1] == 0.0  # not 2.8e-17: a report's error bar must not go below 0
    assert stats.wilson_interval(60, 60)[2] == 1.0
