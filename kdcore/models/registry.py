"""The model registry: every teacher and student by name, with its stage modules for feature distillation."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, PretrainedUnavailableError, unknown_name

from .airbench import AirbenchNet
from .cifar import (CNNSmall, SimpleNet, SmallMyNet, StudentNetDepthwiseSkip, StudentNetLight, StudentNetSeparable,
                    StudentResNet, TinyResNet)
from .hub import _resnet18_cifar, _timm, _torchvision

_ROLES = ("teacher", "student")


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model: how to build it and which modules are its stages."""
    name: str
    builder: Callable[..., nn.Module]
    feature_blocks: tuple[str, ...]
    role: str  # "teacher" | "student"
    source: str  # "kdcore" | "torchvision" | "timm"
    description: str




_RESNET_BLOCKS = ("layer1", "layer2", "layer3", "layer4")
# 24 (whitening bias) + 216·16 + 9·16² + 9·16·48 + 9·48² + 9·48·64 + 9·64² + 2·(16+48+64) (BN shifts) + 64·10 = 98,840
AIRBENCH_SMALL_WIDTHS = (16, 48, 64)
_STAGES3 = ("stage1", "stage2", "stage3")
_TIMM_STAGES = ("stages.0", "stages.1", "stages.2", "stages.3")


def _tv(arch: str) -> Callable[..., nn.Module]:
    return functools.partial(_torchvision, arch)


def _tm(arch: str) -> Callable[..., nn.Module]:
    return functools.partial(_timm, arch)


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("resnet18_cifar", _resnet18_cifar, _RESNET_BLOCKS, "teacher", "torchvision",
              "ResNet-18 with a 3×3 stride-1 stem and no max-pool (CIFAR-style), 11.2M params"),
    ModelSpec("resnet50", _tv("resnet50"), _RESNET_BLOCKS, "teacher", "torchvision", "ResNet-50, 23.5M params"),
    ModelSpec("resnet101", _tv("resnet101"), _RESNET_BLOCKS, "teacher", "torchvision", "ResNet-101, 42.5M params"),
    ModelSpec("wide_resnet50_2", _tv("wide_resnet50_2"), _RESNET_BLOCKS, "teacher", "torchvision",
              "Wide ResNet-50-2, 66.9M params"),
    ModelSpec("efficientnet_b4", _tv("efficientnet_b4"), ("features.2", "features.3", "features.5", "features.7"),
              "teacher", "torchvision", "EfficientNet-B4, 17.6M params"),
    ModelSpec("convnext_tiny", _tv("convnext_tiny"), ("features.1", "features.3", "features.5", "features.7"),
              "teacher", "torchvision", "ConvNeXt-Tiny, 27.8M params"),
    ModelSpec("efficientvit_b1", _tm("efficientvit_b1"), _TIMM_STAGES, "teacher", "timm",
              "EfficientViT-B1 (MIT), 7.5M params"),
    ModelSpec("efficientvit_b3", _tm("efficientvit_b3"), _TIMM_STAGES, "teacher", "timm",
              "EfficientViT-B3 (MIT), 46.1M params"),
    ModelSpec("airbench", AirbenchNet, ("block1", "block2", "block3"), "teacher", "kdcore",
              "airbench94-style CIFAR net (Keller Jordan): frozen whitening + 64/256/256 conv stages, 1.97M params"),
    ModelSpec("tiny_resnet", TinyResNet, ("layer1", "layer2", "layer3"), "teacher", "kdcore",
              "3-stage ResNet (32/64/128 × width/32), 0.31M params: a teacher trainable on CPU"),
    ModelSpec("airbench_small", functools.partial(AirbenchNet, widths=AIRBENCH_SMALL_WIDTHS), ("block1", "block2", "block3"),
              "student", "kdcore", "airbench94's design at student width 16/48/64 (whitening set by fit), 98,840 params"),
    ModelSpec("smallmynet", SmallMyNet, _STAGES3, "student", "kdcore",
              "Depthwise-separable + squeeze-excitation student, exactly 89,397 params"),
    ModelSpec("simplenet", SimpleNet, _STAGES3, "student", "kdcore", "3 conv-BN-ReLU-maxpool stages 32/64/128, 95K params"),
    ModelSpec("student_resnet", StudentResNet, _STAGES3, "student", "kdcore", "ResNet-8 with widths 16/32/64, 78K params"),
    ModelSpec("student_separable", StudentNetSeparable, _STAGES3, "student", "kdcore",
              "Depthwise-separable stages 64/128/256, 50K params"),
    ModelSpec("student_depthwise_skip", StudentNetDepthwiseSkip, _STAGES3, "student", "kdcore",
              "Depthwise-separable stages with residual skips, 142K params"),
    ModelSpec("student_light", StudentNetLight, _STAGES3, "student", "kdcore", "Three conv layers 16/32/48, 20K params"),
    ModelSpec("cnn_small", CNNSmall, _STAGES3, "student", "kdcore", "The homework's plain CNN (no BatchNorm), 95K params"),
)}

# The seed projects' class names (SmallMyNet, StudentNetLight, ...) keep working as model names.
_ALIASES = {s.builder.__name__.lower(): s.name for s in MODELS.values() if s.source == "kdcore" and isinstance(s.builder, type)}


def list_models(role: str | None = None) -> list[str]:
    """Registered model names, optionally only the teachers or only the students."""
    if role is not None and role not in _ROLES:
        raise unknown_name("role", role, _ROLES)
    return sorted(n for n, s in MODELS.items() if role is None or s.role == role)


def _spec(name: str) -> ModelSpec:
    key = str(name).lower()
    spec = MODELS.get(key) or MODELS.get(_ALIASES.get(key, ""))
    if spec is None:
        raise unknown_name("model", name, list_models())
    return spec


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, pretrained: bool | str = False,
                 **kwargs) -> nn.Module:
    """Build a registered model; `model.kd_spec` tells distillation code where its feature blocks are.

    pretrained: False; True for the published ImageNet weights (torchvision / timm teachers);
    or the path of a local checkpoint (a state_dict, or a dict holding one under "model" or "state_dict").
    Extra keyword arguments go to the model's constructor (e.g. width=, drop_rate=).
    """
    spec = _spec(name)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (a classifier needs two classes at least); got {num_classes}. "
                          f"Pass the dataset's class count, e.g. num_classes=10 for CIFAR-10.")
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1 (1 for grayscale, 3 for RGB); got {in_channels}.")
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise ConfigError(f"pretrained must be True, False or a checkpoint path; got {pretrained!r}.")
    if pretrained is True and spec.source == "kdcore":
        raise PretrainedUnavailableError(
            f"{spec.name!r} is a kdcore model with no published weights. Pass a checkpoint path instead, "
            f"e.g. pretrained='runs/teacher/best.pt', or use pretrained=False.")
    build_args = dict(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if spec.source != "kdcore":
        build_args["pretrained"] = pretrained is True
    model = spec.builder(**build_args)
    if not isinstance(pretrained, bool):
        _load_checkpoint(model, Path(pretrained).expanduser(), spec.name)
    model.kd_spec = spec
    return model


def _load_checkpoint(model: nn.Module, path: Path, name: str) -> None:
    """Load a local state_dict strictly, naming every missing, unexpected or mis-shaped key."""
    if not path.is_file():
        raise PretrainedUnavailableError(
            f"Checkpoint for {name!r} not found: '{path}'. Pass the path of a file saved with "
            f"torch.save(model.state_dict(), path), or use pretrained=False.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"Could not read checkpoint '{path}' ({type(e).__name__}: {e}). "
                              f"It may be truncated or not a torch.save file.") from e
    state = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"Checkpoint '{path}' holds no state_dict: expected a dict of tensors, or a dict with "
                              f"one under 'model' or 'state_dict'.")
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and v.shape != own[k].shape]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise CheckpointError(f"Checkpoint '{path}' does not fit {name!r}: {shown}. Build the model with the "
                              f"settings it was trained with (name, num_classes, in_channels, width ...).")
    model.load_state_dict(state)


def feature_blocks(model_or_name: nn.Module | str) -> tuple[str, ...]:
    """Module names of the stage outputs used for feature distillation."""
    if isinstance(model_or_name, str):
        return _spec(model_or_name).feature_blocks
    spec = getattr(model_or_name, "kd_spec", None)
    if spec is None:
        raise ConfigError(f"This {type(model_or_name).__name__} was not built by kdcore.create_model, so its feature "
                          f"blocks are unknown. Build it with create_model(name), or pass layer names explicitly "
                          f"(see [n for n, _ in model.named_modules()]).")
    return spec.feature_blocks


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

