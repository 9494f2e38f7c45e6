"""A notebook's closing paragraph, written from its own table: which methods helped, by how much, and whether
significantly, so a page never carries text about another run.

The input is experiments.summarize_runs' table (one row per method: means, the paired gain over the baseline
with its interval, Holm-adjusted significance). Nothing here knows a method's name in advance.
"""
from __future__ import annotations

import math

import pandas as pd

LEVEL_WITH_TEACHER = 0.01  # a teacher less than a point above its student: about the size of the boards' gains


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _row(r) -> str:
    interval = ("" if math.isnan(r["delta_ci_low"]) else
                f" [{_pts(r['delta_ci_low'])}, {_pts(r['delta_ci_high'])}]")
    return f"`{r['method']}` {_pts(r['delta_acc'])} points{interval}"


def conclude(summary: pd.DataFrame, baseline: str = "baseline", teacher: tuple[str, float] | None = None) -> str:
    """Markdown: the teacher against the student alone, then the methods that gained or lost significantly
    (Holm over the table) and those whose interval includes no change, each with its paired gain in points."""
    s = summary.set_index("method")
    lines = []
    if baseline not in s.index:
        return "No baseline in this run, so no gains to state."
    base = s.loc[baseline]
    n = int(base["n"])
    lines.append(f"The student alone reaches {base['test_acc_mean']:.4f} test accuracy (mean of {n} seed"
                 f"{'s' * (n != 1)}).")
    if teacher is not None:
        name, acc = teacher
        gap = acc - base["test_acc_mean"]
        lines.append(f"The teacher (`{name}`, {acc:.4f}) is {abs(100 * gap):.2f} points "
                     f"{'above' if gap >= 0 else 'below'} it" + (
                         "; a teacher below its student has little to teach." if gap < 0 else
                         "; the student alone already matches its teacher, so distillation has little room here."
                         if gap < LEVEL_WITH_TEACHER else "."))
    rows = s.drop(index=baseline)
    rows = rows[rows["delta_acc"].notna() & rows["n_pairs"].gt(0)].reset_index()
    if rows.empty:
        return " ".join(lines)
    if n < 2:
        lines.append("With one seed there is no interval, so no gain below is significant: "
                     + "; ".join(_row(r) for _, r in rows.iterrows()) + ".")
        return " ".join(lines)
    gains = rows[(rows["significant"] == True) & (rows["delta_acc"] > 0)]  # noqa: E712  (None: no verdict)
    losses = rows[(rows["significant"] == True) & (rows["delta_acc"] < 0)]  # noqa: E712
    level = rows[~rows.index.isin(gains.index) & ~rows.index.isin(losses.index)]
    for part, text in ((gains, "Significant gains over it (paired 95 % interval, Holm over this table's rows): "),
                       (losses, "Significant losses: ")):
        if not part.empty:
            lines.append(text + "; ".join(_row(r) for _, r in part.sort_values("delta_acc", ascending=False)
                                          .iterrows()) + ".")
    if not level.empty:
        lines.append("No significant change: " + "; ".join(
            _row(r) for _, r in level.sort_values("delta_acc", ascending=False).iterrows()) + ".")
    if gains.empty:
        lines.append("No method beat the student alone significantly in this run.")
    best = rows.loc[rows["val_acc_mean"].idxmax()]
    alone, top = round(s.loc[baseline, "val_acc_mean"], 4), round(best["val_acc_mean"], 4)  # as printed
    side = "above" if top > alone else "below" if top < alone else "level with"
    lines.append(f"On validation the best method is `{best['method']}` ({top:.4f}), {side} the student alone ({alone:.4f}).")
    return " ".join(lines)


def conclude_pairs(table: pd.DataFrame) -> str:
    """Markdown for stats.paired_gains' table: each distilled run against its own student alone, significant or
    not after Holm over the pairs."""
    if table.empty:
        return ""
    parts = []
    for _, r in table.iterrows():
        gain = {"method": r["distilled"], "delta_acc": r["delta"], "delta_ci_low": r["ci_low"],
                "delta_ci_high": r["ci_high"]}
        verdict = {True: "significant", False: "not significant"}.get(r["significant"], "one seed: no verdict")
        parts.append(f"{_row(gain)} over `{r['alone']}` ({verdict})")
    return "Against its own student alone at the same seeds (Holm over these pairs): " + "; ".join(parts) + "."
