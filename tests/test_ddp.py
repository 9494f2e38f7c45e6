"""Two CPU ranks under torchrun (gloo): weights stay identical, accuracy is sane, only rank 0 writes."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")

# Runs `kdcore.cli.main` like `python -m kdcore train`, but on ranks other than 0 every file write
# of the train loop raises, so the run fails if anyone but rank 0 writes.
LAUNCHER = textwrap.dedent("""
    import os, sys
    import kdcore.train as train
    if int(os.environ["RANK"]) != 0:
        def forbidden(obj, path, *a, **k):
            raise AssertionError(f"rank {os.environ['RANK']} tried to write {path}")
        train.atomic_save = forbidden
        train.atomic_write_text = forbidden
    from kdcore.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_training_stays_in_sync_and_only_rank_0_writes(tmp_path):
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script),
           "--dataset", "synthetic", "--synthetic-size", "640", "--student", "student_light", "--epochs", "3",
           "--batch-size", "32", "--lr", "0.05", "--device", "cpu", "--seed", "0", "--out-dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    summary = json.loads([line for line in lines if line.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["seed"] == 0
    assert set(summary["channels_last"]) == {"student", "teacher"}  # rank 0's layout, broadcast to rank 1
    assert summary["precision"] in ("fp32", "bf16") and "amx" in summary["cpu"] and summary["commit"]  # which run
    h = summary["weights_sha1"]
    assert len(h) == 2 and h[0] == h[1], f"ranks ended with different weights: {h}"
    assert summary["test_acc"] > 0.5 and summary["best_val_acc"] > 0.4  # chance is 0.1
    # only rank 0 prints: one line per epoch, one JSON line
    assert sum(line.startswith("epoch") for line in lines) == 3
    assert sum(line.startswith("{") for line in lines) == 1
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "history.csv", "last.pt"]
