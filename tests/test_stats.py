import math

import pandas as pd
import pytest

from kdcore.stats import fmt_mean_std, gain_vs_baseline, summarize


def _runs(rows):
    return pd.DataFrame(rows, columns=["method", "seed", "test_acc", "test_f1"])


def test_summarize_mean_sample_std_and_n():
    runs = _runs([("kd", 0, 0.80, 0.70), ("kd", 1, 0.82, 0.72), ("kd", 2, 0.84, 0.74), ("baseline", 0, 0.75, 0.65)])
    s = summarize(runs).set_index("method")
    assert list(s.index) == ["kd", "baseline"]  # first-seen order, not sorted
    assert s.loc["kd", "n"] == 3 and s.loc["baseline", "n"] == 1
    assert s.loc["kd", "test_acc_mean"] == pytest.approx(0.82)
    assert s.loc["kd", "test_acc_std"] == pytest.approx(0.02)  # sample std (ddof=1), population would be 0.0163
    assert s.loc["kd", "test_f1_std"] == pytest.approx(0.02)
    assert s.loc["baseline", "test_acc_std"] == 0.0  # n=1: 0, not NaN
    assert not s.isna().any().any()


def test_summarize_groups_by_several_columns():
    runs = _runs([("kd", 0, 0.8, 0.7), ("kd", 1, 0.9, 0.8)]).assign(student=["a", "b"])
    s = summarize(runs, by=["method", "student"])
    assert len(s) == 2 and set(s.n) == {1}


def _summary(rows):
    return pd.DataFrame(rows, columns=["method", "n", "test_acc_mean", "test_acc_std"])


def test_clear_gain_only_when_delta_exceeds_both_spreads_with_two_runs_each():
    s = _summary([("baseline", 3, 0.80, 0.01), ("kd", 3, 0.83, 0.01), ("at", 3, 0.815, 0.01),
                  ("dkd", 1, 0.90, 0.0), ("worse", 3, 0.70, 0.01), ("edge", 3, 0.82, 0.01)])
    g = gain_vs_baseline(s, "baseline").set_index("method")
    assert g.loc["kd", "delta"] == pytest.approx(0.03)
    assert g.loc["kd", "clear_gain"]            # 0.03 > 0.01 + 0.01
    assert not g.loc["at", "clear_gain"]        # 0.015 < 0.02: within seed noise
    assert not g.loc["dkd", "clear_gain"]       # a single run is never a clear gain
    assert not g.loc["worse", "clear_gain"]     # negative delta
    assert not g.loc["edge", "clear_gain"]      # delta == spread is not "greater than"
    assert not g.loc["baseline", "clear_gain"] and g.loc["baseline", "delta"] == 0


def test_clear_gain_needs_two_baseline_runs():
    g = gain_vs_baseline(_summary([("baseline", 1, 0.5, 0.0), ("kd", 5, 0.9, 0.001)]), "baseline").set_index("method")
    assert not g.loc["kd", "clear_gain"]


def test_unknown_baseline_names_the_choices():
    with pytest.raises(ValueError, match="'nope' not among.*kd"):
        gain_vs_baseline(_summary([("kd", 2, 0.9, 0.01)]), "nope")


def test_fmt_mean_std():
    assert fmt_mean_std(0.91234, 0.00312, 3) == "0.9123 ± 0.0031 (n=3)"
    assert fmt_mean_std(0.91234, 0.0, 1) == "0.9123 (n=1)"
    assert fmt_mean_std(0.5, math.nan, 2) == "0.5000 (n=2)"
    assert fmt_mean_std(0.5, 0.25, 2, digits=2) == "0.50 ± 0.25 (n=2)"
