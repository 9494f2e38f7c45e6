"""Argument checks and float32 helpers shared by every loss: one clear ConfigError per bad argument,
and autocast switched off so a loss is exact under bf16."""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError

_REDUCTIONS = ("batchmean", "none")


def _fp32_region(tensor: torch.Tensor):
    """Context that disables autocast on `tensor`'s device (so mm/conv stay float32)."""
    device_type = tensor.device.type
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if (available(device_type) if available else device_type in ("cpu", "cuda")):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Upcast to float32 (float64 is kept: it is already at least as precise)."""
    return x if x.dtype == torch.float64 else x.float()


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ConfigError(
            f"{name} has shape {tuple(x.shape)}; expected a non-empty batch (B, ...) with B >= 1."
        )
    return x


def _check_batch(student: torch.Tensor, teacher: torch.Tensor, what: str = "features") -> None:
    _check_tensor(f"student {what}", student)
    _check_tensor(f"teacher {what}", teacher)
    if student.shape[0] != teacher.shape[0]:
        raise ConfigError(
            f"Batch sizes differ: student {what} {tuple(student.shape)} vs teacher {what} "
            f"{tuple(teacher.shape)}; feed the same batch of images to both networks."
        )


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    _check_batch(student_logits, teacher_logits, "logits")
    for who, x in (("student", student_logits), ("teacher", teacher_logits)):
        if x.dim() != 2:
            raise ConfigError(
                f"{who} logits have shape {tuple(x.shape)}; expected (batch, num_classes)."
            )
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ConfigError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} have different class counts: teacher and student "
            "must predict the same classes (build both heads with the same num_classes)."
        )


def _check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ConfigError(f"temperature must be a number, got {temperature!r}.") from None
    if not (t > 0 and math.isfinite(t)):
        raise ConfigError(
            f"temperature must be a finite number > 0, got {temperature!r}; "
            "use e.g. 4.0 (the usual CIFAR setting) or 1.0 for plain softmax."
        )
    return t


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")


def _check_weight(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}.") from None
    if not (v >= 0 and math.isfinite(v)):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")
    return v


def _resolve_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Per-term weights; None means the mean over the n terms (1/n each)."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ConfigError(
            f"Got {len(weights)} weights for {n} layer pairs; pass one weight per pair "
            "or weights=None for 1/L each."
        )
    return weights


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample.mean() if reduction == "batchmean" else per_sample


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) = sum_c p_c (log p_c - log q_c), from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


def _check_maps(student_feat: torch.Tensor, teacher_feat: torch.Tensor, what: str) -> None:
    _check_batch(student_feat, teacher_feat)
    for who, x in (("student", student_feat), ("teacher", teacher_feat)):
        if x.dim() != 4:
            raise ConfigError(
                f"{what} needs (B, C, H, W) feature maps; the {who} feature has shape "
                f"{tuple(x.shape)}. Hook a convolutional block output instead."
            )
