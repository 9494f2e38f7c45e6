"""The golden-numerics run: a short deterministic distillation on synthetic data, printed as JSON.

tests/test_golden.py runs it in a fresh process with the CPU kernels pinned to portable code paths (one thread,
oneDNN's SSE4.1 kernels, ATen's default capability, MKL's conditional-numerical-reproducibility mode), so that the
loss and the weights' hash do not depend on which x86 CPU runs it. A change that alters training numerics changes
them: bump kdcore.store.RECIPE_VERSION on purpose, then record the new values with

    python tests/golden_run.py --record

(one record per CPU model: the test is exact on a recorded CPU and within 1e-4 of the loss on others).
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

PINNED_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "SSE41",
              "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "CUDA_VISIBLE_DEVICES": ""}
GOLDEN = Path(__file__).with_name("golden.json")


def golden_run() -> dict:
    import torch

    from kdcore import create_model, load_dataset, make_distiller
    from kdcore.store import RECIPE_VERSION, weights_hash
    from kdcore.runtime import cpu_features, seed_everything
    from kdcore.train import fit

    torch.set_num_threads(1)
    data = load_dataset("synthetic", synthetic=dict(train_size=256, val_size=64, test_size=64))
    seed_everything(0)
    teacher = create_model("tiny_resnet", num_classes=10, width=8)  # an untrained teacher is a teacher all the same
    seed_everything(0)
    student = create_model("cnn_small", num_classes=10)
    distiller = make_distiller("kd+at", student, teacher, alpha=0.9, temperature=4.0)
    result = fit(distiller, data, epochs=2, batch_size=32, lr=0.05, device="cpu", precision="fp32",
                 channels_last=False, deterministic=True, teacher_cache=True, seed=0)
    loss = result.history["train_loss"].tolist()
    return {"recipe": RECIPE_VERSION, "train_loss": [float.hex(v) for v in loss], "weights": weights_hash(student),
            "best_val_acc": result.best_val_acc, "torch": torch.__version__,
            "cpu": cpu_features()["model name"], "machine": platform.machine()}


def main() -> None:
    missing = {k: v for k, v in PINNED_ENV.items() if os.environ.get(k) != v}
    if missing:  # re-exec with the pinned kernels: they are read when torch loads
        os.execvpe(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**os.environ, **PINNED_ENV})
    out = golden_run()
    if "--record" in sys.argv:  # one record per (recipe, CPU model): exact on the CPUs recorded
        records = json.loads(GOLDEN.read_text())["records"] if GOLDEN.exists() else []
        records = [r for r in records if (r["recipe"], r["cpu"]) != (out["recipe"], out["cpu"])] + [out]
        GOLDEN.write_text(json.dumps({"records": records}, indent=1, sort_keys=True) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
