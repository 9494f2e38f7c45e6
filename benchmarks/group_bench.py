"""A notebook's worth of methods at one seed: trained seed-style, one run after another with a teacher
forward every step, against kdcore's co-training (kdcore.group.fit_group: one teacher forward per batch for
every method, logit methods from the exact cache it fills), in one process on the same data.

The methods are notebook 05's under a profile (baseline plus its list), the student, teacher, data and
schedule are that profile's, and both paths train the same students from the same initialisations. Equal
accuracy: each method's test accuracy from both paths is written beside the times (co-training is
bit-identical to solo runs in deterministic fp32, tests/test_group.py; here each path picks its precision and
memory layout as the notebooks do). The row goes into results/bench/<device>.json under "notebook_of_methods";
times are reported, never asserted.

    .venv/bin/python benchmarks/group_bench.py [--profile full] [--epochs 1] [--steps 0 (whole epochs)]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore import create_model, fit, make_distiller  # noqa: E402
from kdcore import experiments as ex  # noqa: E402
from kdcore import provenance  # noqa: E402
from kdcore.cache import clear_shared_caches  # noqa: E402
from kdcore.atomic import atomic_write_text  # noqa: E402
from kdcore.evaluate import evaluate  # noqa: E402
from kdcore.group import fit_group  # noqa: E402
from kdcore.runtime import cpu_features, resolve_device  # noqa: E402


def students(ctx, teacher, methods: list[str]) -> list:
    """One Distiller per method, each student initialised from the same seed."""
    out = []
    for method in methods:
        torch.manual_seed(0)
        student = create_model(ctx.student, num_classes=ctx.data.num_classes, **ctx.student_kwargs)
        out.append(make_distiller(method, student, None if method == "baseline" else teacher,
                                  alpha=ctx.alpha, temperature=ctx.temperature))
    return out


def test_accuracies(distillers, ctx, device) -> list[float]:
    return [round(evaluate(d.student, ctx.data, "test", device=device)["accuracy"], 4) for d in distillers]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="full")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="steps per epoch (0: whole epochs)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "results" / "bench"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ctx = ex.setup("05_bonus", profile=a.profile)
    teacher = ctx.teacher().model
    methods = ["baseline", *ctx.methods]
    run = dict(epochs=a.epochs, batch_size=ctx.batch_size, lr=ctx.lr, device=ctx.device, seed=0,
               max_steps_per_epoch=a.steps or None)
    device = resolve_device(ctx.device)

    solo, t0 = students(ctx, teacher, methods), time.perf_counter()
    solo_runs = [fit(d, ctx.data, teacher_cache=False, **run) for d in solo]
    seed_style = time.perf_counter() - t0
    clear_shared_caches()
    group, t0 = students(ctx, teacher, methods), time.perf_counter()
    group_runs = fit_group(group, ctx.data, teacher_cache=True, **run)
    shared = time.perf_counter() - t0

    row = {"methods": methods, "profile": a.profile, "student": ctx.student, "teacher": ctx.params["teacher"],
           "epochs": a.epochs, "steps_per_epoch": a.steps or len(ctx.data.train) // ctx.batch_size,
           "train_images": len(ctx.data.train), "precision": [r.precision for r in solo_runs][0],
           "seed_style_s": round(seed_style, 1), "co_trained_s": round(shared, 1),
           "ratio": round(seed_style / shared, 2), "target_4x_met": seed_style / shared >= 4,
           "test_acc_seed_style": test_accuracies(solo, ctx, device),
           "test_acc_co_trained": test_accuracies(group, ctx, device),
           "layouts": {"seed_style": [r.channels_last for r in solo_runs], "co_trained": group_runs[0].channels_last}}
    path = Path(a.out) / f"{'cuda' if device.type == 'cuda' else 'cpu'}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record["notebook_of_methods"] = {**row, "cpu": cpu_features(), "threads": torch.get_num_threads(),
                                     "commit": provenance.git_commit(), "data": provenance.provenance(ctx.data),
                                     "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(json.dumps(record, indent=1) + "\n", path)
    print(f"{len(methods)} methods, {a.epochs} epoch(s): seed-style {seed_style:.0f} s, co-trained {shared:.0f} s, "
          f"ratio {seed_style / shared:.2f}x (target 4x); test acc {row['test_acc_seed_style']} vs "
          f"{row['test_acc_co_trained']}")


if __name__ == "__main__":
    main()
