"""Statistics over repetitions: pure functions of numbers, no I/O, no pandas required.

Conventions
-----------
* Every resampling function takes a ``seed`` and gives the same answer for the same seed.
* Too few repetitions are reported as such, never papered over with a number that looks
  like a result: ``bootstrap_ci`` of one value is (nan, nan); ``ab_test`` below three
  repetitions on either side gives ``test="none"`` and ``verdict="insufficient reps"``.

A/B test choice (``ab_test``)
-----------------------------
* n >= 5 on both sides: two-sided Mann-Whitney U (scipy, exact when there are no ties).
  It assumes nothing about the distribution of a benchmark's repetitions.
* 3 <= n < 5 on either side: Welch's t-test. Mann-Whitney cannot reach p < 0.05 there or
  barely can: its smallest attainable two-sided p is 2 / C(n1 + n2, n1), i.e. 0.33 at 2 vs 2,
  0.10 at 3 vs 3, 0.057 at 3 vs 4, 0.029 at 4 vs 4. Welch assumes roughly normal
  repetitions, which throughput of a fixed configuration usually is; the result says so.
* n < 3 on either side (n = 2 included): no test. With two values a variance estimate has one
  degree of freedom and any p-value would be noise presented as evidence, so the verdict is
  "insufficient reps" and only the medians and the relative delta are reported.
Effect sizes: Cliff's delta (ordinal, pairs with Mann-Whitney) and Hedges' g (standardised
mean difference with the small-sample correction).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

USER_HZ = 100
DEFAULT_SEED = 20261123
N_BOOT = 4000
# below MIN_REPS_TEST on either side: no significance test at all (the same floor as the runner's
# adaptive repetitions); the Student-t CI of a mean is harness.counters.confidence's, one rule
from harness.counters.confidence import MIN_REPS_TEST, t_ci_halfwidth, t_ci_rel_pct  # noqa: E402,F401
MIN_REPS_MWU = 5       # from this on both sides: Mann-Whitney U instead of Welch


def _arr(values: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    return a[~np.isnan(a)]


# ---------------------------------------------------------------------------------------
# Location and confidence
# ---------------------------------------------------------------------------------------
def bootstrap_ci(values: Iterable[float], stat: Callable = np.median, conf: float = 0.95,
                 n_boot: int = N_BOOT, seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat`` (default: the median).

    NaNs are ignored. One value (or none) gives (nan, nan): there is nothing to resample.
    With two values the interval is their range, which is all two values can say.
    Deterministic for a given seed.
    """
    a = _arr(values)
    if a.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    boot = stat(a[idx], axis=1)
    lo, hi = np.quantile(boot, [(1 - conf) / 2, 1 - (1 - conf) / 2])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    ci_lo: float
    ci_hi: float
    mean: float
    std: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(values: Iterable[float], conf: float = 0.95, seed: int = DEFAULT_SEED) -> Summary:
    """Median with a bootstrap CI over repetitions (NaNs dropped)."""
    a = _arr(values)
    if a.size == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    lo, hi = bootstrap_ci(a, conf=conf, seed=seed)
    return Summary(int(a.size), float(np.median(a)), lo, hi, float(a.mean()),
                   float(a.std(ddof=1)) if a.size > 1 else math.nan)


# ---------------------------------------------------------------------------------------
# Effect sizes
# ---------------------------------------------------------------------------------------
def cliffs_delta(base: Iterable[float], cand: Iterable[float]) -> float:
    """P(cand > base) - P(cand < base) over all pairs, in [-1, 1]; nan if a side is empty."""
    a, b = _arr(base), _arr(cand)
    if a.size == 0 or b.size == 0:
        return math.nan
    diff = b[:, None] - a[None, :]
    return float((np.sign(diff)).mean())


def hedges_g(base: Iterable[float], cand: Iterable[float]) -> float:
    """(mean(cand) - mean(base)) / pooled SD, times the small-sample correction
    J = 1 - 3 / (4 (n1 + n2) - 9). nan with fewer than 2 values a side or zero spread."""
    a, b = _arr(base), _arr(cand)
    n1, n2 = a.size, b.size
    if n1 < 2 or n2 < 2:
        return math.nan
    sp = math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    if sp == 0:
        return math.nan
    j = 1 - 3 / (4 * (n1 + n2) - 9)
    return float((b.mean() - a.mean()) / sp * j)


def mwu_min_p(n1: int, n2: int) -> float:
    """Smallest two-sided p an exact Mann-Whitney U test can give for sample sizes n1, n2."""
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2 / math.comb(n1 + n2, n1))


# ---------------------------------------------------------------------------------------
# A/B comparison
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ABResult:
    n_base: int
    n_cand: int
    median_base: float
    median_cand: float
    delta_rel: float          # median(cand) / median(base) - 1
    ci_lo: float              # bootstrap CI of delta_rel (nan below 2 reps a side)
    ci_hi: float
    test: str                 # "mann-whitney" | "welch" | "none"
    p_value: float
    cliffs_delta: float
    hedges_g: float
    significant: bool
    worse: bool               # delta in the bad direction by more than the threshold
    verdict: str              # "regression" | "improvement" | "no significant change" |
                              # "change below threshold" | "insufficient reps"
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _rel(cand: float, base: float) -> float:
    if base == 0:
        return 0.0 if cand == 0 else math.copysign(math.inf, cand)
    return cand / base - 1


def delta_ci(base: Iterable[float], cand: Iterable[float], conf: float = 0.95, n_boot: int = N_BOOT,
             seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Bootstrap CI of median(cand)/median(base) - 1, each side resampled on its own."""
    a, b = _arr(base), _arr(cand)
    if a.size < 2 or b.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, size=(n_boot, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, size=(n_boot, b.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(ma == 0, np.where(mb == 0, 0.0, np.sign(mb) * np.inf), mb / ma - 1)
        # sorted order statistics, not interpolation: +-inf (a zero baseline) stays inf, not nan
        lo, hi = np.quantile(d, [(1 - conf) / 2, 1 - (1 - conf) / 2], method="inverted_cdf")
    return (float(lo), float(hi))


def ab_test(base: Sequence[float], cand: Sequence[float], higher_is_better: bool = True,
            threshold: float = 0.05, alpha: float = 0.05, seed: int = DEFAULT_SEED) -> ABResult:
    """Compare repetitions of one metric of one cell between a baseline and a candidate.

    ``significant`` means p < alpha with the test chosen as described in the module doc.
    ``worse`` means the relative median delta goes the bad way by more than ``threshold``.
    A regression is both; an improvement the mirror image.
    """
    from scipy import stats as st

    a, b = _arr(base), _arr(cand)
    n1, n2 = int(a.size), int(b.size)
    med_a = float(np.median(a)) if n1 else math.nan
    med_b = float(np.median(b)) if n2 else math.nan
    d = _rel(med_b, med_a) if n1 and n2 else math.nan
    lo, hi = delta_ci(a, b, seed=seed)
    cd, g = cliffs_delta(a, b), hedges_g(a, b)
    bad = (-d if higher_is_better else d) if not math.isnan(d) else math.nan
    worse = bool(not math.isnan(bad) and bad > threshold)
    better = bool(not math.isnan(bad) and -bad > threshold)
    note = ""
    if min(n1, n2) < MIN_REPS_TEST:
        test, p = "none", math.nan
        note = (f"n={n1} vs {n2}: no significance test below {MIN_REPS_TEST} repetitions a side "
                f"(Mann-Whitney could not go below p={mwu_min_p(n1, n2):.2g})")
    elif min(n1, n2) >= MIN_REPS_MWU:
        test = "mann-whitney"
        if np.all(a == a[0]) and np.all(b == a[0]):
            p = 1.0
        else:
            p = float(st.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    else:
        test = "welch"
        va, vb = a.var(ddof=1), b.var(ddof=1)
        if va == 0 and vb == 0:
            p = 1.0 if med_a == med_b else math.nan
            if math.isnan(p):
                note = "every repetition identical within each side but different between: no spread to test"
        else:
            p = float(st.ttest_ind(b, a, equal_var=False).pvalue)
    if test == "none":      # 1 vs 1 always gives +-1: not an effect size worth printing
        cd, g = math.nan, math.nan
    significant = bool(not math.isnan(p) and p < alpha)
    if test == "none":
        verdict = "insufficient reps"
    elif significant and worse:
        verdict = "regression"
    elif significant and better:
        verdict = "improvement"
    elif significant:
        verdict = "change below threshold"
    else:
        verdict = "no significant change"
    return ABResult(n1, n2, med_a, med_b, d, lo, hi, test, p, cd, g, significant, worse, verdict, note)


# ---------------------------------------------------------------------------------------
# Fairness and scaling
# ---------------------------------------------------------------------------------------
def jain_index(x: Iterable[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1 = all equal, 1/n = one takes all.
    nan for no values or all zero."""
    a = _arr(x)
    if a.size == 0:
        return math.nan
    s2 = float((a ** 2).sum())
    if s2 == 0:
        return math.nan
    return float(a.sum() ** 2 / (a.size * s2))


def jain_index_by(df: pd.DataFrame, by: list[str], col: str) -> pd.Series:
    """``jain_index`` of ``df[col]`` per group of ``by`` (the same formula, vectorised: a history
    holds tens of thousands of cell runs)."""
    x = df[col].astype(float)
    d = pd.DataFrame({"n": x.notna().astype(int), "s": x, "s2": x ** 2}).set_axis(df.index)
    g = pd.concat([df[by], d], axis=1).groupby(by, sort=True)[["n", "s", "s2"]].sum(min_count=0)
    out = g.s ** 2 / (g.n * g.s2)
    return out.where((g.n > 0) & (g.s2 > 0)).astype(float)


def scaling_efficiency(multi: float, queues: int, single: float) -> float:
    """multi-queue throughput / (queues x single-queue throughput): 1 = perfect scaling."""
    if not queues or not single or math.isnan(single) or math.isnan(multi):
        return math.nan
    return float(multi / (queues * single))


def usl(n, lam: float, sigma: float, kappa: float):
    """Universal Scalability Law X(N) = lam N / (1 + sigma (N - 1) + kappa N (N - 1))."""
    n = np.asarray(n, dtype=float)
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


@dataclass(frozen=True)
class USLFit:
    ok: bool
    lam: float        # throughput of one sender (the fit's X(1))
    sigma: float      # contention: serialised fraction (a shared lock, one queue)
    kappa: float      # coherency: cross-talk that grows with N^2 (cache-line bouncing)
    r2: float
    residuals: tuple[float, ...]
    n_points: int
    n_levels: int
    peak_n: float     # N of maximum throughput, sqrt((1 - sigma) / kappa); inf if kappa == 0
    message: str = ""

    def predict(self, n):
        return usl(n, self.lam, self.sigma, self.kappa)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["residuals"] = list(self.residuals)
        return d


def fit_usl(n: Sequence[float], x: Sequence[float]) -> USLFit:
    """Least-squares USL fit of throughput ``x`` at concurrency ``n`` (repetitions may repeat
    an N), with lam > 0, sigma >= 0, kappa >= 0. Needs at least 3 distinct N: with two
    levels the three parameters are not identified, and the result says so (ok=False)."""
    from scipy.optimize import curve_fit

    n_a = np.asarray(n, dtype=float)
    x_a = np.asarray(x, dtype=float)
    keep = ~(np.isnan(n_a) | np.isnan(x_a))
    n_a, x_a = n_a[keep], x_a[keep]
    levels = np.unique(n_a)
    nan_fit = USLFit(False, math.nan, math.nan, math.nan, math.nan, (), int(n_a.size), int(levels.size), math.nan)
    if levels.size < 3:
        return USLFit(**{**nan_fit.as_dict(), "residuals": (),
                         "message": f"needs >= 3 distinct sender counts, have {levels.size} "
                                    f"({', '.join(str(int(v)) for v in levels)})"})
    one = x_a[n_a == levels.min()]
    lam0 = float(np.median(one) / levels.min()) if one.size else float(np.median(x_a / n_a))
    lam0 = max(lam0, 1e-12)
    import warnings
    from scipy.optimize import OptimizeWarning
    try:
        # only the covariance is unknown with 3 sender counts and 3 parameters; the fit is judged by R2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, _ = curve_fit(usl, n_a, x_a, p0=[lam0, 0.01, 0.0001],
                                bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, np.inf]), maxfev=20000)
    except (RuntimeError, ValueError) as e:
        return USLFit(**{**nan_fit.as_dict(), "residuals": (), "message": f"fit failed: {e}"})
    lam, sigma, kappa = (float(v) for v in popt)
    pred = usl(n_a, lam, sigma, kappa)
    res = x_a - pred
    ss_res = float((res ** 2).sum())
    ss_tot = float(((x_a - x_a.mean()) ** 2).sum())
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else math.nan)
    peak = math.sqrt((1 - sigma) / kappa) if kappa > 0 and sigma < 1 else math.inf
    return USLFit(True, lam, sigma, kappa, float(r2), tuple(float(v) for v in res), int(n_a.size),
                  int(levels.size), peak)


# ---------------------------------------------------------------------------------------
# Normalised rates
# ---------------------------------------------------------------------------------------
# ratios: one rule each, in harness.counters.counting (the runner's validity uses them too)
from harness.counters.counting import _ratio, cpu_busy_pct, cpu_pct_per_gbit, per_million, per_packet  # noqa: E402,F401


# ---------------------------------------------------------------------------------------
# Nightly history: noise band and step detection
# ---------------------------------------------------------------------------------------
MAD_TO_SIGMA = 1.4826      # sigma of a normal distribution = 1.4826 x its median absolute deviation


@dataclass(frozen=True)
class NoiseBand:
    n: int
    center: float      # median
    sigma: float       # 1.4826 x MAD: a standard deviation estimate one outlier cannot inflate
    lo: float          # center - k sigma
    hi: float          # center + k sigma
    k: float

    def contains(self, v: float) -> bool:
        return bool(self.lo <= v <= self.hi) if not math.isnan(self.lo) else True

    def as_dict(self) -> dict:
        return asdict(self)


def noise_band(values: Iterable[float], k: float = 3.0) -> NoiseBand:
    """Median +- k x (1.4826 x MAD) of ``values`` (NaNs dropped).

    Below 3 values there is no spread to estimate: sigma, lo and hi are nan (the center is
    still the median). A MAD of 0 (more than half the values identical, e.g. a counter that is
    0 in most runs) gives a zero-width band: then every other value lies outside it, which is
    what such a series says."""
    a = _arr(values)
    if a.size == 0:
        return NoiseBand(0, math.nan, math.nan, math.nan, math.nan, k)
    med = float(np.median(a))
    if a.size < 3:
        return NoiseBand(int(a.size), med, math.nan, math.nan, math.nan, k)
    sigma = float(MAD_TO_SIGMA * np.median(np.abs(a - med)))
    return NoiseBand(int(a.size), med, sigma, med - k * sigma, med + k * sigma, k)


@dataclass(frozen=True)
class Step:
    index: int            # position (in the series as given) of the first value of the new level
    p_value: float        # permutation p of the segmentation test that found this step
    z: float              # standardised level difference of that test (+: the level went up here)
    median_before: float  # medians of the final segments either side of the step
    median_after: float
    rel_change: float     # median_after / median_before - 1 (inf/nan when median_before is 0)
    n_before: int
    n_after: int
    kind: str             # "split" (one level to another) | "arc" (a stretch at another level that ends)

    def as_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=16)     # every configuration of a history has the same number of runs
def _arc_pairs(n: int, min_segment: int, single_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j), 0 <= i < j <= n, cutting [0, n) into [0, i) [i, j) [j, n) where each
    non-empty piece has at least ``min_segment`` values: i = 0 (or j = n) is a single split,
    otherwise the middle piece is a stretch at another level that comes back. ``single_only``:
    the single splits (i = 0) alone."""
    ii, jj = [], []
    for i in range(0, 1 if single_only else n - min_segment + 1):
        if 0 < i < min_segment:
            continue
        for j in range(i + min_segment, n + 1):
            if (i == 0 and j == n) or (0 < n - j < min_segment):
                continue
            ii.append(i)
            jj.append(j)
    ii_a, jj_a = np.asarray(ii, dtype=int), np.asarray(jj, dtype=int)
    ii_a.flags.writeable = jj_a.flags.writeable = False      # shared by the cache
    return ii_a, jj_a


def _arc_stat(cs: np.ndarray, ii: np.ndarray, jj: np.ndarray, n: int) -> np.ndarray:
    """mean inside [i, j) - mean of the rest, over sqrt(1/m + 1/(n - m)), for every pair; ``cs``
    is the cumulative sum with a leading 0 (2-D: one row per permutation). Dividing by the
    segment's SD (the same for every permutation) makes it the two-sample t of CBS."""
    m = jj - ii
    ins = cs[..., jj] - cs[..., ii]
    rest = cs[..., -1:] - ins
    return (ins / m - rest / (n - m)) / np.sqrt(1.0 / m + 1.0 / (n - m))


def _winsorize(x: np.ndarray, k: float = 3.0) -> np.ndarray:
    """Clip to median +- k x 1.4826 MAD: one wild run cannot fake (or hide) a level."""
    med = float(np.median(x))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(x - med)))
    return np.clip(x, med - k * sigma, med + k * sigma) if sigma > 0 else x


PERM_STOP_AFTER = 20     # shuffles at or above the observed maximum after which p is clearly large


def _best_cut(x: np.ndarray, min_segment: int, n_perm: int, seed, single_only: bool
              ) -> tuple[int, int, float, float] | None:
    """(i, j, t, p): the cut with the largest |statistic| and its permutation p (the same maximum
    over every cut of each shuffled segment). None: too short to cut, or constant."""
    n = x.size
    if n < 2 * min_segment:
        return None
    xw = _winsorize(x)
    sd = float(np.std(xw, ddof=1))
    if sd == 0:
        return None
    ii, jj = _arc_pairs(n, min_segment, single_only)
    z = _arc_stat(np.r_[0.0, np.cumsum(xw)], ii, jj, n)
    best = int(np.argmax(np.abs(z)))
    obs = float(abs(z[best]))
    rng = np.random.default_rng(seed)
    exceed = done = 0
    chunk = max(1, min(PERM_STOP_AFTER, 2_000_000 // max(1, ii.size)))
    while done < n_perm:
        b = min(chunk, n_perm - done)
        xp = xw[np.argsort(rng.random((b, n)), axis=1)]
        cs = np.concatenate([np.zeros((b, 1)), np.cumsum(xp, axis=1)], axis=1)
        hits = np.abs(_arc_stat(cs, ii, jj, n)).max(axis=1) >= obs * (1 - 1e-12)
        if exceed + int(hits.sum()) >= PERM_STOP_AFTER:
            # sequential Monte Carlo p (Besag & Clifford 1991, Biometrika 78:301): stop at the
            # h-th shuffle that reaches the observed maximum, p = h / shuffles so far. A cut of
            # a long series without a step stops after a few dozen shuffles instead of n_perm
            # (the arcs of 1,000 nightly runs are 500,000 cuts a shuffle).
            at = int(np.flatnonzero(hits)[PERM_STOP_AFTER - exceed - 1]) + 1
            return int(ii[best]), int(jj[best]), float(z[best]) / sd, PERM_STOP_AFTER / (done + at)
        exceed += int(hits.sum())
        done += b
    return int(ii[best]), int(jj[best]), float(z[best]) / sd, (1 + exceed) / (n_perm + 1)


def detect_steps(series: Sequence[float], min_segment: int = 3, alpha: float = 0.01, n_perm: int = 999,
                 seed: int = DEFAULT_SEED, max_steps: int = 6, min_rel_change: float = 0.0) -> list[Step]:
    """Level shifts in a time-ordered series (e.g. one cell's median throughput per nightly run).

    Method: circular binary segmentation (CBS, Olshen et al. 2004, Biostatistics 5:557) with a
    permutation reference, on winsorized values, in two stages per segment:
    * Statistic of a cut: the difference between the mean inside and outside the cut,
      standardised (the two-sample t of CBS), on values clipped to median +- 3 x 1.4826 MAD of
      the segment, so a single wild run can neither fake nor hide a level.
    * Stage 1, single split: the split point k (at least ``min_segment`` values each side) with
      the largest |t|. Stage 2, only if stage 1 finds nothing: every cut into [start, i) [i, j)
      [j, end) - a stretch at another level that comes back, e.g. a regression later fixed, which
      a single split cannot see - with the largest |t|.
    * Significance of the chosen cut: shuffle the segment ``n_perm`` times, take the largest |t|
      over the same set of cuts of each shuffle; p = (1 + #{shuffles >= observed}) / (n_perm + 1),
      or, once PERM_STOP_AFTER shuffles have reached the observed maximum, h / shuffles so far
      (Besag & Clifford's sequential p: the same test, stopped where it can no longer be small).
      Picking the best of many cuts is thus paid for, and nothing is assumed but that the values
      of a segment without a step are exchangeable. Each stage is tested at ``alpha`` / 2
      (Bonferroni), so on a series of pure noise the chance of reporting any step is at most
      ``alpha``; testing single splits first keeps the power for the common case, one step.
    * A kept cut (whose medians either side also differ by at least ``min_rel_change``,
      relative) splits the segment; every piece is searched again, up to ``max_steps`` steps.
    Short series cannot reach a small p: with 6 values and min_segment 3 the best possible is
    1/20 per stage. NaNs are skipped; indices refer to the series as given. Deterministic for a
    given ``seed``.
    """
    if min_segment < 1:
        raise ValueError("min_segment must be >= 1")
    raw = np.asarray(list(series), dtype=float)
    pos = np.flatnonzero(~np.isnan(raw))
    x = raw[pos]
    found: dict[int, tuple[float, float, str]] = {}   # cut position in x -> (t at this cut, p, kind)
    todo = [(0, x.size)]
    while todo and len(found) < max_steps:
        a, b = todo.pop(0)
        best = None
        for single in (True, False):
            cut = _best_cut(x[a:b], min_segment, n_perm, [seed, a, b, int(single)], single)
            if cut is not None and cut[3] < alpha / 2:
                best = cut
                break
        if best is None:
            continue
        i, j, t, p = best
        if i == 0:                                 # a single split at j: the level of [j, b) differs
            i, j, t = j, b, -t
        inside, outside = x[a + i:a + j], np.r_[x[a:a + i], x[a + j:b]]
        if abs(_rel(float(np.median(inside)), float(np.median(outside)))) < min_rel_change:
            continue
        kind = "split" if a + j == b else "arc"
        found[a + i] = (t, p, kind)                # the level entering [i, j) moves by sign(t)
        if a + j < b:
            found[a + j] = (-t, p, kind)           # and leaving it, back
        todo += [(lo, hi) for lo, hi in ((a, a + i), (a + i, a + j), (a + j, b)) if hi > lo]
    cuts = sorted(found)[:max_steps]
    bounds = [0] + cuts + [x.size]
    out = []
    for n_, k in enumerate(cuts):
        before, after = x[bounds[n_]:k], x[k:bounds[n_ + 2]]
        mb, ma = float(np.median(before)), float(np.median(after))
        t, p, kind = found[k]
        out.append(Step(int(pos[k]), p, t, mb, ma, _rel(ma, mb), int(before.size), int(after.size), kind))
    return out


def segments(n: int, steps: Sequence[Step]) -> list[tuple[int, int]]:
    """[start, end) index ranges of a series of length ``n`` between its steps."""
    b = [0] + sorted(s.index for s in steps) + [n]
    return [(b[i], b[i + 1]) for i in range(len(b) - 1)]
