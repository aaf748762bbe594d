"""Confidence over repetitions: the one Student-t rule, pure numbers in and out.

It lives this low so that both the runner (adaptive repetitions, harness.run.repetitions) and
analysis (harness.analysis.stats re-exports it) use the same rule; analysis sits above run/.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable

# Below this many repetitions no confidence statement is made (analysis: no significance test;
# the runner: no stop on the CI). With two values a variance has one degree of freedom.
MIN_REPS_TEST = 3


@functools.lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    """scipy's Student-t quantile (~0.1 ms a call: a history's tables ask it for the same few
    repetition counts tens of thousands of times)."""
    from scipy.stats import t as student_t
    return float(student_t.ppf(q, df))


def t_ci_halfwidth(values: Iterable[float], conf: float = 0.95) -> tuple[int, float, float]:
    """(n, mean, half-width) of the two-sided Student-t confidence interval of the mean:
    t_{(1+conf)/2, n-1} x s / sqrt(n). NaNs are dropped; below 2 values the half-width is nan."""
    a = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(a)
    if n == 0:
        return 0, math.nan, math.nan
    mean = sum(a) / n
    if n < 2:
        return n, mean, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in a) / (n - 1))
    return n, mean, _t_quantile((1 + conf) / 2, n - 1) * sd / math.sqrt(n)


def t_ci_rel_pct(values: Iterable[float], conf: float = 0.95) -> tuple[int, float]:
    """(n, half-width of the Student-t CI as a percentage of the mean); nan below 2 values
    or for a mean of 0."""
    n, mean, hw = t_ci_halfwidth(values, conf)
    if math.isnan(hw) or mean == 0:
        return n, math.nan
    return n, abs(hw / mean) * 100
