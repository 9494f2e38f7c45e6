"""kdcore's own small networks: the seed projects' students (SmallMyNet, StudentNet*, the homework CNN)
and a CPU-trainable TinyResNet teacher, from shared building blocks."""
from __future__ import annotations


import torch
from torch import nn



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

