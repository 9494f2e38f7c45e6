"""Mean ± std over seeds, and the gain over the baseline as a paired 95 % interval.

Why paired: a method and its baseline run with the same seed share the initialisation and the batch
order, so the per-seed differences cancel most of the seed noise that two independent spreads keep.
A gain is "significant" only when the paired t interval of the mean difference excludes 0; with n = 1
there is no interval and nothing is significant.

Many rows, one board: each row's interval has a 5 % false-positive rate, so a board of ~16 methods with no real
gain shows about one "significant" row by chance (more than one in two boards has at least one). `holm` adjusts the
rows' paired p-values (Holm's step-down, which holds the family-wise error rate at 5 % under any dependence
between the rows, such as their shared baseline); `holm_significant` is the board-level verdict. The adjusted
p-value is never smaller than the raw one, so a row significant after adjustment is significant before it.
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
    """Mean of paired differences with its t interval: {n, delta, ci_low, ci_high, significant, p_value}.

    `p_value` is the two-sided paired t-test's (significant ⇔ p_value < 1 − confidence). n < 2 gives no interval
    (NaN bounds and p-value, significant None): one pair cannot separate a gain from noise.
    """
    d = pd.Series(diffs, dtype=float).dropna()
    n, mean = len(d), float(d.mean()) if len(d) else float("nan")
    if n < 2:
        return {"n": n, "delta": mean, "ci_low": float("nan"), "ci_high": float("nan"), "significant": None,
                "p_value": float("nan")}
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    low, high = mean - half, mean + half
    return {"n": n, "delta": mean, "ci_low": low, "ci_high": high, "significant": bool(low > 0 or high < 0),
            "p_value": _t_p_value(mean, se, n - 1)}


def _t_p_value(mean: float, se: float, df: int) -> float:
    """Two-sided p of t = mean / se; identical differences (se = 0) give 0 for a non-zero mean, 1 for zero."""
    if se == 0:
        return 0.0 if mean != 0 else 1.0
    return float(2 * _scipy_stats.t.sf(abs(mean) / se, df))


def holm(p_values) -> list[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest of m becomes max_{j<=i} min(1, (m−j+1)·p_(j)).

    NaN (a row with no test: the baseline, a row with n < 2) stays NaN and does not count in m. Rejecting the rows
    whose adjusted p is below 0.05 keeps the chance of any false rejection on the board at most 5 %.
    """
    p = pd.Series(list(p_values), dtype=float)
    tested = p.dropna().sort_values(kind="stable")
    m = len(tested)
    stepped = (tested * (m - pd.Series(range(m), index=tested.index))).clip(upper=1.0).cummax()
    return p.where(p.isna(), stepped.reindex(p.index)).tolist()


def holm_significant(p_values, level: float = 0.05) -> list[bool | None]:
    """Per row: Holm-adjusted p < level (the family-wise verdict over the board), None where there is no test."""
    return [None if math.isnan(q) else bool(q < level) for q in holm(p_values)]


def paired_gain(runs: pd.DataFrame, method: str, baseline: str, metric: str = "test_acc", by: str = "method") -> dict:
    """`paired_interval` of metric(method) − metric(baseline) over the seeds both ran (with its p_value)."""
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


def paired_gains(runs: pd.DataFrame, pairs, metric: str = "test_acc", by: str = "method") -> pd.DataFrame:
    """One row per (alone, distilled) pair of run labels: both means and the paired gain of `distilled` over its
    own `alone` at the seeds both ran, Holm-adjusted over these pairs. For comparisons the board's single baseline
    cannot make: a smaller student, or a shorter schedule, against itself without the teacher."""
    rows, means = [], runs.groupby(by)[metric].mean()
    for alone, distilled in pairs:
        gain = paired_gain(runs, distilled, alone, metric, by)
        rows.append({"alone": alone, "distilled": distilled, "n_pairs": gain["n"], f"alone_{metric}": means[alone],
                     f"distilled_{metric}": means[distilled], "delta": gain["delta"], "ci_low": gain["ci_low"],
                     "ci_high": gain["ci_high"], "p_value": gain["p_value"]})
    table = pd.DataFrame(rows, columns=["alone", "distilled", "n_pairs", f"alone_{metric}", f"distilled_{metric}",
                                        "delta", "ci_low", "ci_high", "p_value"])
    table["p_holm"] = holm(table["p_value"])
    table["significant"] = pd.Series(holm_significant(table["p_value"]), index=table.index, dtype=object)  # None kept
    return table


def plateau_epoch(values, tolerance: float) -> int:
    """The first epoch (1-based) from which every later value stays within `tolerance` of the run's best: where a
    validation curve has converged. A curve still climbing at its end gives its last epoch."""
    v = pd.Series(list(values), dtype=float)
    if v.empty:
        raise ValueError("plateau_epoch of an empty curve")
    within = (v >= v.max() - tolerance)[::-1].cummin()[::-1]  # True from the plateau's start to the end
    return int(within.idxmax()) + 1 if within.iloc[-1] else len(v)  # ends below the band: never settled
