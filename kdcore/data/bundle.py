"""What a dataset is once loaded: uint8 splits with their labels, and stratified seeded splitting."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, unknown_name


@dataclass
class Split:
    """Images as uint8 (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


@dataclass
class DataBundle:
    """Train / validation / test splits plus what a model and a report need to know."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    source: str
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self):
        if not self.mean:  # per-channel statistics of the training split, in [0, 1] units
            x = self.train.images.float().div_(255)
            self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[2:])

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise unknown_name("split", name, ("train", "val", "test"))
        return getattr(self, name)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) on any device -> normalised float32."""
        mean = torch.tensor(self.mean, device=images_uint8.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images_uint8.device).view(1, -1, 1, 1)
        return (images_uint8.float().div_(255) - mean) / std

    def describe(self) -> str:
        h, w = self.image_size
        return (f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
                f"{self.num_classes} classes, {self.in_channels}x{h}x{w} ({self.source})")



def stratified_split(labels: torch.Tensor, fractions: Sequence[float], seed: int = 0) -> list[torch.Tensor]:
    """Disjoint index sets with (as nearly as rounding allows) the same class mix in each.

    Why stratified: small validation sets drawn at random can miss whole classes.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise ConfigError(f"split fractions {list(fractions)} must be >= 0 and sum to 1.")
    g = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        bounds = np.round(np.cumsum([0, *fractions]) * len(idx)).astype(int)
        for k in range(len(fractions)):
            parts[k].append(idx[bounds[k]:bounds[k + 1]])
    return [torch.sort(torch.cat(p)).values if p else torch.empty(0, dtype=torch.long) for p in parts]


def stratified_subset(split: Split, limit: int | None, seed: int = 0) -> Split:
    """At most `limit` samples, class-balanced like the full split (used to scale runs to CPU)."""
    if limit is None or limit >= len(split):
        return split
    if limit <= 0:
        raise ConfigError(f"subset size must be positive, got {limit}.")
    (keep, _) = stratified_split(split.labels, (limit / len(split), 1 - limit / len(split)), seed)
    return split.subset(keep)

