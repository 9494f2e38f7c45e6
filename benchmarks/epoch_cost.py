"""What one epoch of each `full`-profile configuration costs on this machine, measured with kdcore's own train_step.

The full profile's budget (the whole suite in <= 150 min on 2 AMX cores) is checked against this: each
row times `train.train_step` on batches of the profile's image size and model pair (synthetic pixels: the cost
does not depend on them), interleaved round-robin so load hits every row alike, and projects one epoch over the
full training split. Teachers' rows time a plain cross-entropy step of the teacher. Precision and memory
format are what fit() picks here ("auto"; choose_layout). Writes results/bench/epoch_cost-<device>.json
atomically; nothing is asserted.

    .venv/bin/python benchmarks/epoch_cost.py [--steps 5] [--warmup 2] [--device auto]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore import create_model, load_dataset, make_distiller  # noqa: E402
from kdcore.atomic import atomic_write_text  # noqa: E402
from kdcore.data import DeviceLoader  # noqa: E402
from kdcore.provenance import git_commit  # noqa: E402
from kdcore.runtime import cpu_features, resolve_device, resolve_precision  # noqa: E402
from kdcore.train import apply_layout, choose_layout, train_step  # noqa: E402

# (row, student, teacher or None, method, image size, batch size, full training-split size); the full profile's pairs
CONFIGS = [
    ("CIFAR-10 simplenet baseline", "simplenet", None, "baseline", 32, 128, 45_000),
    ("CIFAR-10 simplenet KD, online teacher", "simplenet", "airbench", "kd", 32, 128, 45_000),
    ("CIFAR-10 simplenet AT (feature term)", "simplenet", "airbench", "at", 32, 128, 45_000),
    ("CIFAR-10 airbench_small baseline", "airbench_small", None, "baseline", 32, 128, 45_000),
    ("CIFAR-10 airbench_small KD, online teacher", "airbench_small", "airbench", "kd", 32, 128, 45_000),
    ("CIFAR-10 airbench_small AT (feature term)", "airbench_small", "airbench", "at", 32, 128, 45_000),
    ("CIFAR-10 airbench teacher (CE step)", "airbench", None, "baseline", 32, 512, 45_000),
    ("EuroSAT smallmynet baseline", "smallmynet", None, "baseline", 64, 64, 21_600),
    ("EuroSAT smallmynet KD, online teacher", "smallmynet", "airbench", "kd", 64, 64, 21_600),
    ("EuroSAT airbench teacher (CE step)", "airbench", None, "baseline", 64, 256, 21_600),
    ("CIFAR-10 64 px efficientvit_b1 baseline", "efficientvit_b1", None, "baseline", 64, 128, 45_000),
    ("CIFAR-10 64 px efficientvit_b3 teacher", "efficientvit_b3", None, "baseline", 64, 128, 45_000),
    ("CIFAR-10 64 px efficientvit_b1 KD, online teacher", "efficientvit_b1", "efficientvit_b3", "kd", 64, 128, 45_000),
]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    a = p.parse_args(argv)
    commit = git_commit()  # at the start: the code that runs, not edits made while it runs
    device = resolve_device(a.device)
    precision = resolve_precision("auto", device)
    bf16 = precision == "bf16"
    print(f"device={device} precision={precision} threads={torch.get_num_threads()} cpu={cpu_features()}", flush=True)
    rows = []
    for name, student, teacher, method, size, batch_size, n_train in CONFIGS:
        torch.manual_seed(0)
        data = load_dataset("synthetic", synthetic=dict(train_size=batch_size * (a.steps + a.warmup), val_size=16,
                                                         test_size=16, image_size=size))
        s = create_model(student, num_classes=10)
        t = create_model(teacher, num_classes=10).eval() if teacher else None
        distiller = make_distiller(method, s, t).to(device).train()
        layout = choose_layout(distiller, next(iter(DeviceLoader(data.train, data, 64, device=device))).images, device)
        apply_layout(distiller, layout)  # NHWC where fit() would pick it
        loader = DeviceLoader(data.train, data, batch_size, device=device, augment=True, shuffle=True, drop_last=True,
                              channels_last=layout["student"])
        opt = torch.optim.SGD(s.parameters(), lr=0.01, momentum=0.9)
        rows.append(dict(row=name, student=student, teacher=teacher, method=method, image_size=size,
                         batch_size=batch_size, train_images=n_train, channels_last=layout, batches=list(loader),
                         distiller=distiller,
                         opt=opt, times=[]))
    for k in range(a.warmup + a.steps):  # round-robin: one step of every row, then the next
        for r in rows:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(r["distiller"], r["batches"][k], r["opt"], bf16=bf16)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k >= a.warmup:
                r["times"].append(time.perf_counter() - t0)
        print(f"round {k + 1}/{a.warmup + a.steps} done", flush=True)
    table = []
    print(f"\n{'configuration':<52} {'img/s':>8} {'epoch s (full split)':>21}")
    for r in rows:
        step = statistics.median(r["times"])
        ips = r["batch_size"] / step
        epoch_s = r["train_images"] / ips
        print(f"{r['row']:<52} {ips:>8.0f} {epoch_s:>21.0f}")
        table.append({k: r[k] for k in ("row", "student", "teacher", "method", "image_size", "batch_size",
                                         "train_images", "channels_last")} | {"step_s": step, "images_per_s": ips, "epoch_s": epoch_s})
    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": cpu_features(), "precision": precision, "commit": commit, "steps": a.steps,
              "warmup": a.warmup, "rows": table,
              "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    out = atomic_write_text(json.dumps(result, indent=2) + "\n", Path(a.out) / f"epoch_cost-{device.type}.json")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
