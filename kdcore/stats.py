"""Mean ± std over seeds, and whether a gain over the baseline is larger than the seed spread.

Why: a single-seed KD "gain" of a few tenths of a point is often seed noise. Every table reports
n, and a method's gain counts as clear only when it exceeds the spread of both runs.
"""
from __future__ import annotations

import math

import pandas as pd


def summarize(runs: pd.DataFrame, by: str | list[str] = "method", metrics=("test_acc", "test_f1")) -> pd.DataFrame:
    """One row per group: <metric>_mean, <metric>_std (sample std, 0 for n=1) and n."""
    grouped = runs.groupby(by, sort=False)
    out = pd.DataFrame({"n": grouped.size()})
    for m in metrics:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std(ddof=1).fillna(0.0)
    return out.reset_index()


def gain_vs_baseline(summary: pd.DataFrame, baseline: str, metric: str = "test_acc", by: str = "method") -> pd.DataFrame:
    """Adds delta (mean − baseline mean) and `clear_gain`: delta > std(method) + std(baseline), with n ≥ 2 each."""
    base = summary.loc[summary[by] == baseline]
    if base.empty:
        raise ValueError(f"baseline {baseline!r} not among {summary[by].tolist()}")
    b_mean, b_std, b_n = (base.iloc[0][k] for k in (f"{metric}_mean", f"{metric}_std", "n"))
    out = summary.copy()
    out["delta"] = out[f"{metric}_mean"] - b_mean
    spread = out[f"{metric}_std"] + b_std
    out["clear_gain"] = (out["delta"] > spread) & (out["n"] >= 2) & (b_n >= 2) & (out[by] != baseline)
    return out


def fmt_mean_std(mean: float, std: float, n: int, digits: int = 4) -> str:
    """'0.9123 ± 0.0031 (n=3)'; the ± is omitted for a single run."""
    if n <= 1 or math.isnan(std):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"
