"""harness.analysis.stats against hand-computed values and scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from harness.analysis import stats as S


# --- bootstrap CI / summaries -----------------------------------------------------------
def test_bootstrap_ci_contains_median_and_is_deterministic():
    rng = np.random.default_rng(7)
    x = rng.normal(10.0, 1.0, 12)
    a = S.bootstrap_ci(x, seed=123)
    b = S.bootstrap_ci(x, seed=123)
    assert a == b
    assert a[0] <= np.median(x) <= a[1]
    assert a[0] < a[1]
    # the mean's CI (continuous, unlike the median's order statistics) moves with the seed
    assert S.bootstrap_ci(x, stat=np.mean, seed=1) != S.bootstrap_ci(x, stat=np.mean, seed=2)
    assert S.bootstrap_ci(x, stat=np.mean, seed=1) == S.bootstrap_ci(x, stat=np.mean, seed=1)


def test_bootstrap_ci_small_samples_are_honest():
    assert all(math.isnan(v) for v in S.bootstrap_ci([3.0]))
    assert all(math.isnan(v) for v in S.bootstrap_ci([]))
    assert S.bootstrap_ci([1.0, 2.0]) == (1.0, 2.0)          # two values: their range
    assert S.bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    assert S.bootstrap_ci([1.0, np.nan, 3.0, 2.0])[0] >= 1.0  # NaN ignored


def test_summarize():
    s = S.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.n, s.median, s.mean) == (5, 3.0, 3.0)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert s.ci_lo <= 3.0 <= s.ci_hi
    one = S.summarize([7.0])
    assert one.n == 1 and one.median == 7.0 and math.isnan(one.ci_lo) and math.isnan(one.std)
    assert S.summarize([]).n == 0


# --- effect sizes ------------------------------------------------------------------------
def test_cliffs_delta_hand_computed():
    assert S.cliffs_delta([1, 2, 3], [4, 5, 6]) == 1.0
    assert S.cliffs_delta([4, 5, 6], [1, 2, 3]) == -1.0
    assert S.cliffs_delta([1, 2, 3], [1, 2, 3]) == 0.0
    # cand [2,3,4] vs base [1,2,3]: 6 pairs greater, 1 smaller, 2 ties of 9
    assert S.cliffs_delta([1, 2, 3], [2, 3, 4]) == pytest.approx(5 / 9)
    assert math.isnan(S.cliffs_delta([], [1]))


def test_hedges_g_hand_computed():
    # means 2 and 5, both SD 1 -> d = 3; J = 1 - 3 / (4 * 6 - 9) = 0.8
    assert S.hedges_g([1, 2, 3], [4, 5, 6]) == pytest.approx(2.4)
    assert math.isnan(S.hedges_g([1], [2, 3]))
    assert math.isnan(S.hedges_g([1, 1], [2, 2]))             # zero spread


def test_mwu_min_p():
    assert S.mwu_min_p(2, 2) == pytest.approx(1 / 3)
    assert S.mwu_min_p(3, 3) == pytest.approx(0.1)
    assert S.mwu_min_p(5, 5) == pytest.approx(2 / 252)
    # and scipy agrees for a perfect separation at 3 vs 3
    assert st.mannwhitneyu([1, 2, 3], [4, 5, 6], method="exact").pvalue == pytest.approx(0.1)


# --- A/B ---------------------------------------------------------------------------------
def test_ab_two_reps_is_insufficient_not_significant():
    r = S.ab_test([10.0, 10.1], [5.0, 5.1])
    assert r.test == "none" and math.isnan(r.p_value)
    assert r.verdict == "insufficient reps" and not r.significant
    assert r.delta_rel == pytest.approx(5.05 / 10.05 - 1)
    assert "0.33" in r.note                                  # says why: MWU could not go below p=0.33


def test_ab_welch_at_three_reps_matches_scipy():
    a, b = [10.0, 10.2, 9.9], [9.0, 9.1, 8.8]
    r = S.ab_test(a, b, higher_is_better=True, threshold=0.05)
    assert r.test == "welch"
    assert r.p_value == pytest.approx(st.ttest_ind(b, a, equal_var=False).pvalue)
    assert r.significant and r.worse and r.verdict == "regression"


def test_ab_mann_whitney_from_five_reps_matches_scipy():
    a = [10.0, 10.2, 9.9, 10.1, 10.3]
    b = [12.0, 12.5, 11.9, 12.2, 12.1]
    r = S.ab_test(a, b, higher_is_better=True)
    assert r.test == "mann-whitney"
    assert r.p_value == pytest.approx(st.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    assert r.p_value == pytest.approx(2 / 252)
    assert r.verdict == "improvement" and r.cliffs_delta == 1.0
    # the same numbers for a lower-is-better metric are a regression
    assert S.ab_test(a, b, higher_is_better=False).verdict == "regression"


def test_ab_small_but_significant_change_is_below_threshold():
    a = [100.0, 100.1, 100.2, 100.1, 100.0]
    b = [99.0, 99.1, 99.0, 99.2, 99.1]                       # -1%, clearly significant
    r = S.ab_test(a, b, threshold=0.05)
    assert r.significant and not r.worse and r.verdict == "change below threshold"


def test_ab_identical_constant_samples():
    r = S.ab_test([0.0] * 5, [0.0] * 5, higher_is_better=False)
    assert r.p_value == 1.0 and r.delta_rel == 0.0 and r.verdict == "no significant change"


def test_delta_ci_deterministic_and_brackets_delta():
    a = [10.0, 10.2, 9.9, 10.1, 10.3]
    b = [9.0, 9.2, 8.9, 9.1, 9.3]
    lo, hi = S.delta_ci(a, b, seed=5)
    assert (lo, hi) == S.delta_ci(a, b, seed=5)
    assert lo <= np.median(b) / np.median(a) - 1 <= hi < 0


# --- fairness / scaling ------------------------------------------------------------------
def test_jain_known_cases():
    assert S.jain_index([5, 5, 5, 5]) == pytest.approx(1.0)
    assert S.jain_index([1, 0, 0, 0]) == pytest.approx(0.25)        # one takes all: 1/n
    assert S.jain_index([1, 2, 3]) == pytest.approx(36 / 42)        # (1+2+3)^2 / (3 * 14)
    assert S.jain_index([7]) == 1.0
    assert math.isnan(S.jain_index([]))
    assert math.isnan(S.jain_index([0, 0]))


def test_scaling_efficiency():
    assert S.scaling_efficiency(2.0e9, 2, 1.0e9) == pytest.approx(1.0)
    assert S.scaling_efficiency(1.5e9, 2, 1.0e9) == pytest.approx(0.75)
    assert S.scaling_efficiency(1.0e9, 4, 1.0e9) == pytest.approx(0.25)
    assert math.isnan(S.scaling_efficiency(1.0, 2, 0.0))


def test_usl_exact_recovery():
    n = np.arange(1, 9)
    f = S.fit_usl(n, S.usl(n, 1.5, 0.1, 0.01))
    assert f.ok and f.n_levels == 8
    assert f.lam == pytest.approx(1.5, rel=1e-6)
    assert f.sigma == pytest.approx(0.1, rel=1e-5)
    assert f.kappa == pytest.approx(0.01, rel=1e-4)
    assert f.r2 == pytest.approx(1.0)
    assert f.peak_n == pytest.approx(math.sqrt(0.9 / 0.01))
    assert max(abs(r) for r in f.residuals) < 1e-8


def test_usl_noisy_recovery_within_tolerance():
    lam, sigma, kappa = 2.0, 0.05, 0.002
    n = np.repeat(np.arange(1, 17), 3)                       # 3 repetitions per sender count
    x = S.usl(n, lam, sigma, kappa) * (1 + np.random.default_rng(1).normal(0, 0.01, n.size))
    f = S.fit_usl(n, x)
    assert f.ok and f.r2 > 0.99
    assert f.lam == pytest.approx(lam, rel=0.02)
    assert f.sigma == pytest.approx(sigma, abs=0.01)
    assert f.kappa == pytest.approx(kappa, abs=0.0005)
    assert len(f.residuals) == n.size
    # bounds hold on linear data: sigma, kappa never negative
    g = S.fit_usl([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0])
    assert g.ok and g.sigma >= 0 and g.kappa >= 0 and g.sigma < 1e-3


def test_usl_refuses_two_levels():
    f = S.fit_usl([1, 4, 1, 4], [1.0, 2.0, 1.1, 2.1])
    assert not f.ok and math.isnan(f.sigma)
    assert "3 distinct" in f.message and "(1, 4)" in f.message


# --- normalised rates --------------------------------------------------------------------
def test_normalised_rates():
    assert S.per_million(5, 1e6) == pytest.approx(5.0)
    assert S.per_million(3, 2_000_000) == pytest.approx(1.5)
    assert math.isnan(S.per_million(1, 0))
    assert S.per_packet(1_000_000, 1000) == pytest.approx(1000.0)
    assert S.cpu_pct_per_gbit(150.0, 3e9) == pytest.approx(50.0)
    assert math.isnan(S.cpu_pct_per_gbit(150.0, 0.0))
    # 50 busy of 100 jiffies on 2 CPUs = one CPU busy = 100 %
    assert S.cpu_busy_pct(50, 100, 2) == pytest.approx(100.0)
    v = S.per_million(np.array([1.0, 2.0]), np.array([1e6, 0.0]))
    assert v[0] == pytest.approx(1.0) and math.isnan(v[1])


# --- nightly history: noise band and step detection -------------------------------------
def test_noise_band_hand_computed():
    b = S.noise_band([1.0, 2.0, 3.0, 4.0, 100.0])          # median 3, MAD 1: the outlier does not widen it
    assert (b.n, b.center, b.k) == (5, 3.0, 3.0)
    assert b.sigma == pytest.approx(1.4826)
    assert (b.lo, b.hi) == (pytest.approx(3 - 3 * 1.4826), pytest.approx(3 + 3 * 1.4826))
    assert b.contains(4.0) and not b.contains(100.0)
    assert S.noise_band([5.0, 5.0, 5.0, 6.0]).sigma == 0.0  # MAD 0: zero-width band, said so in the doc
    two = S.noise_band([1.0, 2.0])                            # no spread from two values
    assert two.center == 1.5 and math.isnan(two.sigma) and math.isnan(two.lo) and two.contains(99.0)
    assert S.noise_band([]).n == 0 and S.noise_band([np.nan, 1.0, 2.0, 3.0]).n == 3
    # a normal sample: the MAD-based sigma estimates the SD
    assert S.noise_band(np.random.default_rng(3).normal(0, 2.0, 4000)).sigma == pytest.approx(2.0, rel=0.05)


def test_detect_single_step_at_its_index():
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(10, 1, 18), rng.normal(13, 1, 12)]     # +3 sigma from index 18
    steps = S.detect_steps(x)
    assert [s.index for s in steps] == [18]
    st = steps[0]
    assert st.kind == "split" and st.z > 0 and st.p_value < 0.005
    assert (st.n_before, st.n_after) == (18, 12)
    assert st.median_after / st.median_before - 1 == pytest.approx(st.rel_change)
    assert 0.2 < st.rel_change < 0.4
    assert S.detect_steps(x) == steps                            # deterministic
    assert S.segments(len(x), steps) == [(0, 18), (18, 30)]


def test_detect_dip_that_comes_back_and_two_steps():
    rng = np.random.default_rng(1)
    dip = np.r_[rng.normal(10, 1, 10), rng.normal(7, 1, 10), rng.normal(10, 1, 10)]
    steps = S.detect_steps(dip)
    assert [s.index for s in steps] == [10, 20]
    assert steps[0].rel_change < 0 < steps[1].rel_change and {s.kind for s in steps} == {"arc"}
    stairs = np.r_[np.full(8, 100.0), np.full(8, 90.0), np.full(8, 80.0)] + rng.normal(0, 1, 24)
    assert [s.index for s in S.detect_steps(stairs)] == [8, 16]


def test_detect_no_step_in_pure_noise():
    found = [len(S.detect_steps(np.random.default_rng(100 + i).normal(5.0, 1.0, 25), n_perm=299)) for i in range(40)]
    assert sum(f > 0 for f in found) <= 2                        # false-alarm level 0.01 per series
    assert S.detect_steps(np.random.default_rng(7).normal(0, 1, 60)) == []


def test_detect_steps_in_a_long_history_stops_shuffling_early():
    """1,000 nightly runs: the arcs are ~500,000 cuts a shuffle, so a segment without a step
    stops after PERM_STOP_AFTER shuffles reach its maximum (Besag-Clifford p = h / shuffles),
    and a real step is still found where it is."""
    rng = np.random.default_rng(11)
    noise = rng.normal(5.0, 0.15, 1000)
    assert S.detect_steps(noise) == []
    stepped = noise.copy()
    stepped[640:] *= 0.9                                      # a 10 % regression from run 640 on
    assert [s.index for s in S.detect_steps(stepped)] == [640]
    # the stopped p: h / shuffles, never below PERM_STOP_AFTER / n_perm
    cut = S._best_cut(noise[:200], 3, 999, [0], True)
    assert cut is not None and cut[3] >= S.PERM_STOP_AFTER / 999


def test_detect_steps_edge_cases():
    assert S.detect_steps([]) == [] and S.detect_steps([1.0, 2.0, 3.0]) == []
    assert S.detect_steps([4.0] * 12) == []                      # constant
    # 6 values cannot reach p < alpha/2 with 3 a side (best possible 1/20): honest, no step
    assert S.detect_steps([0, 0, 0, 5, 5, 5]) == []
    # one wild run is clipped (median +- 3 MAD-sigma) and cannot make a step of its own
    y = np.random.default_rng(9).normal(0, 1, 20)
    y[7] += 25
    assert S.detect_steps(y) == []
    # NaNs are skipped, indices refer to the series as given
    x = np.r_[np.zeros(10), np.full(10, 5.0)] + np.random.default_rng(2).normal(0, 0.3, 20)
    xn = np.insert(x, [3, 15], np.nan)
    assert [s.index for s in S.detect_steps(x)] == [10]
    assert [s.index for s in S.detect_steps(xn)] == [11]
    # a real but tiny change is dropped by min_rel_change
    small = np.r_[np.full(10, 100.0), np.full(10, 101.0)] + np.random.default_rng(4).normal(0, 0.05, 20)
    assert [s.index for s in S.detect_steps(small)] == [10]
    assert S.detect_steps(small, min_rel_change=0.05) == []
    with pytest.raises(ValueError):
        S.detect_steps(x, min_segment=0)
