"""The airbench94 network (Keller Jordan, arXiv:2404.00498; github.com/KellerJordan/cifar10-airbench, MIT):
frozen 2×2 whitening, identity-initialised convs, scale-free BatchNorm, three pool-early stages, logits ÷ 9.
Its training recipe is kdcore.airbench; kdcore's changes to the net (1-pixel padding before the whitening so the
stages are 16²/8²/4², global max-pool) are listed there."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


from ..data import DataBundle

WHITEN_IMAGES = 5000  # training images whose patches set the whitening


class ShiftBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale is fixed at 1, so only its shift (bias) trains; airbench's momentum 0.6 is torch's 0.4.

    The scale is left out (affine=False) rather than frozen, so every parameter of the net trains. The shift is
    added after the normalisation, not passed to F.batch_norm: with a bias and no weight, its CUDA backward returns
    an empty bias gradient ("invalid gradient at index 2 - got [0]", torch 2.11 on an H100).
    """

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, self.momentum, self.eps)
        return y + self.bias.to(y.dtype).view(1, -1, 1, 1)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    """3×3 conv whose first `cin` filters start as the identity (dirac), the rest at torch's default init."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:cin])
    return conv


class ConvGroup(nn.Module):
    """One stage: conv → max-pool 2 → BN → GELU → conv → BN → GELU (halves the resolution)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.pool, self.norm1 = _conv(cin, cout), nn.MaxPool2d(2), ShiftBatchNorm(cout)
        self.conv2, self.norm2 = _conv(cout, cout), ShiftBatchNorm(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class Whitening(nn.Module):
    """A 2×2 conv whose filters are a buffer (frozen by construction: no optimiser sees them), set from
    data by init_whitening, plus a trainable bias. It pads 1 pixel bottom/right, so 32² in gives 32² out."""

    def __init__(self, in_channels: int, kernel_size: int = 2):
        super().__init__()
        channels = 2 * in_channels * kernel_size ** 2  # + and − each eigenvector of the k×k patches
        weight = torch.empty(channels, in_channels, kernel_size, kernel_size)
        self.register_buffer("weight", nn.init.kaiming_uniform_(weight, a=math.sqrt(5)))  # nn.Conv2d's init until then
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias)


class AirbenchNet(nn.Module):
    """whiten (2×2, frozen filters) → GELU → block1 → block2 → block3 → global max-pool → linear / 9.

    At 32² input the stage outputs block1/block2/block3 are 16²/8²/4² (the model's feature blocks).
    train() sets the whitening filters from the training images; until then they are random (nn.Conv2d's init).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int] = (64, 256, 256)):
        super().__init__()
        self.whiten = Whitening(in_channels)
        self.act = nn.GELU()
        self.block1 = ConvGroup(len(self.whiten.bias), widths[0])
        self.block2 = ConvGroup(widths[0], widths[1])
        self.block3 = ConvGroup(widths[1], widths[2])
        self.fc = nn.Linear(widths[2], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.amax(x, dim=(2, 3))) / 9


@torch.no_grad()
def init_whitening(whiten: Whitening, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Make `whiten` whiten the k×k patches of normalised `images`: filter i is eigenvector i of the
    patches' second-moment matrix over sqrt(eigenvalue + eps), so its outputs are decorrelated with unit
    variance; the second half is the negation of the first, so the GELU after it keeps both signs."""
    c, k = images.shape[1], whiten.weight.shape[-1]
    patches = images.float().unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).reshape(-1, c, k, k)
    whiten.weight.copy_(torch.cat([filters, -filters]))


@torch.no_grad()
def init_from_data(model: nn.Module, data: DataBundle) -> None:
    """Set every Whitening in `model` from the first WHITEN_IMAGES training images (on the model's device).

    fit() calls this for a fresh student, so an airbench-family student is whitened as airbench.train whitens its
    teacher; a model without a Whitening module is left alone."""
    for layer in model.modules():
        if isinstance(layer, Whitening):
            init_whitening(layer, data.normalize(data.train.images[:WHITEN_IMAGES].to(layer.weight.device)))

