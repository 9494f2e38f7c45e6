"""Teachers and students by name, pretrained or checkpoint weights, and feature hooks.

Every model is a plain nn.Module. Feature distillation reads stage outputs through forward hooks
by module name (FeatureHooks, torchdistill's idea), so no architecture is rewritten to return
features; each registered model only declares which of its modules are its stages (feature_blocks).
"""
from __future__ import annotations

import difflib
import functools
import os
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .airbench import AirbenchNet
from .errors import CheckpointError, ConfigError, PretrainedUnavailableError, unknown_name

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


# --------------------------------------------------------------------------- building blocks

def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv without bias (the BN that follows has one) + BN + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _classifier(cin: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """Global average pool + linear, so any input size >= 32×32 gives the same logits shape."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet's 3×3-3×3 residual block; a 1×1 projection matches the skip when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3×3 + BN + ReLU, then pointwise 1×1 + BN (+ ReLU): ~8× fewer weights than a 3×3 conv.

    Parameters: 9·cin (depthwise) + 2·cin (BN) + cin·cout (pointwise) + 2·cout (BN).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, relu_last: bool = True):
        layers = [*_conv_bn_relu(cin, cin, 3, stride, groups=cin),
                  nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        super().__init__(*layers, *([nn.ReLU(inplace=True)] if relu_last else []))


class DepthwiseResidual(nn.Module):
    """A depthwise-separable block with an identity skip (ReLU after the sum, as in ResNet)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = DepthwiseSeparable(channels, channels, relu_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class SqueezeExcite(nn.Module):
    """Channel attention: global pool → c/r → ReLU → c → sigmoid, which rescales the channels.

    Parameters (two 1×1 convs with bias): 2·c·(c/r) + c/r + c.
    """

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = channels // reduction
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class _StageNet(nn.Module):
    """stem → stage1 → stage2 → stage3 → head. The stage outputs are the students' feature blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage3(self.stage2(self.stage1(self.stem(x)))))


# --------------------------------------------------------------------------- kdcore models

class TinyResNet(nn.Module):
    """A ~0.3M-parameter ResNet teacher that trains on 2 CPU cores in minutes (width=32)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, width)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.head = _classifier(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


class SmallMyNet(_StageNet):
    """Depthwise-separable convolutions + squeeze-excitation with exactly 89,397 parameters (3 in, 10 classes).

    stem    conv3×3 3→16 + BN                              27·16 + 32                  =    464
    stage1  DS 16→24, DS 24→24, SE(24, r=8)                608 + 888 + 171             =  1,667
    stage2  DS 24→64, stride 2                                                         =  1,928
    stage3  DS 64→128 s2, 2 × DS 128→128, SE(128, r=8)     9,152 + 2·18,048 + 4,240    = 49,488
    head    conv1×1 128→256 + BN, pool, dropout            32,768 + 512                = 33,280
            linear 256→10                                  2,560 + 10                  =  2,570
                                                                                   total 89,397
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2):
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, 16)
        self.stage1 = nn.Sequential(DepthwiseSeparable(16, 24), DepthwiseSeparable(24, 24), SqueezeExcite(24, 8))
        self.stage2 = DepthwiseSeparable(24, 64, stride=2)
        self.stage3 = nn.Sequential(DepthwiseSeparable(64, 128, stride=2), DepthwiseSeparable(128, 128),
                                    DepthwiseSeparable(128, 128), SqueezeExcite(128, 8))
        self.head = nn.Sequential(_conv_bn_relu(128, 256, kernel=1), _classifier(256, num_classes, dropout))


def _conv_pool_stage(cin: int, cout: int, batch_norm: bool) -> nn.Sequential:
    """conv3×3 (+ BN) + ReLU + 2×2 max-pool: the classic small-CNN stage."""
    if batch_norm:
        return nn.Sequential(*_conv_bn_relu(cin, cout), nn.MaxPool2d(2))
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))


class SimpleNet(_StageNet):
    """Three conv-BN-ReLU-maxpool stages (32/64/128) and a linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Identity()
        self.stage1 = _conv_pool_stage(in_channels, 32, batch_norm=True)
        self.stage2 = _conv_pool_stage(32, 64, batch_norm=True)
        self.stage3 = _conv_pool_stage(64, 128, batch_norm=True)
        self.head = _classifier(128, num_classes)


class CNNSmall(_StageNet):
    """The CIFAR homework's plain CNN: SimpleNet without BatchNorm (biased convs)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Identity()
        self.stage1 = _conv_pool_stage(in_channels, 32, batch_norm=False)
        self.stage2 = _conv_pool_stage(32, 64, batch_norm=False)
        self.stage3 = _conv_pool_stage(64, 128, batch_norm=False)
        self.head = _classifier(128, num_classes)


class StudentResNet(_StageNet):
    """CIFAR ResNet with widths 16/32/64: blocks_per_stage=1 is ResNet-8, 3 is ResNet-20."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, blocks_per_stage: int = 1):
        super().__init__()

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            rest = [BasicBlock(cout, cout) for _ in range(blocks_per_stage - 1)]
            return nn.Sequential(BasicBlock(cin, cout, stride), *rest)

        self.stem = _conv_bn_relu(in_channels, 16)
        self.stage1 = stage(16, 16, 1)
        self.stage2 = stage(16, 32, 2)
        self.stage3 = stage(32, 64, 2)
        self.head = _classifier(64, num_classes)


class StudentNetSeparable(_StageNet):
    """One depthwise-separable block per stage (64/128/256): wide features for few parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, 32)
        self.stage1 = DepthwiseSeparable(32, 64)
        self.stage2 = DepthwiseSeparable(64, 128, stride=2)
        self.stage3 = DepthwiseSeparable(128, 256, stride=2)
        self.head = _classifier(256, num_classes)


class StudentNetDepthwiseSkip(_StageNet):
    """StudentNetSeparable with a residual depthwise-separable block after each stage's first block."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, 32)
        self.stage1 = nn.Sequential(DepthwiseSeparable(32, 64), DepthwiseResidual(64))
        self.stage2 = nn.Sequential(DepthwiseSeparable(64, 128, stride=2), DepthwiseResidual(128))
        self.stage3 = nn.Sequential(DepthwiseSeparable(128, 256, stride=2), DepthwiseResidual(256))
        self.head = _classifier(256, num_classes)


class StudentNetLight(_StageNet):
    """The lightest student: three conv-BN-ReLU layers (16/32/48), the last two with stride 2."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Identity()
        self.stage1 = _conv_bn_relu(in_channels, 16)
        self.stage2 = _conv_bn_relu(16, 32, stride=2)
        self.stage3 = _conv_bn_relu(32, 48, stride=2)
        self.head = _classifier(48, num_classes)


# --------------------------------------------------------------------------- torchvision / timm

def _fetch(download: Callable[[], object], what: str):
    """Run a step that downloads weights, turning any network or hub failure into one clear error."""
    try:
        return download()
    except TypeError:
        raise  # a bad keyword argument is the caller's bug, not a download problem
    except Exception as e:  # URLError, OSError, hub and HTTP-client errors, corrupt cache files...
        detail = (str(e).strip().splitlines() or [""])[0]
        raise PretrainedUnavailableError(
            f"Pretrained weights for {what} could not be fetched ({type(e).__name__}: {detail}). Fix: run once on a "
            f"machine with internet so they get cached, or pass a local checkpoint as "
            f"pretrained='path/to/weights.pt', or use pretrained=False.") from e


def _last_linear_to(model: nn.Module, num_classes: int) -> None:
    """Replace the classifier (the last nn.Linear) with a fresh one for num_classes."""
    name, old = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    model.set_submodule(name, nn.Linear(old.in_features, num_classes))


def _first_conv_to(model: nn.Module, in_channels: int, average_rgb: bool) -> None:
    """Replace the stem conv for in_channels; averaging the RGB filters keeps pretrained features for grayscale."""
    name, old = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    bias=old.bias is not None)
    with torch.no_grad():
        if average_rgb:
            new.weight.copy_(old.weight.mean(dim=1, keepdim=True))
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if old.bias is not None:
            new.bias.copy_(old.bias)
    model.set_submodule(name, new)


def _torchvision(arch: str, num_classes: int, in_channels: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """A torchvision classifier; pretrained loads its default ImageNet weights and puts a new head on."""
    import torchvision  # imported here: it costs seconds at `import kdcore`, and students never need it

    model = torchvision.models.get_model(arch, weights=None, num_classes=1000 if pretrained else num_classes, **kwargs)
    if pretrained:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        model.load_state_dict(_fetch(lambda: weights.get_state_dict(progress=True), f"torchvision {arch}"))
        _last_linear_to(model, num_classes)
    if in_channels != 3:
        _first_conv_to(model, in_channels, average_rgb=pretrained and in_channels == 1)
    return model


def _resnet18_cifar(num_classes: int, in_channels: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3×3 stride-1 conv, no max-pool): 32×32 inputs keep 4×4 maps at layer4.

    With pretrained=True every ImageNet weight but the 7×7 stem is kept.
    """
    model = _torchvision("resnet18", num_classes, 3, pretrained, **kwargs)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def _check_hub_reachable(arch: str) -> None:
    """Fail in seconds rather than after ~50 s of huggingface_hub retries when nothing is cached and the hub is down."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
    cached = any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin"))
    if cached or urllib.request.getproxies().get("https"):  # a proxy may reach what a direct socket cannot
        return
    url = urllib.parse.urlparse(constants.ENDPOINT)
    socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()


def _timm(arch: str, num_classes: int, in_channels: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """A timm model; timm itself replaces the head and adapts the stem conv when pretrained."""
    import timm  # imported here: it adds ~2 s to `import kdcore` and only these teachers need it

    def build() -> nn.Module:
        if pretrained:
            _check_hub_reachable(arch)
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs)

    return _fetch(build, f"timm {arch}") if pretrained else build()


# --------------------------------------------------------------------------- registry

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


# --------------------------------------------------------------------------- feature hooks

def _unknown_module(model: nn.Module, name: str) -> ConfigError:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    if len(names) <= 40:
        listing = f"Available module names: {', '.join(names)}."
    else:
        top = [n for n in names if "." not in n]
        listing = (f"Top-level modules: {', '.join(top)} ({len(names)} modules in all; print them with "
                   f"[n for n, _ in model.named_modules()]).")
    spec = getattr(model, "kd_spec", None)
    blocks = f" Its feature blocks are {', '.join(spec.feature_blocks)}." if spec else ""
    return ConfigError(f"{type(model).__name__} has no module {name!r}.{hint} {listing}{blocks}")


class FeatureHooks:
    """Capture the outputs of named submodules with forward hooks; the model itself is never changed.

        with FeatureHooks(model, ["layer2", "layer3"]) as hooks:
            logits = model(x)
        hooks.features["layer2"]

    Or call attach() / remove() to keep the hooks across many forward passes. Each forward overwrites
    `features`; a module returning a tuple or list contributes its first tensor.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]):
        self.model = model
        self.names = tuple(names)
        modules = dict(model.named_modules())
        for name in self.names:
            if not name or name not in modules:
                raise _unknown_module(model, name)
        self._modules = [modules[n] for n in self.names]
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._entered: list[bool] = []  # per `with`: did it attach (so its exit must remove)?

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> FeatureHooks:
        """Register the hooks (a no-op when already attached) and forget features from earlier passes."""
        if not self._handles:
            self.features.clear()
            self._handles = [m.register_forward_hook(functools.partial(self._store, n))
                             for n, m in zip(self.names, self._modules)]
        return self

    def remove(self) -> None:
        """Unregister the hooks; `features` keeps the last captured values."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _store(self, name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, (tuple, list)):
            output = next((o for o in output if isinstance(o, torch.Tensor)), output)
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"Module {name!r} returned {type(output).__name__}, not a tensor; hook a module "
                              f"that outputs a feature map.")
        self.features[name] = output

    def __enter__(self) -> FeatureHooks:
        self._entered.append(not self.attached)
        return self.attach()

    def __exit__(self, *exc) -> None:
        if self._entered.pop():
            self.remove()
