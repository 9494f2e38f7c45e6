"""Where and how a run computes: the device, bf16 or fp32, the memory layout, seeding and the CPU's features.

Shared by fit(), co-training and the airbench teacher recipe, so every loop decides precision and layout by
the same rules, and results files name what decided them.
"""
from __future__ import annotations

import copy
import functools
import math
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
BF16_MIN_SPEEDUP = 1.2  # "auto" takes bf16 on a CPU only for at least this gain: below it, rounding is not worth it
CHANNELS_LAST_MIN_SPEEDUP = 1.1  # a CPU model goes NHWC only for at least this measured gain
CHANNELS_LAST_MIN_WIDTH = 16  # probes/repro_channels_last_cpu.py: oneDNN's heap broke at width 8 in NHWC; 16, 32 ran clean


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device='cpu' or 'auto'.")
    return torch.device(device)


@functools.lru_cache(maxsize=None)
def cpu_features() -> dict:
    """Whether bf16 can pay on this CPU, for results files: AMX tiles (the matrix units behind bf16's
    2-3.6x gains on the CIFAR rows, docs/performance.md), AVX512-BF16 (bf16 dot products only), the model name,
    and the family and model numbers, which tell CPU generations apart where a virtual machine names them all
    "AMD EPYC" (family 25 is Zen 3/4, 26 is Zen 5, and they train at different speeds)."""
    info = {"model name": platform.processor(), "cpu family": None, "model": None}
    try:
        first_core = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        first_core = ""
    for field, _, value in (line.partition(":") for line in first_core.splitlines()):
        if field.strip() in info:
            info[field.strip()] = value.strip()
    has = lambda f: bool(getattr(torch.cpu, f, lambda: False)())  # noqa: E731  (private, absent in older torch)
    return {"model name": info["model name"], "family": info["cpu family"], "model": info["model"],
            "amx": has("_is_amx_tile_supported"), "avx512_bf16": has("_is_avx512_bf16_supported")}


@functools.lru_cache(maxsize=None)
def bf16_speedup() -> float:
    """fp32 time / bf16-autocast time of a small conv training step on this CPU: best of 3 interleaved
    rounds after a warm-up (8 steps, once per process; the best round filters out other load).
    Leaves the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                              nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(32, 10))
        x, y = torch.randn(16, 3, 16, 16), torch.randint(10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    best = {False: math.inf, True: math.inf}
    for k in range(4):
        for bf16 in (False, True):
            t = step(bf16)
            if k:
                best[bf16] = min(best[bf16], t)
    return best[False] / best[True]


def resolve_precision(precision: str, device: torch.device, probe: bool = True) -> str:
    """The precision of a run, "fp32" or "bf16". "auto": bf16 on CUDA GPUs that support it; on a CPU
    only with AMX (without it, AVX512-BF16 alone gave no reliable gain on this Zen4 machine, and bf16
    costs precision) and, with `probe`, only if bf16_speedup() confirms >= BF16_MIN_SPEEDUP."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu" or not cpu_features()["amx"]:
        return "fp32"
    return "bf16" if not probe or bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"


# --------------------------------------------------------------------------- memory format
def channels_last_safe(model: nn.Module) -> bool:
    """Whether NHWC is safe on a CPU: no conv narrower than CHANNELS_LAST_MIN_WIDTH channels, the image input
    (<= 4 channels) aside. The one NHWC crash seen there (torch 2.14.1's oneDNN) was at width 8."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    wide = lambda c: c >= CHANNELS_LAST_MIN_WIDTH  # noqa: E731
    return bool(convs) and all(wide(m.out_channels) and (wide(m.in_channels) or m.in_channels <= 4) for m in convs)


def channels_last_speedup(model: nn.Module, images: torch.Tensor, train: bool) -> float:
    """NCHW time / NHWC time of `model` on `images`: a forward + backward for a student (`train`, timed on a
    copy, so its weights, BN statistics and gradients stay untouched), a no_grad forward for a frozen teacher.
    Best of 3 interleaved rounds after a warm-up; `model` is left in NCHW."""
    probe = copy.deepcopy(model).train() if train else model
    formats = (torch.contiguous_format, torch.channels_last)

    def seconds(fmt) -> float:
        probe.to(memory_format=fmt)
        x = images.contiguous(memory_format=fmt)
        t0 = time.perf_counter()
        if train:
            probe(x).float().square().mean().backward()
        else:
            with torch.no_grad():
                probe(x)
        return time.perf_counter() - t0

    best = dict.fromkeys(formats, math.inf)
    for k in range(4):
        for fmt in formats:
            t = seconds(fmt)
            if k:
                best[fmt] = min(best[fmt], t)
    probe.to(memory_format=torch.contiguous_format)
    return best[formats[0]] / best[formats[1]]


_LAYOUT_CHOICES: dict = {}  # one probe per architecture, input shape and role in a process (as bf16_speedup): runs of
# one notebook or test then share a layout, so a cached run can match an online one bit for bit, and the teacher is
# not timed again by every run that reuses it


def choose_channels_last(model: nn.Module, images: torch.Tensor, device: torch.device, train: bool,
                         probe: bool = True) -> bool:
    """NHWC for this model? On CUDA yes (cuDNN's tensor-core kernels want it). On a CPU only when
    channels_last_safe() and, with `probe`, channels_last_speedup() >= CHANNELS_LAST_MIN_SPEEDUP: on a
    2-core EPYC without AVX512, NHWC made the airbench teacher's forward 1.39x and airbench_small's training
    step 1.38x faster, student_resnet's forward only 1.06x (docs/performance.md). Timed once per process
    for each architecture, input shape and role. Without `probe` (deterministic runs: no timing may decide) NCHW."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not probe or not channels_last_safe(model):
        return False
    key = (type(model).__qualname__, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
           tuple(images.shape), train)
    if key not in _LAYOUT_CHOICES:
        _LAYOUT_CHOICES[key] = channels_last_speedup(model, images, train) >= CHANNELS_LAST_MIN_SPEEDUP
    return _LAYOUT_CHOICES[key]


def distributed_world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, (0, 1) otherwise."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (model init and dropout); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
