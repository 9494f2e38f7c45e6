"""What a fit() run is told and what it returns: TrainConfig (validated before anything trains), FitResult, and
the optimiser and lr schedule a config names."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .errors import ConfigError, unknown_name
from .runtime import PRECISIONS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "plateau", "constant")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    augment: bool = True  # random crop (zero padding `pad`) + horizontal flip, batched on the device
    pad: int = 4
    early_stopping: int | None = None  # stop after this many epochs without a better validation accuracy
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast for student and teacher, or fp32; "auto": see resolve_precision
    channels_last: bool = True  # NHWC where it pays: on CUDA always, on CPU per model (choose_channels_last)
    compile: bool = False
    teacher_cache: bool = False  # exact per-view teacher-logit cache (kdcore.cache), shared by runs of one teacher
    teacher_cache_dir: str | None = None  # also keep that cache here, for runs in other processes (implies teacher_cache)
    seed: int = 0
    deterministic: bool = False
    progress: bool = False
    max_steps_per_epoch: int | None = None  # cap for smoke runs

    def validate(self) -> "TrainConfig":
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}.")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}.")
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, SCHEDULES)
        if self.precision not in PRECISIONS:
            raise unknown_name("precision", self.precision, PRECISIONS)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}.")
        return self

    def key(self) -> str:
        """Hash of everything that changes the result (not progress or compile), for resume checks."""
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in ("progress", "compile", "device", "teacher_cache_dir")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class FitResult:
    history: pd.DataFrame
    best_epoch: int
    best_val_acc: float
    device: str
    seconds: float
    out_dir: Path | None
    resumed_from: int | None = None  # epoch the run resumed after, if it did
    precision: str = "fp32"  # what "auto" resolved to
    teacher_cache: dict | None = None  # this run's cache lookups: hits, misses, fill_fraction (None: no cache)
    channels_last: dict = dataclasses.field(default_factory=dict)  # {"student": bool, "teacher": bool}: who ran NHWC


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    """Step-wise schedules (stepped every batch) except plateau (stepped on validation accuracy)."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=max(warmup / total, 0.15))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total - warmup, 1)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if cfg.schedule == "step":
            return 0.1 ** ((t >= 0.5) + (t >= 0.75))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
