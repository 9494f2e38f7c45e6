import math

import pandas as pd
import pytest

import numpy as np

from kdcore.stats import fmt_gain, fmt_mean_std, holm, holm_significant, paired_gain, paired_interval, summarize


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


def test_paired_interval_hand_computed():
    t_975_df2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom
    wide = paired_interval([0.01, 0.02, 0.03])  # mean 0.02, sd 0.01
    half = t_975_df2 * 0.01 / math.sqrt(3)
    assert wide["n"] == 3 and wide["delta"] == pytest.approx(0.02)
    assert wide["ci_low"] == pytest.approx(0.02 - half) and wide["ci_high"] == pytest.approx(0.02 + half)
    assert wide["significant"] is False  # the interval contains 0
    narrow = paired_interval([0.020, 0.021, 0.019])  # same mean, sd 0.001
    assert narrow["significant"] is True and narrow["ci_low"] == pytest.approx(0.02 - t_975_df2 * 0.001 / math.sqrt(3))
    worse = paired_interval([-0.020, -0.021, -0.019])
    assert worse["significant"] is True and worse["ci_high"] < 0  # a significant loss is also flagged
    one = paired_interval([0.05])
    assert one["significant"] is None and math.isnan(one["ci_low"])  # one pair: no interval, never significant


def test_paired_gain_pairs_by_seed_and_cancels_shared_seed_noise():
    # seed effects of ±0.05 shared by both methods; the method adds exactly +0.01 on every seed
    runs = _runs([("baseline", 0, 0.70, 0), ("baseline", 1, 0.80, 0), ("baseline", 2, 0.75, 0),
                  ("kd", 2, 0.76, 0), ("kd", 0, 0.71, 0), ("kd", 1, 0.81, 0), ("kd", 3, 0.99, 0)])
    g = paired_gain(runs, "kd", "baseline")
    assert g["n"] == 3 and g["delta"] == pytest.approx(0.01)  # seed 3 has no baseline: left out
    assert g["significant"] is True and g["ci_low"] == pytest.approx(0.01)  # identical differences: zero width
    with pytest.raises(ValueError, match="nope"):
        paired_gain(runs, "kd", "nope")


def test_false_positive_rate_is_the_nominal_5_percent_for_any_n():
    """Under no true gain, 'significant' fires ~5 % of the time whatever n (the old spread rule did not)."""
    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        hits = sum(paired_interval(rng.normal(0, 0.01, n))["significant"] for _ in range(4000))
        assert 0.04 < hits / 4000 < 0.06, (n, hits)


def test_paired_p_value_hand_computed_and_agrees_with_the_interval():
    # t with 2 degrees of freedom has the closed form CDF 1/2 + t / (2·sqrt(2 + t²)), so p = 1 − t / sqrt(2 + t²)
    t = 0.02 / (0.01 / math.sqrt(3))
    assert paired_interval([0.01, 0.02, 0.03])["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert paired_interval([0.01, 0.01, 0.01])["p_value"] == 0.0  # identical non-zero differences
    assert paired_interval([0.0, 0.0])["p_value"] == 1.0
    assert math.isnan(paired_interval([0.05])["p_value"])
    rng = np.random.default_rng(1)
    for n in (2, 3, 5):
        for _ in range(200):
            g = paired_interval(rng.normal(0.004, 0.01, n))
            assert g["significant"] == (g["p_value"] < 0.05), g  # the interval excludes 0 exactly when p < 5 %


def test_holm_hand_computed_in_input_order_with_untested_rows():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04, then the running max: 0.04 -> 0.06
    adjusted = holm([0.01, 0.04, float("nan"), 0.03, 0.005])
    assert adjusted[:2] == pytest.approx([0.03, 0.06]) and math.isnan(adjusted[2])
    assert adjusted[3:] == pytest.approx([0.06, 0.02])
    assert holm_significant([0.01, 0.04, float("nan"), 0.03, 0.005]) == [True, False, None, False, True]
    assert holm([0.3, 0.9]) == pytest.approx([0.6, 0.9]) and holm([0.7, 0.8]) == pytest.approx([1.0, 1.0])  # capped
    assert holm([]) == [] and holm_significant([float("nan")]) == [None]
    assert holm_significant([1e-4] + [0.5] * 15) == [True] + [False] * 15  # a clear gain survives a board of 16


def test_holm_is_never_more_liberal_than_the_raw_p_values():
    rng = np.random.default_rng(2)
    for _ in range(300):
        m = int(rng.integers(1, 20))
        p = rng.uniform(0, 1, m) ** 3  # many small p-values
        p[rng.uniform(size=m) < 0.1] = np.nan
        adjusted = np.array(holm(p))
        tested = ~np.isnan(p)
        assert np.array_equal(np.isnan(adjusted), ~tested)
        assert (adjusted[tested] >= p[tested]).all() and (adjusted[tested] <= 1).all()
        assert (adjusted[tested] <= np.minimum(1, tested.sum() * p[tested]) + 1e-12).all()  # at most Bonferroni
        for q, raw in zip(holm_significant(p), p):
            assert q is None if np.isnan(raw) else (not q or raw < 0.05)


def test_a_board_of_16_null_methods_at_n3_has_a_5_percent_family_wise_error():
    """Every method equals the baseline; each row is paired with the same baseline seeds, as on a real board.
    Raw 5 % intervals flag at least one row on about half the boards; Holm on about 5 % of them, not more."""
    rng = np.random.default_rng(0)
    boards, raw_any, holm_any = 1000, 0, 0
    for _ in range(boards):
        seed_effect = rng.normal(0, 0.02, 3)  # shared by every method at a seed: pairing cancels it
        base = 0.8 + seed_effect + rng.normal(0, 0.01, 3)
        p = [paired_interval(0.8 + seed_effect + rng.normal(0, 0.01, 3) - base)["p_value"] for _ in range(16)]
        raw_any += any(v < 0.05 for v in p)
        holm_any += any(holm_significant(p))
    assert raw_any / boards > 0.35, raw_any
    assert 0.025 < holm_any / boards <= 0.065, holm_any


def test_fmt_gain():
    assert fmt_gain(0.0123, 0.004, 0.0206) == "+0.0123 [+0.0040, +0.0206]"
    assert fmt_gain(-0.01, float("nan"), float("nan")) == "-0.0100"
    assert fmt_gain(float("nan"), float("nan"), float("nan")) == "–"


def test_fmt_mean_std():
    assert fmt_mean_std(0.91234, 0.00312, 3) == "0.9123 ± 0.0031 (n=3)"
    assert fmt_mean_std(0.91234, 0.0, 1) == "0.9123 (n=1)"
    assert fmt_mean_std(0.5, math.nan, 2) == "0.5000 (n=2)"
    assert fmt_mean_std(0.5, 0.25, 2, digits=2) == "0.50 ± 0.25 (n=2)"


def test_plateau_epoch_is_where_the_curve_stays_near_its_best():
    from kdcore.stats import plateau_epoch

    assert plateau_epoch([0.5, 0.8, 0.9, 0.905, 0.91], 0.01) == 3  # 0.9 is within 0.01 of 0.91, and so is all after
    assert plateau_epoch([0.5, 0.905, 0.8, 0.905, 0.91], 0.01) == 4  # a later dip below the band restarts it
    assert plateau_epoch([0.1, 0.2, 0.3], 0.01) == 3  # still climbing: its last epoch
    assert plateau_epoch([0.5, 0.9, 0.8], 0.05) == 3  # ends below the band around its best: never settled
    with pytest.raises(ValueError, match="empty"):
        plateau_epoch([], 0.01)
