"""Fast unit tests of kdcore.experiments: teacher reuse, run_seeds and write_results on tiny synthetic data."""
import json

import pandas as pd
import pytest
import torch

from kdcore import experiments as ex
from kdcore import provenance, teachers
from kdcore import runs as kdruns
from kdcore import load_dataset, profiles, store

TINY = dict(epochs=1, lr=0.05, batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", synthetic=dict(train_size=160, val_size=40, test_size=40))


def test_get_teacher_trains_once_then_loads(data, tmp_path):
    before = teachers.TEACHER_TRAININGS
    first = teachers.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), checkpoint_dir=tmp_path, **TINY)
    assert first.trained and first.path.exists() and teachers.TEACHER_TRAININGS == before + 1
    mtime = first.path.stat().st_mtime_ns
    second = teachers.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), checkpoint_dir=tmp_path, **TINY)
    assert not second.trained and teachers.TEACHER_TRAININGS == before + 1
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert second.test_acc == pytest.approx(first.test_acc)
    assert second.trained_with == first.trained_with and first.trained_with["precision"] in ("fp32", "bf16")
    other = teachers.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), checkpoint_dir=tmp_path, **{**TINY, "lr": 0.01})
    assert other.key != first.key and teachers.TEACHER_TRAININGS == before + 2


def test_run_seeds_and_write_results(data, tmp_path):
    teacher = teachers.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), checkpoint_dir=tmp_path, **TINY)
    base = kdruns.run_seeds("baseline", data, student="student_light", seeds=[0, 1], checkpoint_dir=tmp_path, **TINY)
    kd = kdruns.run_seeds("kd", data, student="student_light", seeds=[0, 1], teacher=teacher.model,
                      distill=dict(alpha=0.5, temperature=2.0), checkpoint_dir=tmp_path, **TINY)
    assert list(base.runs["seed"]) == [0, 1] and set(kd.runs["method"]) == {"kd"}
    for col in ("test_acc", "test_f1", "precision", "recall", "val_acc", "best_epoch", "seconds", "params"):
        assert col in kd.runs
    assert set(kd.histories) == {0, 1} and "loss_kd" in kd.histories[0]
    again = kdruns.run_seeds("baseline", data, student="student_light", seeds=[0, 1], checkpoint_dir=tmp_path, **TINY)
    pd.testing.assert_series_equal(again.runs["test_acc"], base.runs["test_acc"])  # reused from the run cache

    runs = pd.concat([base.runs, kd.runs])
    path = ex.write_results("unit", "00_test", {"runs": runs, "baseline": "baseline",
                                                "teacher": {"name": "tiny_resnet", "test_acc": teacher.test_acc},
                                                "efficiency": {"kd": {"params": 1, "size_mb": 0.1, "latency_ms": 0.5}},
                                                "run_info": provenance.run_info({"profile": "unit"}, data)}, tmp_path)
    res = json.loads(path.read_text())
    assert path == tmp_path / "unit" / "00_test.json"
    by = {m["method"]: m for m in res["metrics"]}
    assert by["baseline"]["n"] == 2 and by["baseline"]["delta_acc"] == 0 and by["kd"]["params"] == 1
    assert "±" in by["kd"]["test_acc"] and isinstance(by["kd"]["significant"], bool) and by["kd"]["n_pairs"] == 2
    diffs = kd.runs.set_index("seed")["test_acc"] - base.runs.set_index("seed")["test_acc"]  # paired by seed
    half = 12.706204736174707 * diffs.std(ddof=1) / 2 ** 0.5  # Student t, 97.5 %, 1 degree of freedom; n = 2
    assert by["kd"]["delta_acc"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert by["kd"]["delta_ci_low"] == pytest.approx(diffs.mean() - half, abs=1e-12)
    assert by["kd"]["delta_ci_high"] == pytest.approx(diffs.mean() + half, abs=1e-12)  # (width 0 if diffs agree)
    assert by["baseline"]["significant"] is None
    assert res["run_info"]["dataset"]["source"] == "synthetic gratings" and res["teacher"]["name"] == "tiny_resnet"
    assert not list(tmp_path.glob("unit/.*tmp*"))  # atomic write leaves no temp file


def test_written_gain_is_the_paired_t_interval_computed_by_hand(tmp_path):
    """Seeds listed in another order per method; per-seed differences 0.02, 0.03, 0.01 (mean 0.02, sd 0.01)."""
    rows = [("baseline", 0, 0.70), ("baseline", 1, 0.80), ("baseline", 2, 0.75),
            ("kd", 2, 0.76), ("kd", 0, 0.72), ("kd", 1, 0.83)]
    runs = pd.DataFrame([{"method": m, "seed": s, "test_acc": a, "test_f1": a - 0.1, "precision": a, "recall": a,
                          "val_acc": a, "seconds": 1.0} for m, s, a in rows])
    res = json.loads(ex.write_results("unit", "00_ci", {"runs": runs, "baseline": "baseline"}, tmp_path).read_text())
    kd = {m["method"]: m for m in res["metrics"]}["kd"]
    half = 4.302652729911275 * 0.01 / 3 ** 0.5  # Student t, 97.5 %, 2 degrees of freedom
    assert kd["n_pairs"] == 3 and kd["delta_acc"] == pytest.approx(0.02) and kd["delta_f1"] == pytest.approx(0.02)
    assert kd["delta_ci_low"] == pytest.approx(0.02 - half) and kd["delta_ci_high"] == pytest.approx(0.02 + half)
    assert kd["significant"] is False  # [-0.0048, +0.0448] contains 0


def test_run_store_key_covers_the_recipe_and_can_be_bypassed(data, tmp_path, monkeypatch):
    first = kdruns.run_seeds("baseline", data, student="student_light", seeds=[0], checkpoint_dir=tmp_path, **TINY)
    assert not first.runs["reused"].any()
    assert kdruns.run_seeds("baseline", data, student="student_light", seeds=[0], checkpoint_dir=tmp_path,
                        **TINY).runs["reused"].all()
    assert not kdruns.run_seeds("baseline", data, student="student_light", seeds=[0], checkpoint_dir=tmp_path,
                            cache=False, **TINY).runs["reused"].any()
    assert kdruns.run_seeds("baseline", data, student="student_light", seeds=[0], checkpoint_dir=tmp_path, teacher_cache=True,
                        **TINY).runs["reused"].all()  # one baseline serves notebooks with and without a teacher cache
    monkeypatch.setattr(store, "RECIPE_VERSION", store.RECIPE_VERSION + 1)
    assert not kdruns.run_seeds("baseline", data, student="student_light", seeds=[0], checkpoint_dir=tmp_path,
                            **TINY).runs["reused"].any()  # a new recipe never serves the old run


def test_an_interrupted_cached_run_resumes_from_its_last_epoch(data, tmp_path, monkeypatch, capsys):
    """A run stopped mid-way (Ctrl-C, a deadline) keeps its finished epochs in <key>.partial/; the same call
    resumes there, trains the same student as an uninterrupted run, and leaves only the finished cache entry."""
    from kdcore import train as train_mod

    two = {**TINY, "epochs": 2}
    whole = kdruns.run_seeds("baseline", data, student="student_light", seeds=[0], checkpoint_dir=tmp_path / "whole", **two)
    real_epoch = train_mod.train_epoch

    def stopped_in_epoch_2(*args, epoch, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(*args, epoch=epoch, **kw)

    monkeypatch.setattr(train_mod, "train_epoch", stopped_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        kdruns.run_seeds("baseline", data, student="student_light", seeds=[0], checkpoint_dir=tmp_path / "cut", **two)
    runs = tmp_path / "cut" / "runs"
    assert [p.suffix for p in runs.iterdir()] == [".partial"] and (next(runs.iterdir()) / "last.pt").exists()
    monkeypatch.setattr(train_mod, "train_epoch", real_epoch)
    capsys.readouterr()
    resumed = kdruns.run_seeds("baseline", data, student="student_light", seeds=[0], checkpoint_dir=tmp_path / "cut", **two)
    assert "resumed from" in capsys.readouterr().out and resumed.runs["resumed_from"].tolist() == [1]
    assert whole.runs["resumed_from"].isna().all()
    for col in ("test_acc", "test_f1", "val_acc", "best_epoch"):
        assert resumed.runs[col].tolist() == whole.runs[col].tolist()
    assert resumed.runs["seconds"].iloc[0] >= resumed.histories[0]["seconds"].sum() * 0.99  # both processes' epochs
    assert not list(runs.iterdir())  # the partial folder is gone once the run is stored
    assert sorted(p.suffix for p in (tmp_path / "cut" / "store" / "runs").iterdir()) == [".json", ".pt"]


def test_a_term_defined_outside_kdcore_runs_and_reaches_the_tables(data, tmp_path):
    from kdcore.distill import Term

    class L1Logits(Term):
        name = "l1"

        def forward(self, s):
            return (s.student_logits - s.teacher_logits).abs().mean()

    teacher = teachers.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), checkpoint_dir=tmp_path, **TINY)
    ctx = ex.Context("00_test", {"seeds": [0, 1], "student": "student_light", "checkpoint_dir": str(tmp_path),
                                 "latency_min_run_time": 0.01, "epochs": 1, "batch_size": 64, "device": "cpu"}, data)
    ctx.teacher_result = teacher
    ctx.run("baseline")
    term = L1Logits(weight=0.5)
    mine = ctx.run(term)
    assert term.pairs is None and "loss_l1" in mine.histories[0] and not mine.runs["reused"].any()
    table = ctx.summary()
    assert list(table.index) == ["baseline", "l1"]
    text = table.to_string()
    assert "nan" not in text.lower() and "False" not in text and "None" not in text
    assert table.loc["l1", "significant"] in ("yes", "no") and "[" in table.loc["l1", "Δ acc vs baseline [95 % CI]"]
    assert table.loc["baseline", "latency ms"] == table.loc["l1", "latency ms"]  # one measurement per architecture


def test_best_and_worst_are_chosen_on_mean_validation_accuracy_not_test(data):
    """Validation and test rank the three methods differently, and one seed's maximum differs from the means."""
    ctx = ex.Context("00_test", {}, data)
    table = {"a": ([0.95, 0.85], [0.50, 0.50]),   # best on validation (mean 0.90), worst on test
             "b": ([0.99, 0.41], [0.95, 0.95]),   # highest single validation seed, best on test
             "c": ([0.60, 0.60], [0.90, 0.90])}   # worst on validation (mean 0.60)
    for label, (val, test) in table.items():
        runs = pd.DataFrame({"method": label, "seed": [0, 1], "val_acc": val, "test_acc": test})
        ctx.results[label] = kdruns.SeedRuns(label, runs, {}, None, {})
    assert ctx.best_and_worst(["a", "b", "c"]) == ("a", "c")
    assert ctx.best_and_worst(["b", "c"]) == ("b", "c")  # only the labels asked for


def test_run_key_changes_with_each_ingredient_of_the_recipe_and_with_nothing_else(data):
    """Runs are kept by what they are (store.RECIPE_VERSION stands for the code, tests/test_golden.py guards it):
    every ingredient of a run changes its key; how it is watched (progress bar, device) does not."""
    from kdcore import create_model

    torch.manual_seed(0)
    teacher, other = create_model("tiny_resnet", num_classes=10, width=4), create_model("tiny_resnet", num_classes=10, width=4)
    base = dict(student="student_light", student_kwargs={}, pretrained=False, distill={"temperature": 4.0},
                teacher=teacher, epochs=2, lr=0.05, batch_size=64, seed=0, train={"schedule": "cosine"}, label="kd")
    key = kdruns.run_key("kd", data, **base)
    assert key == kdruns.run_key("kd", data, **dict(base))
    changed = {"student": "cnn_small", "student_kwargs": {"width": 8}, "pretrained": True,
               "distill": {"temperature": 2.0}, "teacher": other, "epochs": 3, "lr": 0.1, "batch_size": 32, "seed": 1,
               "train": {"schedule": "step"}}
    for name, value in changed.items():
        assert kdruns.run_key("kd", data, **{**base, name: value}) != key, name
    assert kdruns.run_key("kd:ls", data, **base) != key
    other_data = load_dataset("synthetic", seed=1, synthetic=dict(train_size=160, val_size=40, test_size=40))
    assert kdruns.run_key("kd", other_data, **base) != key
    watched = {**base, "train": {"schedule": "cosine", "progress": True, "device": "cuda"}}
    assert kdruns.run_key("kd", data, **watched) == key
    alone = {**base, "teacher": None, "label": "baseline"}
    assert kdruns.run_key("baseline", data, **alone) == kdruns.run_key("baseline", data, **{**alone, "distill": {"p": 1}})


def test_profiles_cover_every_notebook():
    assert set(profiles.PROFILES) == {"smoke", "cpu", "full", "gpu"}
    for name, profile in profiles.PROFILES.items():
        assert set(profile) - {"scaling", "common", "store", "co_train"} <= set(profiles.NOTEBOOKS)  # a misspelt notebook block
        for nb in profiles.NOTEBOOKS:
            defaults, p = profiles.notebook_defaults(nb), profiles.params_for(name, nb)
            assert set(p) == set(defaults), f"{name}.yaml sets names {nb} has no parameter for"
            assert p["profile"] == name and profiles.scaling_for(name, nb)
            assert len(p["seeds"]) >= (2 if name == "smoke" else 3)  # paired comparisons need >= 3 seeds
    for nb in profiles.NOTEBOOKS:  # the notebooks' defaults are the cpu profile: cpu.yaml changes nothing
        assert profiles.params_for("cpu", nb) == {**profiles.notebook_defaults(nb), "profile": "cpu"}
    assert profiles.params_for("smoke", "07_eurosat")["synthetic"]["image_size"] == 64
    assert profiles.params_for("gpu", "06_efficientvit")["student"] == "efficientvit_b1"  # common does not leak
    for name in ("cpu", "full", "gpu"):  # EuroSAT's seed student, whatever `common` gives the CIFAR notebooks
        assert profiles.params_for(name, "07_eurosat")["student"] == "smallmynet", name


def test_logit_runs_keep_the_teachers_views_for_other_notebooks(tmp_path):
    """run_seeds with a checkpoint folder and teacher_cache: a later process (shared caches cleared) running
    another logit method at the same seed never runs the teacher."""
    from kdcore import create_model
    from kdcore.cache import clear_shared_caches

    data = load_dataset("synthetic", synthetic=dict(train_size=128, val_size=32, test_size=32, image_size=16))
    torch.manual_seed(0)
    teacher = create_model("tiny_resnet", num_classes=10).eval()
    clear_shared_caches()
    kdruns.run_seeds("kd", data, student="student_light", seeds=[0], teacher=teacher, checkpoint_dir=tmp_path,
                 teacher_cache=True, **TINY)
    assert len(list((tmp_path / "logit-cache").glob("*.pt"))) == 1
    clear_shared_caches()
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    kdruns.run_seeds("kd", data, student="student_light", seeds=[0], teacher=teacher, checkpoint_dir=tmp_path,
                 teacher_cache=True, distill={"alpha": 0.5}, **TINY)
    clear_shared_caches()
    assert calls == [8]  # only the distiller's prepare() probe: every training view came from the file


def test_significant_follows_holm_over_the_table_and_the_raw_verdict_stays_beside_it():
    """B's own interval excludes 0 (p = 0.039), but after Holm over the table (p × 2 = 0.077) it is not
    significant; A (p ≈ 0.0003, × 3) stays significant; the baseline and C have no verdict / a negative one."""
    base = [0.80, 0.81, 0.82]
    gains = {"A": [0.010, 0.011, 0.012], "B": [0.013, 0.020, 0.027], "C": [-0.01, 0.0, 0.01]}
    rows = [{"method": "baseline", "seed": s, "test_acc": a, "test_f1": a, "precision": a, "recall": a, "val_acc": a,
             "seconds": 1.0} for s, a in enumerate(base)]
    rows += [{"method": m, "seed": s, "test_acc": base[s] + d, "test_f1": base[s] + d, "precision": 0.0, "recall": 0.0,
              "val_acc": 0.0, "seconds": 1.0} for m, ds in gains.items() for s, d in enumerate(ds)]
    s = kdruns.summarize_runs(pd.DataFrame(rows)).set_index("method")
    assert s.loc["B", "p_value"] == pytest.approx(0.0385, abs=5e-4) and s.loc["B", "significant_raw"] is True
    assert s.loc["B", "p_holm"] == pytest.approx(2 * s.loc["B", "p_value"]) and s.loc["B", "significant"] is False
    assert s.loc["A", "p_holm"] == pytest.approx(3 * s.loc["A", "p_value"]) and s.loc["A", "significant"] is True
    assert s.loc["C", "significant"] is False and s.loc["baseline", "significant"] is None


def test_the_conclusion_is_written_from_the_table():
    """Gains, losses and level rows come from the numbers (Holm over the table), and the teacher gap too."""
    from kdcore.conclusions import conclude

    base = [0.80, 0.81, 0.82]
    gains = {"up": [0.010, 0.011, 0.012], "down": [-0.020, -0.021, -0.022], "flat": [-0.01, 0.0, 0.01]}
    rows = [{"method": "baseline", "seed": s, "test_acc": a, "test_f1": a, "precision": a, "recall": a, "val_acc": a,
             "seconds": 1.0} for s, a in enumerate(base)]
    rows += [{"method": m, "seed": s, "test_acc": base[s] + d, "test_f1": base[s] + d, "precision": 0.0, "recall": 0.0,
              "val_acc": base[s] + d, "seconds": 1.0} for m, ds in gains.items() for s, d in enumerate(ds)]
    text = conclude(kdruns.summarize_runs(pd.DataFrame(rows)), teacher=("airbench", 0.79))
    assert "The student alone reaches 0.8100 test accuracy (mean of 3 seeds)." in text
    assert "The teacher (`airbench`, 0.7900) is 2.00 points below it; a teacher below its student" in text
    assert "Significant gains over it" in text and "`up` +1.10 points [" in text
    assert "Significant losses: `down` -2.10 points [" in text and "No significant change: `flat` +0.00 points" in text
    assert "On validation the best method is `up` (0.8210), above the student alone (0.8100)." in text
    level = conclude(kdruns.summarize_runs(pd.DataFrame(rows)), teacher=("airbench", 0.815))
    assert "is 0.50 points above it; the student alone already matches its teacher" in level
    assert "matches its teacher" not in conclude(kdruns.summarize_runs(pd.DataFrame(rows)), teacher=("t", 0.83))
    rows = [r for r in rows if r["method"] != "up"]
    text = conclude(kdruns.summarize_runs(pd.DataFrame(rows)))
    assert "No method beat the student alone significantly" in text
    assert "On validation the best method is `flat` (0.8100), level with the student alone (0.8100)." in text


def test_paired_gains_pair_each_distilled_run_with_its_own_student_alone():
    """A smaller student or a shorter schedule is paired with itself alone (not the board's baseline), Holm over
    the pairs, and the conclusion states each pair's gain and verdict."""
    from kdcore.conclusions import conclude_pairs
    from kdcore.stats import holm, paired_gains

    alone = {"small alone": [0.70, 0.72, 0.74], "short alone": [0.90, 0.91, 0.92]}
    gain = {"small (kd)": ("small alone", [0.030, 0.031, 0.032]), "short kd": ("short alone", [-0.01, 0.0, 0.012])}
    rows = [{"method": m, "seed": s, "test_acc": a} for m, accs in alone.items() for s, a in enumerate(accs)]
    rows += [{"method": m, "seed": s, "test_acc": alone[base][s] + d} for m, (base, ds) in gain.items()
             for s, d in enumerate(ds)]
    table = paired_gains(pd.DataFrame(rows), [("small alone", "small (kd)"), ("short alone", "short kd")])
    small, short = table.iloc[0], table.iloc[1]
    assert small["delta"] == pytest.approx(0.031) and short["delta"] == pytest.approx(0.0006667, abs=1e-6)
    assert small["alone_test_acc"] == pytest.approx(0.72) and small["distilled_test_acc"] == pytest.approx(0.751)
    assert table["p_holm"].tolist() == pytest.approx(holm(table["p_value"]))
    assert small["significant"] is True and short["significant"] is False
    text = conclude_pairs(table)
    assert "`small (kd)` +3.10 points [" in text and "over `small alone` (significant)" in text
    assert "over `short alone` (not significant)" in text
    with pytest.raises(ValueError, match="not among"):
        paired_gains(pd.DataFrame(rows), [("missing", "small (kd)")])


def test_convergence_shows_one_seeds_long_curve_and_keeps_it_out_of_the_tables(tmp_path):
    """A longer schedule is its own run, left out of the results; at the notebook's own epochs the baseline's curve
    is used as it is, with nothing trained again."""
    import matplotlib

    matplotlib.use("Agg")
    ctx = ex.setup("01_baseline", profile="smoke", seeds=[0], checkpoint_dir=str(tmp_path), threads=None,
                   synthetic={"train_size": 128, "val_size": 64, "test_size": 64, "image_size": 32})
    base = ctx.run("baseline")
    assert ctx.convergence(ctx.params["epochs"], 0.5) == 1  # one epoch: it is its own plateau
    assert ctx.extra["convergence"]["val_acc"] == base.histories[0]["val_acc"].tolist()
    plateau = ctx.convergence(3, 1.0)
    assert plateau == 1 and len(ctx.extra["convergence"]["val_acc"]) == 3  # within 1.0 of the best: all of it
    assert list(ctx.results) == ["baseline"]
