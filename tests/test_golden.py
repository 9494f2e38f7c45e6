"""Golden numerics: the training recipe's numbers are pinned, so a change that alters them is never silent.

Run store keys (kdcore.store) name a recipe version instead of hashing the sources. This test is what makes
that safe: if it fails, training numerics changed, and stored runs no longer match what the code would train.
Bump kdcore.store.RECIPE_VERSION and record the new values (`python tests/golden_run.py --record`).
"""
import json
import subprocess
import sys
from pathlib import Path

from kdcore.store import RECIPE_VERSION

HERE = Path(__file__).parent
FIX = (f"training numerics changed: bump kdcore.store.RECIPE_VERSION (now {RECIPE_VERSION}) on purpose and run "
       f"`python tests/golden_run.py --record`")


def test_two_epoch_run_reproduces_the_recorded_loss_and_weights():
    out = subprocess.run([sys.executable, str(HERE / "golden_run.py")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    records = [r for r in json.loads((HERE / "golden.json").read_text())["records"] if r["recipe"] == RECIPE_VERSION]
    assert records, f"no golden record for recipe {RECIPE_VERSION}: {FIX}"
    same_cpu = [r for r in records if r["cpu"] == got["cpu"]]
    if same_cpu:
        assert (got["train_loss"], got["weights"]) == (same_cpu[0]["train_loss"], same_cpu[0]["weights"]), FIX
    else:  # another CPU model: its rounding may differ in the last bits, never by a changed loss or step
        loss = [float.fromhex(v) for v in got["train_loss"]]
        for ref in records:
            expected = [float.fromhex(v) for v in ref["train_loss"]]
            assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(loss, expected, strict=True)), FIX
