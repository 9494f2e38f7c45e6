"""At what scale notebook 06 can run on a CPU: EfficientViT b1 and b3 from scratch on full CIFAR-10 with 06's own
recipe (its `full` parameters: AdamW, lr, batch, crop padding, the student's dropout head), a few epochs at one
image size, one seed. Writes each model's history (validation accuracy, seconds of the epoch's steps) and a
summary: whether it learns (validation accuracy against chance) and what an epoch costs on this machine.

    python probes/efficientvit_scale.py --image-size 32 --epochs 4 --out results/probes/efficientvit-32px
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from kdcore import create_model, fit
from kdcore import experiments as ex
from kdcore.atomic import atomic_write_text
from kdcore.provenance import started_commit
from kdcore.runtime import cpu_features

REPO = Path(__file__).resolve().parents[1]


def probe(ctx: ex.Context, name: str, epochs: int, seed: int, out: Path, model_kwargs: dict, lr: float) -> dict:
    """Train `name` alone for `epochs` with the notebook's settings; its history and a one-line summary."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=ctx.data.num_classes, **model_kwargs)
    train = {k: ctx.params[k] for k in ex.TRAIN_KEYS if ctx.params.get(k) is not None}
    result = fit(model, ctx.data, **{**train, "epochs": epochs, "lr": lr, "seed": seed, "progress": False},
                 out_dir=REPO / "checkpoints" / "probes" / f"{out.name}-{name}")  # resumable; weights stay out of git
    h = result.history
    atomic_write_text(h.to_csv(index=False), out / f"{name}-history.csv")
    return {"model": name, "model_kwargs": model_kwargs, "params": sum(p.numel() for p in model.parameters()),
            "epochs": epochs, "lr": lr, "val_acc": h["val_acc"].round(4).tolist(), "best_val_acc": result.best_val_acc,
            "chance": 1 / ctx.data.num_classes, "train_seconds_median": statistics.median(h["train_seconds"]),
            "precision": result.precision}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--teacher-epochs", type=int, default=None, help="b3's epochs (default: --epochs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=None, help="a class-balanced subset (quick checks; default: all)")
    ap.add_argument("--out", required=True, help="folder for the histories and summary.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limits = {"train_limit": args.train_limit, "val_limit": args.train_limit} if args.train_limit else {}
    ctx = ex.setup("06_efficientvit", profile="full", image_size=args.image_size, seeds=[args.seed], **limits)
    p = ctx.params
    rows = [probe(ctx, p["student"], args.epochs, args.seed, out, {"drop_rate": p["drop_rate"]}, p["lr"]),
            probe(ctx, p["teacher"], args.teacher_epochs or args.epochs, args.seed, out, p["teacher_kwargs"] or {},
                  p["teacher_lr"])]
    data = f"{ctx.data.name} ({ctx.data.source}): {len(ctx.data.train)} train / {len(ctx.data.val)} val"
    summary = {"image_size": args.image_size, "seed": args.seed, "data": data, "cpu": cpu_features(),
               "threads": torch.get_num_threads(), "commit": started_commit(), "models": rows}
    atomic_write_text(json.dumps(summary, indent=1, default=str) + "\n", out / "summary.json")
    for r in rows:
        print(f"{r['model']}: val_acc by epoch {r['val_acc']} (chance {r['chance']:.2f}), "
              f"{r['train_seconds_median']:.0f} s of steps an epoch ({r['precision']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
