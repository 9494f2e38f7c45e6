"""Exact per-view teacher-logit cache.

With flip + integer-shift augmentation an augmented image is fully described by (image index,
view id), and there are only `num_views(pad, flip) = 2·(2·pad+1)²` views per image (162 for
pad=4). So the teacher's output for every pair fits in one tensor `logits[N, V, C]` with a
`filled[N, V]` mask. `fetch(index, view, images)` returns the rows for a batch and runs the
teacher (eval, no_grad) only on the pairs not filled yet. Teacher and student always see the
identical view (consistent teaching), the cache is exact, and teacher cost per step falls to
zero once views repeat. Without augmentation (`view=None`) there is one view per image, so the
teacher runs once per image in the first epoch and never again.

Memory: N·V·C elements plus an N·V bool mask. CIFAR-10 train (45,000 images) × 162 views × 10
classes = 72.9M logits = 292 MB in fp32 / 146 MB in bf16 (only when the teacher runs under bf16
autocast, see `storage_dtype`), + 7.3 MB of mask. The table lives on the loader's device; on
CUDA, if it would take more than half the free memory, it lives in pinned CPU memory instead and
only the batch's rows cross the bus (non_blocking).

`shared_cache` keeps the tables of this process by teacher weights, data and augmentation, so
every logit-KD run of a notebook (any method, any seed) reuses the views earlier runs paid for.
Given a folder, it also keeps each table on disk (`persist`: only the filled pairs, merged under a
lock with what other processes wrote), so notebooks and CLI runs in other processes reuse them too.

Note: a lazily filled pair was computed in whichever batch first needed it. Convolutions may
pick a different kernel for a different batch size, so a cached row can differ from a fresh
teacher forward of a *different* batch in the last float bit (never on the same batch).
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .atomic import atomic_save
from .data import DeviceLoader, apply_views, num_views
from .errors import CheckpointError

try:
    import fcntl  # POSIX file locks: processes sharing a cache file merge instead of overwriting each other
except ImportError:  # pragma: no cover (Windows: no lock; one writer at a time is then the user's job)
    fcntl = None

__all__ = ["TeacherLogitCache", "teacher_fingerprint", "storage_dtype", "shared_cache", "clear_shared_caches"]


def teacher_fingerprint(teacher: nn.Module, pad: int, flip: bool, images: torch.Tensor | None = None,
                        data_key: str = "") -> str:
    """sha1 of the teacher's state_dict (names, dtypes, bytes) + pad + flip + the data's identity."""
    h = hashlib.sha1(f"pad={pad}|flip={flip}|data={data_key}".encode())
    for name, t in sorted(teacher.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    if images is not None:  # the exact uint8 pixels the indices refer to
        h.update(str(tuple(images.shape)).encode())
        h.update(images.detach().cpu().contiguous().view(-1).numpy().tobytes())
    return h.hexdigest()


def storage_dtype(amp: bool) -> torch.dtype:
    """bf16 only when the teacher runs under bf16 autocast (its logits are bf16 then, so storing them
    loses nothing); fp32 otherwise, whatever the device, so that the cache stays exact."""
    return torch.bfloat16 if amp else torch.float32


class TeacherLogitCache:
    """logits[N, V, C] + filled[N, V], filled lazily by `fetch` or up front by `fill_all`.

    `amp`: the teacher runs under bf16 autocast (fetch is called inside it; precompute enters it).
    `hits` / `misses` count the (image, view) lookups of `fetch` since the cache was made.
    """

    def __init__(self, teacher: nn.Module, num_images: int, num_classes: int, *, pad: int = 4, flip: bool = True,
                 views: int | None = None, device: str | torch.device = "cpu", amp: bool = False,
                 source: torch.Tensor | None = None, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 fingerprint: str | None = None):
        self.teacher, self.pad, self.flip, self.amp = teacher, pad, flip, amp
        self.num_views = views if views is not None else num_views(pad, flip)
        self.device = torch.device(device)
        self.dtype = storage_dtype(amp)
        self.source, self.normalize = source, normalize  # uint8 images + normaliser, for fill_all()
        self.fingerprint = fingerprint or teacher_fingerprint(teacher, pad, flip, source)
        shape = (num_images, self.num_views, num_classes)
        self.storage = self._storage_device(shape)
        pin = self.storage.type == "cpu" and self.device.type == "cuda"
        self.logits = torch.zeros(shape, dtype=self.dtype, device=self.storage, pin_memory=pin)
        self.filled = torch.zeros(shape[:2], dtype=torch.bool, device=self.storage, pin_memory=pin)
        self.complete = False  # host-side flag: once every pair is filled, fetch() never syncs
        self._written = 0  # pairs written so far (an upper bound on filled ones): checks completeness cheaply
        self.teacher_images = 0  # how many (image, view) pairs the teacher has been run on
        self.hits = self.misses = 0
        self.path: Path | None = None  # where persist() keeps the table (shared_cache with a folder)

    def _storage_device(self, shape) -> torch.device:
        if self.device.type != "cuda":
            return self.device
        need = shape[0] * shape[1] * (shape[2] * torch.finfo(self.dtype).bits // 8 + 1)
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if need < free // 2 else torch.device("cpu")

    @classmethod
    def for_loader(cls, teacher: nn.Module, loader: DeviceLoader, num_classes: int, **kwargs) -> "TeacherLogitCache":
        """A cache for a DeviceLoader's split: N images, its views (1 without augmentation), its device."""
        views = loader.num_views if loader.augment else 1
        return cls(teacher, len(loader.images), num_classes, pad=loader.pad, flip=loader.flip, views=views,
                   device=loader.device, source=loader.images, normalize=loader.normalize, **kwargs)

    @property
    def nbytes(self) -> int:
        return self.logits.numel() * self.logits.element_size() + self.filled.numel()

    @property
    def fill_fraction(self) -> float:
        return 1.0 if self.complete else self.filled.float().mean().item()

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)

    @torch.no_grad()
    def _teacher(self, images: torch.Tensor) -> torch.Tensor:
        if self.teacher.training:
            self.teacher.eval()
        self.teacher_images += len(images)
        return self.teacher(images)

    @torch.no_grad()
    def fetch(self, index: torch.Tensor, view: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits for the pairs (index[i], view[i]); `images` are those views, normalised.

        Only the rows not yet filled go through the teacher, as one sub-batch of `images`.
        Until the table is complete this costs one host sync per step (the count of misses).
        """
        view = torch.zeros_like(index) if view is None else view
        i, v = index.to(self.storage), view.to(self.storage)
        missed = 0
        if not self.complete:
            missing = (~self.filled[i, v]).nonzero().flatten()
            missed = len(missing)
            if missed:
                out = self._teacher(images if len(missing) == len(i) else images[missing.to(images.device)])
                self.logits[i[missing], v[missing]] = out.to(self.storage, self.dtype)
                self.filled[i[missing], v[missing]] = True
                self._written += len(missing)
                if self._written >= self.filled.numel():  # a batch may repeat a pair, so confirm
                    self.complete = bool(self.filled.all())
        self.hits += len(i) - missed
        self.misses += missed
        return self.logits[i, v].to(images.device, non_blocking=True)

    @torch.no_grad()
    def record(self, index: torch.Tensor, view: torch.Tensor | None, logits: torch.Tensor) -> None:
        """Keep teacher logits the caller computed on these views (a forward shared with feature terms, as
        kdcore.group runs it). Only pairs not yet filled are written: a stored pair never changes."""
        if self.complete:
            return
        view = torch.zeros_like(index) if view is None else view
        i, v = index.to(self.storage), view.to(self.storage)
        missing = (~self.filled[i, v]).nonzero().flatten()
        if len(missing):
            self.logits[i[missing], v[missing]] = logits[missing.to(logits.device)].to(self.storage, self.dtype)
            self.filled[i[missing], v[missing]] = True
            self.teacher_images += len(missing)
            self._written += len(missing)
            if self._written >= self.filled.numel():
                self.complete = bool(self.filled.all())

    @torch.no_grad()
    def precompute(self, images_uint8: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor],
                   batch_size: int = 1024) -> "TeacherLogitCache":
        """Fill every missing (image, view) pair in large batches, e.g. before many students share a teacher."""
        todo = (~self.filled).nonzero()  # (K, 2): image, view
        device = images_uint8.device
        for k in range(0, len(todo), batch_size):
            i, v = todo[k:k + batch_size].to(device).unbind(1)
            x = images_uint8[i]
            if self.num_views > 1:
                x = apply_views(x, v, self.pad)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self._teacher(normalize(x))
            i, v = i.to(self.storage), v.to(self.storage)
            self.logits[i, v] = out.to(self.storage, self.dtype)
            self.filled[i, v] = True
        self.complete = True
        return self

    def fill_all(self, batch_size: int = 1024) -> "TeacherLogitCache":
        """precompute() over the images and normaliser the cache was built with (for_loader)."""
        if self.source is None or self.normalize is None:
            raise ValueError("fill_all() needs the source images; build the cache with for_loader() or call precompute().")
        return self.precompute(self.source, self.normalize, batch_size)

    def save(self, path: str | os.PathLike) -> None:
        """Write the filled pairs (image, view, logits) and the fingerprint atomically: sparse, since a run
        fills one view per image and epoch (8 epochs of CIFAR-10: 17 MB instead of the 292 MB table)."""
        pairs = self.filled.nonzero().cpu()
        atomic_save({"format": 2, "fingerprint": self.fingerprint, "shape": tuple(self.logits.shape),
                     "pad": self.pad, "flip": self.flip, "pairs": pairs.to(torch.int32),
                     "logits": self.logits[pairs[:, 0].to(self.storage), pairs[:, 1].to(self.storage)].cpu()}, Path(path))

    def load(self, path: str | os.PathLike) -> "TeacherLogitCache":
        """Add a saved cache's pairs to this one (a union: pairs filled here stay); refuse one made by another
        teacher, augmentation or data."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        shape = tuple(state.get("shape", ()))
        if state.get("format") != 2 or state["fingerprint"] != self.fingerprint or shape != tuple(self.logits.shape):
            raise CheckpointError(
                f"Teacher cache {path} was built for a different teacher, augmentation (pad/flip) or dataset "
                f"(fingerprint {str(state.get('fingerprint'))[:12]} shape {shape}, this run needs "
                f"{self.fingerprint[:12]} shape {tuple(self.logits.shape)}), or by an older kdcore. Delete it or "
                f"rebuild it with this teacher.")
        i, v = state["pairs"].long().to(self.storage).unbind(1)
        self.logits[i, v] = state["logits"].to(self.storage, self.dtype)
        self.filled[i, v] = True
        self._written = int(self.filled.sum())
        self.complete = self._written == self.filled.numel()
        return self

    def persist(self) -> None:
        """Merge this table into its file (`path`) under a lock: pairs other processes added since are kept."""
        if self.path is None:
            raise ValueError("persist() needs a path: get the cache from shared_cache(..., directory=...).")
        with _locked(self.path):
            if self.path.exists():
                self.load(self.path)
            self.save(self.path)


@contextmanager
def _locked(path: Path):
    """An exclusive lock on <path>.lock for the duration (no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


_SHARED: OrderedDict[tuple, TeacherLogitCache] = OrderedDict()
SHARED_MAX = 2  # tables kept per process (each N·V·C logits): a notebook's teacher, with bounded memory


def shared_cache(teacher: nn.Module, loader: DeviceLoader, num_classes: int, amp: bool = False,
                 directory: str | os.PathLike | None = None) -> TeacherLogitCache:
    """This process's cache for `teacher` (by weights) on `loader`'s images, normaliser, views and device.

    Runs with the same seed see the same views, so the second logit-KD run of a notebook finds every
    view already there; other seeds add theirs. The last SHARED_MAX tables are kept. With `directory`, a new
    table, or one made earlier without a folder, adds its file's pairs, if the file exists, and `persist()` writes
    it back.
    """
    fingerprint = teacher_fingerprint(teacher, loader.pad, loader.flip, loader.images)
    views = loader.num_views if loader.augment else 1
    identity = (fingerprint, views, num_classes, amp, tuple(loader.mean.flatten().tolist()),
                tuple(loader.std.flatten().tolist()))
    key = identity + (str(loader.device),)
    cache = _SHARED.pop(key, None)
    if cache is None:
        cache = TeacherLogitCache.for_loader(teacher, loader, num_classes, amp=amp, fingerprint=fingerprint)
    if directory is not None and cache.path is None:  # a table made earlier without a folder joins it too
        cache.path = Path(directory) / f"{_file_name(teacher, identity)}.pt"
        if cache.path.exists():
            with _locked(cache.path):
                cache.load(cache.path)
    cache.teacher = teacher  # same weights; misses run on this run's module
    _SHARED[key] = cache
    while len(_SHARED) > SHARED_MAX:
        _SHARED.popitem(last=False)
    return cache


def _file_name(teacher: nn.Module, identity: tuple) -> str:
    """A cache file's name: the table's identity (fingerprint, views, classes, amp, normaliser), the teacher's
    class and the sources of kdcore.models, so no teacher whose forward pass changed under the same weights reads it."""
    from . import models

    h = hashlib.sha1(repr(identity).encode() + f"{type(teacher).__module__}.{type(teacher).__qualname__}".encode())
    for source in sorted(Path(models.__file__).parent.glob("*.py")):
        h.update(source.read_bytes())
    return f"{type(teacher).__name__.lower()}-{identity[0][:12]}-{h.hexdigest()[:12]}"


def clear_shared_caches() -> None:
    """Free the shared tables (their memory), e.g. before a notebook moves on to another teacher."""
    _SHARED.clear()
