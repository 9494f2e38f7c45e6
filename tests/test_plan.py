"""The cost plan: probes time the real step, train and store nothing, and the totals add up by hand."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore import plan

REPO = Path(__file__).resolve().parents[1]


def test_projection_and_the_shared_pass_add_up():
    assert plan.project({"steps_per_epoch": 10, "step": 0.5, "fixed": 2.0}, epochs=3) == 3 * (10 * 0.5 + 2.0)
    run = lambda label, group, seconds, forward: {"kind": "run", "label": label, "stored": False, "group": group,  # noqa: E731
                                                  "seconds": seconds, "steps": 100, "teacher_forward_s": forward}
    entries = [run("kd", "g0", 100.0, 0.4), run("at", "g0", 120.0, 0.4), run("baseline", "g0", 50.0, None),
               run("kd", "g1", 100.0, 0.4), {"kind": "run", "label": "kd", "stored": True, "seconds": 0.0},
               {"kind": "teacher", "label": "t", "stored": False, "seconds": 30.0}]
    totals = plan.summarize(entries)
    # group g0 pays the teacher's 100 forwards (40 s) once instead of twice; g1 alone saves nothing
    assert totals["seed_style_seconds"] == 370.0 + 30.0
    assert totals["shared_pass_seconds"] == pytest.approx((60 + 80 + 50 + 40) + 100 + 30.0)
    assert (totals["runs"], totals["stored"], totals["to_train"], totals["groups"]) == (5, 1, 4, 2)


def test_a_run_asked_for_twice_is_planned_once():
    """07 asks for its small student among its students and again on its own; 02-05 each load 01's baseline."""
    run = lambda key, seconds: {"kind": "run", "label": "kd", "key": key, "stored": False, "group": "g",  # noqa: E731
                                "seconds": seconds, "steps": 10, "teacher_forward_s": None}
    entries = [run("a", 10.0), run("b", 20.0), run("a", 10.0), run(None, 5.0), run(None, 5.0),
               {"kind": "teacher", "label": "t", "key": "a", "stored": False, "seconds": 3.0}]
    assert [e["seconds"] for e in plan.unique(entries)] == [10.0, 20.0, 5.0, 5.0, 3.0]
    totals = plan.summarize(entries)
    assert (totals["runs"], totals["to_train"], totals["seed_style_seconds"]) == (4, 4, 43.0)


def test_plan_of_a_notebook_probes_every_run_and_stores_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdcore", "report", "--profile", "smoke", "--plan", "--notebooks",
                           "02", "--out", str(tmp_path / "new"), "--param", f"checkpoint_dir={tmp_path / 'checkpoints'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((tmp_path / "new" / "smoke" / "plan.json").read_text())  # --out is created
    runs = [e for e in out["entries"] if e["kind"] == "run"]
    assert runs and not any(e["stored"] for e in runs) and all(e["seconds"] > 0 for e in runs)
    assert {e["label"] for e in runs} >= {"baseline", "kd"} and {e["seed"] for e in runs} == {0, 1}
    assert [e["kind"] for e in out["entries"]].count("teacher") >= 1 and out["cpu"]["model name"]
    assert out["totals"]["shared_pass_seconds"] <= out["totals"]["seed_style_seconds"]
    assert not list((tmp_path / "checkpoints").glob("store/*/*"))  # a probe is never a stored run
    assert sorted(p.name for p in (tmp_path / "new" / "smoke").iterdir()) == ["plan.json"]  # no pages published
    assert "to train in" in proc.stdout and "wrote" in proc.stdout


def test_the_probe_times_the_steps_without_the_validation_pass(monkeypatch):
    """A validation pass that takes longer in the shorter run must not move the step: a difference of whole
    fits would give a negative step here (clipped to 0), the training loops give theirs exactly."""
    import time
    from types import SimpleNamespace

    import pandas as pd

    validation = iter([0.0, 0.06, 0.0])  # seconds of the warm-up, short and long probe's validation passes

    def fit(model, data, *, max_steps_per_epoch, **kwargs):
        time.sleep(next(validation))
        return SimpleNamespace(history=pd.DataFrame([{"train_seconds": 0.001 * max_steps_per_epoch}]))

    monkeypatch.setattr(plan, "_PROBES", {})
    data = SimpleNamespace(train=[None] * 100)
    probe, _ = plan.probe_fit(fit, None, data, "key", batch_size=10)
    assert probe["step"] == pytest.approx(0.001) and probe["steps_per_epoch"] == 10
    assert probe["fixed"] >= 0.05  # the short run's validation is in the epoch's fixed part
