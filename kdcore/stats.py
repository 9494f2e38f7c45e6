"""Mean ± std over seeds, and the gain over the baseline as a paired 95 % interval.

Why paired: a method and its baseline run with the same seed share the initialisation and the batch
order, so the per-seed differences cancel most of the seed noise that two independent spreads keep.
A gain is "significant" only when the paired t interval of the mean difference excludes 0; with n = 1
there is no interval and nothing is significant.
"""
from __future__ import annotations

import math

import pandas as pd
from scipy import stats as _scipy_stats


def summarize(runs: pd.DataFrame, by: str | list[str] = "method", metrics=("test_acc", "test_f1")) -> pd.DataFrame:
    """One row per group: <metric>_mean, <metric>_std (sample std, 0 for n=1) and n."""
    grouped = runs.groupby(by, sort=False)
    out = pd.DataFrame({"n": grouped.size()})
    for m in metrics:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std(ddof=1).fillna(0.0)
    return out.reset_index()


def paired_interval(diffs, confidence: float = 0.95) -> dict:
    """Mean of paired differences with its t interval: {n, delta, ci_low, ci_high, significant}.

    n < 2 gives no interval (NaN bounds, significant None): one pair cannot separate a gain from noise.
    """
    d = pd.Series(diffs, dtype=float).dropna()
    n, mean = len(d), float(d.mean()) if len(d) else float("nan")
    if n < 2:
        return {"n": n, "delta": mean, "ci_low": float("nan"), "ci_high": float("nan"), "significant": None}
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    low, high = mean - half, mean + half
    return {"n": n, "delta": mean, "ci_low": low, "ci_high": high, "significant": bool(low > 0 or high < 0)}


def paired_gain(runs: pd.DataFrame, method: str, baseline: str, metric: str = "test_acc", by: str = "method") -> dict:
    """`paired_interval` of metric(method) − metric(baseline) over the seeds both ran."""
    a = runs.loc[runs[by] == method].set_index("seed")[metric]
    b = runs.loc[runs[by] == baseline].set_index("seed")[metric]
    if b.empty:
        raise ValueError(f"baseline {baseline!r} not among {runs[by].unique().tolist()}")
    common = a.index.intersection(b.index)
    return paired_interval(a.loc[common] - b.loc[common])


def fmt_mean_std(mean: float, std: float, n: int, digits: int = 4) -> str:
    """'0.9123 ± 0.0031 (n=3)'; the ± is omitted for a single run."""
    if n <= 1 or math.isnan(std):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def fmt_gain(delta: float, low: float, high: float, digits: int = 4) -> str:
    """'+0.0123 [+0.0040, +0.0206]'; just the mean when there is no interval, '–' when there is no gain."""
    if delta is None or math.isnan(delta):
        return "–"
    if low is None or math.isnan(low):
        return f"{delta:+.{digits}f}"
    return f"{delta:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
