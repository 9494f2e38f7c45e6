"""One airbench-family net trained alone with airbench94's own recipe on full CIFAR-10: what a width setting reaches.

The homework target needs a student of <= 100 k parameters at macro-F1 >= 0.85 with KD; the seed students
stop near 0.78-0.80 alone after 30 epochs. This probe asks whether airbench's design (whitening, identity init,
early pooling, lookahead, label smoothing) at student width reaches that level alone. One seed: it shows what a
configuration reaches, not a gain. Writes results/probes/<name>/summary.json atomically (history included).

    .venv/bin/python probes/probe_airbench.py --widths 16 48 64 --epochs 9.9 [--seed 0] [--name NAME]
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

from kdcore import airbench, load_dataset  # noqa: E402
from kdcore.atomic import atomic_write_text  # noqa: E402
from kdcore.evaluate import classification_metrics  # noqa: E402
from kdcore.experiments import resolve_data_root  # noqa: E402
from kdcore.provenance import git_commit  # noqa: E402
from kdcore.models import AirbenchNet, count_parameters  # noqa: E402
from kdcore.runtime import cpu_features, seed_everything  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs=3, default=(16, 48, 64), help="conv widths of the three stages")
    p.add_argument("--epochs", type=float, default=airbench.EPOCHS)
    p.add_argument("--batch-size", type=int, default=airbench.BATCH_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="default: $KDCORE_DATA, else ../shared/data")
    p.add_argument("--name", default=None, help="folder under results/probes (default: from the widths and epochs)")
    args = p.parse_args(argv)
    commit, started = git_commit(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data = load_dataset("cifar10", resolve_data_root(args.data_root), seed=0)
    seed_everything(args.seed)
    model = AirbenchNet(data.num_classes, data.in_channels, widths=tuple(args.widths))
    t0 = time.perf_counter()
    run = airbench.train(model, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    test_logits = airbench.view_logits(model, data.test.images, data, airbench.TTA_VIEWS[:1])[0]
    metrics = classification_metrics(data.test.labels, test_logits.argmax(1).cpu(), data.classes)
    name = args.name or f"airbench{'-'.join(map(str, args.widths))}-{args.epochs:g}ep-seed{args.seed}"
    summary = {"probe": name, "model": f"AirbenchNet(widths={tuple(args.widths)})", "params": count_parameters(model),
               "recipe": "kdcore.airbench.train (airbench94's)", "epochs": args.epochs, "batch_size": args.batch_size,
               "seed": args.seed, "dataset": data.describe(), "test_acc": metrics["accuracy"],
               "test_f1": metrics["f1_macro"], "test_acc_tta": run["test_acc_tta"], "val_acc": run["val_acc"],
               "val_acc_tta": run["val_acc_tta"], "train_seconds": run["train_seconds"],
               "seconds": time.perf_counter() - t0, "precision": run["precision"], "threads": run["threads"],
               "cpu": cpu_features(), "torch": torch.__version__, "commit": commit, "started": started,
               "history": run["history"]}
    path = atomic_write_text(json.dumps(summary, indent=2), ROOT / "results" / "probes" / name / "summary.json")
    print(f"{name}: {summary['params']:,} params, test acc {metrics['accuracy']:.4f} (TTA {run['test_acc_tta']:.4f}), "
          f"macro-F1 {metrics['f1_macro']:.4f}, {run['train_seconds']:.0f} s training -> {path}")
    return summary


if __name__ == "__main__":
    main()
