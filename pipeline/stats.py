"""Small statistics shared by the comparisons: the Student t quantile of a 95% interval, without SciPy."""

from __future__ import annotations

import bisect
import math

# Two-sided 95% quantiles of Student's t (0.975 one-sided), by degrees of freedom; the last is the normal's.
_T975 = {
    1: 12.706, 1.25: 8.028, 1.5: 6.017, 1.75: 4.949, 2: 4.303, 2.5: 3.575, 3.5: 2.940, 4.5: 2.659, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
    20: 2.086, 22: 2.074, 24: 2.064, 26: 2.056, 28: 2.048, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}
_DFS = sorted(_T975)
NORMAL_975 = 1.960


def t975(df: float) -> float:
    """The t value of a two-sided 95% interval with `df` degrees of freedom (fractional df, e.g.
    Welch's, interpolated between tabulated values: log t against log df up to 120, linear in 1/df
    towards the normal beyond; within 2% of the exact value, 0.7% from 2 df)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df in _T975:
        return _T975[df]
    if df > _DFS[-1]:
        share = 1 - _DFS[-1] / df  # 1/df from 1/120 down to 0
        return _T975[_DFS[-1]] + share * (NORMAL_975 - _T975[_DFS[-1]])
    i = bisect.bisect(_DFS, df)
    lo, hi = _DFS[i - 1], _DFS[i]
    share = math.log(df / lo) / math.log(hi / lo)
    return math.exp(math.log(_T975[lo]) + share * math.log(_T975[hi] / _T975[lo]))
