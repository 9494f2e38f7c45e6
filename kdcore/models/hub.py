"""torchvision and timm models at any class count and channel count, with one clear error when their
published weights cannot be fetched (offline, hub down)."""
from __future__ import annotations

import socket
import urllib.parse
import urllib.request
from typing import Callable

import torch
from torch import nn

from ..errors import PretrainedUnavailableError


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


