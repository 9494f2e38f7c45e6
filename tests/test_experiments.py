"""Fast unit tests of kdcore.experiments: teacher reuse, run_seeds and write_results on tiny synthetic data."""
import json

import pandas as pd
import pytest

from kdcore import experiments as ex
from kdcore import load_dataset, profiles

TINY = dict(epochs=1, lr=0.05, batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", synthetic=dict(train_size=160, val_size=40, test_size=40))


def test_get_teacher_trains_once_then_loads(data, tmp_path):
    before = ex.TEACHER_TRAININGS
    first = ex.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), checkpoint_dir=tmp_path, **TINY)
    assert first.trained and first.path.exists() and ex.TEACHER_TRAININGS == before + 1
    mtime = first.path.stat().st_mtime_ns
    second = ex.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), checkpoint_dir=tmp_path, **TINY)
    assert not second.trained and ex.TEACHER_TRAININGS == before + 1
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert second.test_acc == pytest.approx(first.test_acc)
    other = ex.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), checkpoint_dir=tmp_path, **{**TINY, "lr": 0.01})
    assert other.key != first.key and ex.TEACHER_TRAININGS == before + 2


def test_run_seeds_and_write_results(data, tmp_path):
    teacher = ex.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), checkpoint_dir=tmp_path, **TINY)
    base = ex.run_seeds("baseline", data, student="student_light", seeds=[0, 1], checkpoint_dir=tmp_path, **TINY)
    kd = ex.run_seeds("kd", data, student="student_light", seeds=[0, 1], teacher=teacher.model,
                      distill=dict(alpha=0.5, temperature=2.0), checkpoint_dir=tmp_path, **TINY)
    assert list(base.runs["seed"]) == [0, 1] and set(kd.runs["method"]) == {"kd"}
    for col in ("test_acc", "test_f1", "precision", "recall", "val_acc", "best_epoch", "seconds", "params"):
        assert col in kd.runs
    assert set(kd.histories) == {0, 1} and "loss_kd" in kd.histories[0]
    again = ex.run_seeds("baseline", data, student="student_light", seeds=[0, 1], checkpoint_dir=tmp_path, **TINY)
    pd.testing.assert_series_equal(again.runs["test_acc"], base.runs["test_acc"])  # reused from the run cache

    runs = pd.concat([base.runs, kd.runs])
    path = ex.write_results("unit", "00_test", {"runs": runs, "baseline": "baseline",
                                                "teacher": {"name": "tiny_resnet", "test_acc": teacher.test_acc},
                                                "efficiency": {"kd": {"params": 1, "size_mb": 0.1, "latency_ms": 0.5}},
                                                "run_info": ex.run_info({"profile": "unit"}, data)}, tmp_path)
    res = json.loads(path.read_text())
    assert path == tmp_path / "unit" / "00_test.json"
    by = {m["method"]: m for m in res["metrics"]}
    assert by["baseline"]["n"] == 2 and by["baseline"]["delta_acc"] == 0 and by["kd"]["params"] == 1
    assert "±" in by["kd"]["test_acc"] and isinstance(by["kd"]["clear_gain"], bool)
    assert res["run_info"]["dataset"]["source"] == "synthetic gratings" and res["teacher"]["name"] == "tiny_resnet"
    assert not list(tmp_path.glob("unit/.*tmp*"))  # atomic write leaves no temp file


def test_profiles_cover_every_notebook():
    for name in profiles.PROFILES:
        for nb in profiles.NOTEBOOKS:
            p = profiles.params_for(name, nb)
            assert p["profile"] == name and len(p["seeds"]) >= 2
    assert profiles.params_for("smoke", "07_eurosat")["synthetic"]["image_size"] == 64
