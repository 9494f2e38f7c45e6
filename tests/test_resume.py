"""Resume after SIGKILL replays exactly; corrupt checkpoints are clear errors and are left untouched."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from kdcore import cli
from kdcore.train import TIMING_COLUMNS

# `python -m kdcore train`, with a sleep in every training step so an epoch lasts ~1 s and the kill
# lands inside an epoch (the delay changes timing only, never the numbers).
LAUNCHER = textwrap.dedent("""
    import os, sys, time
    from kdcore.distill import Distiller
    delay = float(os.environ.get("KD_TEST_STEP_DELAY", "0"))
    forward_train = Distiller.forward_train
    def slow(self, *a, **k):
        time.sleep(delay)
        return forward_train(self, *a, **k)
    Distiller.forward_train = slow
    from kdcore.cli import main
    sys.exit(main(sys.argv[1:]))
""")
ARGS = ["--dataset", "synthetic", "--synthetic-size", "256", "--student", "student_light", "--epochs", "3",
        "--batch-size", "32", "--lr", "0.05", "--seed", "3", "--deterministic", "--device", "cpu"]


def _start(script, out, delay):
    env = dict(os.environ, OMP_NUM_THREADS="1", KD_TEST_STEP_DELAY=str(delay), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(script), *ARGS, "--out-dir", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
    return stdout, json.loads(stdout.strip().splitlines()[-1])


def _rows(path):
    return len(pd.read_csv(path)) if path.exists() else 0


def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted_run(tmp_path):
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    reference = _start(script, ref_dir, 0.0)  # runs alongside the killed one

    victim = _start(script, run_dir, 0.1)
    deadline = time.time() + 90
    while _rows(run_dir / "history.csv") < 2:  # epoch 2 checkpointed: epoch 3 is running now
        assert victim.poll() is None, victim.communicate()
        assert time.time() < deadline, "epoch 2 never finished"
        time.sleep(0.02)
    time.sleep(0.3)  # well inside epoch 3, the last one (8 steps x >= 0.1 s)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert _rows(run_dir / "history.csv") == 2, "the kill did not land in epoch 3"
    assert torch.load(run_dir / "last.pt", weights_only=False)["epoch"] == 1
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name]  # atomic writes: no partial files

    stdout, resumed = _finish(_start(script, run_dir, 0.0))  # same arguments
    assert "after epoch 2" in stdout and resumed["resumed_from"] == 2
    _, ref = _finish(reference)
    assert ref["resumed_from"] is None
    assert ref["channels_last"] == resumed["channels_last"] == {"student": False, "teacher": False}  # deterministic

    for key in ("best_epoch", "best_val_acc", "final_val_acc", "test_acc", "test_f1", "weights_sha1", "epochs_run"):
        assert resumed[key] == ref[key], key
    h_ref, h_run = (pd.read_csv(d / "history.csv").drop(columns=list(TIMING_COLUMNS)) for d in (ref_dir, run_dir))
    pd.testing.assert_frame_equal(h_run, h_ref, check_exact=True)
    for name, key in (("last.pt", "student"), ("best.pt", "model")):
        a, b = (torch.load(d / name, weights_only=False)[key] for d in (ref_dir, run_dir))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


SMALL = ["--dataset", "synthetic", "--synthetic-size", "64", "--student", "student_light", "--epochs", "1",
         "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main([*SMALL, "--out-dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_checkpoint_is_a_clear_error_and_left_untouched(finished_run, tmp_path, capsys, damage):
    out = tmp_path / "run"
    out.mkdir()
    good = (finished_run / "last.pt").read_bytes()
    bad = good[: len(good) // 2] if damage == "truncated" else b"not a checkpoint\x00" * 10
    (out / "last.pt").write_bytes(bad)
    best = (finished_run / "best.pt").read_bytes()
    (out / "best.pt").write_bytes(best)
    capsys.readouterr()

    assert cli.main([*SMALL, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(out / "last.pt") in err and "truncated or corrupt" in err and "Delete it" in err
    assert (out / "last.pt").read_bytes() == bad and (out / "best.pt").read_bytes() == best  # no fresh start over it
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt"]


def test_checkpoint_of_another_configuration_is_refused(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes((finished_run / "last.pt").read_bytes())
    assert cli.main([*SMALL, "--lr", "0.01", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and str(out / "last.pt") in err and "another out_dir" in err
    assert (out / "last.pt").read_bytes() == (finished_run / "last.pt").read_bytes()
