"""Quality and efficiency of a trained model.

Quality: accuracy, macro precision / recall / F1, per-class report and confusion matrix (kdcore.metrics,
the same arithmetic as validation). Efficiency: size in MB and CPU latency (median of interleaved
repeats, thread count reported; see latency_ms).
"""
from __future__ import annotations

import time
from copy import deepcopy

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .data import DataBundle, DeviceLoader
from .metrics import confusion_from_predictions, metrics_from_confusion, per_class_from_confusion
from .runtime import resolve_device


@torch.no_grad()
def predict(model: nn.Module, data: DataBundle, split: str = "test", batch_size: int = 256,
            device: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 on CPU, labels) of `model` on one split, in the split's order."""
    device = resolve_device(device)
    model = model.to(device).eval()
    loader = DeviceLoader(data.split(split), data, batch_size, device=device)
    logits = [model(b.images).float().cpu() for b in loader]
    return torch.cat(logits), data.split(split).labels.clone()


def classification_metrics(labels, predictions, classes: list[str]) -> dict:
    """Accuracy, macro P/R/F1, per-class table and confusion matrix (rows = true class), from the confusion
    matrix that validation uses too (kdcore.metrics)."""
    cm = confusion_from_predictions(torch.as_tensor(np.asarray(labels)), torch.as_tensor(np.asarray(predictions)),
                                    len(classes))
    macro, per_class = metrics_from_confusion(cm), per_class_from_confusion(cm)
    table = pd.DataFrame({"class": classes, **{k: v.numpy() for k, v in per_class.items()}})
    table["support"] = table["support"].astype(int)
    return {"accuracy": macro["acc"], "precision_macro": macro["precision"], "recall_macro": macro["recall"],
            "f1_macro": macro["f1"], "per_class": table, "confusion": cm.numpy()}


def evaluate(model: nn.Module, data: DataBundle, split: str = "test", device: str = "auto") -> dict:
    """classification_metrics of `model` on a split, plus the logits (for example plots)."""
    logits, labels = predict(model, data, split, device=device)
    out = classification_metrics(labels, logits.argmax(1), data.classes)
    out["logits"], out["labels"] = logits, labels
    return out


def size_mb(model: nn.Module) -> float:
    """Bytes of parameters and buffers as stored (what a saved state_dict weighs), in MB (10^6)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 1e6


def latency_ms(models: dict[str, nn.Module], input_shape: tuple[int, ...], repeats: int = 20,
               min_run_time: float = 0.5, warmup: int = 3, threads: int | None = None) -> dict[str, dict]:
    """Median CPU latency of one forward at batch 1 for several models, measured interleaved.

    Why interleaved: on a shared CPU the load changes from second to second, so models timed one after the
    other get different machines. Here every round runs each model once (in a rotating order) until at least
    `repeats` rounds and `min_run_time` seconds have passed, after `warmup` untimed calls each; a load spike
    then hits all models alike. Returns {name: {"latency_ms": median, "threads": torch CPU threads used}}.
    """
    if not models:
        return {}
    threads = threads or torch.get_num_threads()
    copies = {name: deepcopy(m).cpu().float().eval() for name, m in models.items()}
    names = list(copies)
    x = torch.randn(1, *input_shape[-3:])
    times: dict[str, list[float]] = {name: [] for name in names}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for name in names:
                for _ in range(warmup):
                    copies[name](x)
            start, rounds = time.perf_counter(), 0
            while rounds < repeats or time.perf_counter() - start < min_run_time:
                for name in names[rounds % len(names):] + names[:rounds % len(names)]:
                    t0 = time.perf_counter()
                    copies[name](x)
                    times[name].append(time.perf_counter() - t0)
                rounds += 1
    finally:
        torch.set_num_threads(previous)
    return {name: {"latency_ms": float(np.median(t)) * 1e3, "threads": threads} for name, t in times.items()}
