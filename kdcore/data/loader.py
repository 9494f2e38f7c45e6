"""Batches sliced from a tensor on the device, with crop + flip done for the whole batch at once."""
from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .bundle import DataBundle, Split


class Batch(NamedTuple):
    images: torch.Tensor  # normalised float (B, C, H, W) on the device
    labels: torch.Tensor  # (B,)
    index: torch.Tensor  # positions in the split, for the teacher cache
    view: torch.Tensor | None  # augmentation view id per sample, None when not augmented


def num_views(pad: int, flip: bool) -> int:
    """How many distinct crop+flip views one image has: (2·pad+1)² shifts × 2 flips."""
    return (2 * pad + 1) ** 2 * (2 if flip else 1)


def apply_views(images: torch.Tensor, view: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop each zero-padded image at its view's shift and mirror it if the view says so.

    view = flip·(2p+1)² + dy·(2p+1) + dx; one gather does the whole batch on its device.
    """
    b, c, h, w = images.shape
    n = 2 * pad + 1
    flip, dy, dx = view // (n * n), (view // n) % n, view % n
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device).expand(b, w)
    cols = dx[:, None] + torch.where(flip[:, None].bool(), w - 1 - cols, cols)
    return padded[torch.arange(b, device=images.device)[:, None, None, None],
                  torch.arange(c, device=images.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """Iterate a Split in batches from a tensor on `device`; no DataLoader, no per-sample PIL.

    The shuffle order and the views of epoch e come from a generator seeded with (seed, e), so a
    resumed run replays exactly the batches an uninterrupted one would have seen, and every DDP
    rank draws the same permutation and keeps its own slice of it.
    """

    def __init__(self, split: Split, bundle: DataBundle, batch_size: int, *, device: str | torch.device = "cpu",
                 augment: bool = False, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 pad: int = 4, flip: bool = True, channels_last: bool = False, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.mean = torch.tensor(bundle.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(bundle.std, device=self.device).view(1, -1, 1, 1)
        self.batch_size, self.augment, self.shuffle, self.drop_last = batch_size, augment, shuffle, drop_last
        self.seed, self.pad, self.flip, self.channels_last = seed, pad, flip, channels_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.num_views = num_views(pad, flip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, g: torch.Generator) -> torch.Tensor:
        n = len(self.labels)
        order = torch.randperm(n, generator=g, device="cpu").to(self.device) if self.shuffle else torch.arange(n, device=self.device)
        if self.world_size > 1 and self.shuffle:  # training: equal shares (DistributedSampler-style padding)
            order = torch.cat([order, order[: self._per_rank() * self.world_size - n]])
        return order[self.rank::self.world_size]  # evaluation: every sample exactly once over all ranks

    def _per_rank(self) -> int:
        n = len(self.labels)
        return math.ceil(n / self.world_size) if self.shuffle else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = (images_uint8.float().div_(255) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = self._order(g)
        views = (torch.randint(self.num_views, (len(order),), generator=g).to(self.device) if self.augment else None)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            x = self.images[idx]
            view = views[k * self.batch_size:(k + 1) * self.batch_size] if views is not None else None
            if view is not None:
                x = apply_views(x, view, self.pad)
            yield Batch(self.normalize(x), self.labels[idx], idx, view)
