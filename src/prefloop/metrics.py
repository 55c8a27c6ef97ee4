"""Numbers that say how well a run went: return statistics, rank correlation, normalised return."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def correlations(learned: Sequence[float], true: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of learned vs. true returns (nan when undefined)."""
    learned_arr = np.asarray(learned, dtype=np.float64)
    true_arr = np.asarray(true, dtype=np.float64)
    if len(learned_arr) < 3 or np.std(learned_arr) == 0 or np.std(true_arr) == 0:
        return {"pearson": math.nan, "spearman": math.nan}
    return {
        "pearson": float(stats.pearsonr(learned_arr, true_arr).statistic),
        "spearman": float(stats.spearmanr(learned_arr, true_arr).statistic),
    }


def normalized_return(value: float, random_return: float, true_reward_return: float) -> float:
    """``(R - R_random) / (R_true - R_random)``: 0 is a random policy, 1 is RL on the true reward."""
    span = true_reward_return - random_return
    if span == 0 or not math.isfinite(span):
        return math.nan
    return (value - random_return) / span


def median_iqr(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, 25th and 75th percentile of the finite values (nan when there are none)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    q25, median, q75 = np.percentile(arr, [25, 50, 75])
    return float(median), float(q25), float(q75)
