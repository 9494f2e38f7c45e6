"""Quality and efficiency of a trained model.

Quality: accuracy, macro precision / recall / F1, per-class report and confusion matrix
(scikit-learn). Efficiency: trainable parameters, size in MB, FLOPs (torch.utils.flop_counter),
CPU latency (median of interleaved repeats, thread count reported; see latency_ms), GPU latency and
throughput when CUDA is present.
"""
from __future__ import annotations

import time
from copy import deepcopy

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .data import DataBundle, DeviceLoader
from .models import count_parameters
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
    """Accuracy, macro P/R/F1, per-class table and confusion matrix (rows = true class)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y, p = np.asarray(labels), np.asarray(predictions)
    k = range(len(classes))
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=list(k), zero_division=0)
    macro = precision_recall_fscore_support(y, p, labels=list(k), average="macro", zero_division=0)
    per_class = pd.DataFrame({"class": classes, "precision": prec, "recall": rec, "f1": f1, "support": support})
    return {"accuracy": float(accuracy_score(y, p)), "precision_macro": float(macro[0]),
            "recall_macro": float(macro[1]), "f1_macro": float(macro[2]),
            "per_class": per_class, "confusion": confusion_matrix(y, p, labels=list(k))}


def evaluate(model: nn.Module, data: DataBundle, split: str = "test", device: str = "auto") -> dict:
    """classification_metrics of `model` on a split, plus the logits (for example plots)."""
    logits, labels = predict(model, data, split, device=device)
    out = classification_metrics(labels, logits.argmax(1), data.classes)
    out["logits"], out["labels"] = logits, labels
    return out


def size_mb(model: nn.Module) -> float:
    """Bytes of parameters and buffers as stored (what a saved state_dict weighs), in MB (10^6)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 1e6


def flops(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Forward FLOPs for one input (1, C, H, W) in GFLOPs; a multiply-add counts as 2 FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape[-3:], device=device))
    return counter.get_total_flops() / 1e9


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


def gpu_latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 256, iters: int = 50) -> dict:
    """Median CUDA latency (batch 1) and bf16 throughput (images/s at `batch_size`) with CUDA events."""
    m = deepcopy(model).cuda().eval().to(memory_format=torch.channels_last)
    out = {}
    for name, bs in (("gpu_latency_ms", 1), ("gpu_batch_ms", batch_size)):
        x = torch.randn(bs, *input_shape[-3:], device="cuda").contiguous(memory_format=torch.channels_last)
        times = []
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for i in range(iters + 10):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                m(x)
                end.record()
                torch.cuda.synchronize()
                if i >= 10:
                    times.append(start.elapsed_time(end))
        out[name] = float(np.median(times))
    out["gpu_images_per_s"] = batch_size / (out.pop("gpu_batch_ms") / 1e3)
    return out


def efficiency(model: nn.Module, input_shape: tuple[int, ...], cpu_threads: int | None = None,
               min_run_time: float = 1.0) -> dict:
    """Parameters (all, and trainable: a frozen teacher has none), MB, GFLOPs and latency for inputs (C, H, W)."""
    stats = {"params": count_parameters(model, trainable_only=False), "trainable_params": count_parameters(model),
             "size_mb": size_mb(model), "gflops": flops(model, input_shape)}
    cpu = latency_ms({"model": model}, input_shape, min_run_time=min_run_time, threads=cpu_threads)["model"]
    stats.update(cpu_latency_ms=cpu["latency_ms"], cpu_threads=cpu["threads"])
    if torch.cuda.is_available():
        stats.update(gpu_latency(model, input_shape))
    return stats
