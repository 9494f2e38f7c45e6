"""Datasets as uint8 tensors resident on the training device, with batched augmentation.

Why: the seeds' loops decode and transform every image with PIL on every epoch. Here each
dataset is decoded once into a cached uint8 tensor (N, C, H, W); batches are slices of that
tensor on the device, and random-crop + flip run for the whole batch at once. An augmented
image is fully described by its *view* (flip, dy, dx), which is what makes an exact teacher
output cache possible (see kdcore.cache).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataNotFoundError, unknown_name

DATASETS = ("cifar10", "eurosat", "imagefolder", "synthetic")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --------------------------------------------------------------------------- containers
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


# --------------------------------------------------------------------------- splits
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


# --------------------------------------------------------------------------- decoding + cache
def default_root() -> Path:
    """The one default data folder, for the notebooks, the report and `kdcore train`: $KDCORE_DATA, else
    ../shared/data beside the repository (where an offline machine keeps the tarballs; online, torchvision
    downloads into it)."""
    return Path(os.environ.get("KDCORE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def cache_dir() -> Path:
    """Decoded tensors live here (never next to the data, which may be read-only or shared)."""
    return Path(os.environ.get("KDCORE_CACHE", Path.home() / ".cache" / "kdcore"))


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file then rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write text to a temp file then rename it into place (same guarantee as atomic_save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _cached(key: str, build):
    """Return build() cached on disk under `key` (decoding JPEGs once, not every run)."""
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        try:
            return _from_plain(torch.load(path, weights_only=True))
        except Exception:  # a corrupt cache is only a cache: rebuild it
            path.unlink(missing_ok=True)
    value = build()
    atomic_save(_to_plain(value), path)
    return value


def _to_plain(value):
    """Split / dict of Splits -> nested dicts of tensors (loadable with weights_only=True)."""
    if isinstance(value, Split):
        return {"images": value.images, "labels": value.labels}
    return {k: _to_plain(v) for k, v in value.items()}


def _from_plain(value):
    if set(value) == {"images", "labels"}:
        return Split(value["images"], value["labels"])
    return {k: _from_plain(v) for k, v in value.items()}


def _source_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _decode(data: bytes | Path, size: tuple[int, int] | None, channels: int | None, name: str | None = None) -> np.ndarray:
    """One image file (a path, or bytes named `name`) as uint8 (H, W, C); a corrupt file is one ConfigError naming it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            mode = {1: "L", 3: "RGB"}.get(channels, "RGB" if im.mode not in ("L", "I", "I;16", "1") else "L")
            im = im.convert(mode)
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError ... on bad files
        reason = (str(err).splitlines() or [""])[0]
        raise ConfigError(f"Cannot read image {name or data}: {type(err).__name__}: {reason}. "
                          f"Delete or replace that file.") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _folder_items(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, [(file, label)]) of a folder of class sub-folders; empty classes are errors."""
    if not folder.is_dir():
        raise DataNotFoundError(f"Image folder {folder} does not exist. Pass the folder that holds one sub-folder per class.")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"Image folder {folder} has no class sub-folders. Expected {folder}/<class>/<image files>.")
    items, empty = [], []
    for label, c in enumerate(classes):
        files = sorted(p for p in (folder / c).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            empty.append(c)
        items += [(p, label) for p in files]
    if empty:
        raise ConfigError(f"Image folder {folder}: class folder(s) {', '.join(empty)} contain no images "
                          f"({'/'.join(IMAGE_SUFFIXES)}). Add images or remove the empty folders.")
    return classes, items


def _decode_folder(folder: Path, size, channels) -> tuple[list[str], Split]:
    classes, items = _folder_items(folder)
    if size is None:  # all images must share a size; take the first one's unless told
        size = _decode(items[0][0], None, channels).shape[:2]
    images = _stack([_decode(p, size, channels) for p, _ in items])
    return classes, Split(images, torch.tensor([y for _, y in items], dtype=torch.long))


def _decode_tar(tar_path: Path, prefix_to_split: dict[str, str], size, channels) -> dict[str, tuple[list[str], Split]]:
    """Decode `<prefix>/<class>/<file>` members of a tarball without unpacking it."""
    found: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in prefix_to_split.values()}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if not m.isfile() or Path(m.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            parts = Path(m.name).parts
            for prefix, split in prefix_to_split.items():
                pp = Path(prefix).parts
                if parts[:len(pp)] == pp and len(parts) == len(pp) + 2:
                    image = _decode(tar.extractfile(m).read(), size, channels, name=f"{m.name} in {tar_path}")
                    found[split].append((parts[-2], image))
    out = {}
    for split, rows in found.items():
        if not rows:
            raise DataNotFoundError(f"{tar_path} has no images under {[p for p, s in prefix_to_split.items() if s == split]}.")
        classes = sorted({c for c, _ in rows})
        lookup = {c: i for i, c in enumerate(classes)}
        out[split] = (classes, Split(_stack([a for _, a in rows]), torch.tensor([lookup[c] for c, _ in rows])))
    return out


# --------------------------------------------------------------------------- datasets
def _download(root: Path, dataset: str) -> str | None:
    """torchvision.datasets.<dataset>(root, download=True): None when it worked, else why not (for the error).

    A failed download (offline, interrupted) leaves nothing behind: the files and folders it created under
    `root`, and `root` itself and its parents when it created them, are removed.
    """
    created = [p for p in (root, *root.parents) if not p.exists()]  # deepest first
    before = set(root.iterdir()) if root.is_dir() else set()
    try:
        import torchvision.datasets

        getattr(torchvision.datasets, dataset)(root, download=True)
        return None
    except Exception as err:
        for p in (set(root.iterdir()) if root.is_dir() else set()) - before:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        for d in created:
            with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                d.rmdir()
        message = (str(err).splitlines() or [""])[0]
        return f" (download failed: {type(err).__name__}{': ' + message if message else ''})"


def _cifar10(root: Path, download: bool) -> tuple[dict[str, Split], str]:
    """CIFAR-10 train/test from torchvision's format, an image folder, or the JPEG tarball."""
    if (root / "cifar-10-batches-py").is_dir():
        from torchvision.datasets import CIFAR10

        def build():
            return {s: Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))
                    for s, ds in (("train", CIFAR10(root, train=True)), ("test", CIFAR10(root, train=False)))}
        return _cached(f"cifar10-torchvision-{_source_key(root / 'cifar-10-batches-py')}", build), f"torchvision format in {root}"
    for folder in (root / "cifar10-jpg", root / "cifar10", root):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            def build(folder=folder):
                return {s: _decode_folder(folder / s, (32, 32), 3)[1] for s in ("train", "test")}
            return _cached(f"cifar10-folder-{_source_key(folder / 'train')}", build), f"image folder {folder}"
    tar = root / "cifar10-jpg.tar.gz"
    if tar.is_file():
        def build():
            d = _decode_tar(tar, {"cifar10-jpg/train": "train", "cifar10-jpg/test": "test"}, (32, 32), 3)
            return {s: split for s, (_, split) in d.items()}
        return _cached(f"cifar10-tar-{_source_key(tar)}", build), f"tarball {tar}"
    reason = _download(root, "CIFAR10") if download else ""
    if reason is None:
        return _cifar10(root, download=False)
    raise DataNotFoundError(
        f"CIFAR-10 not found under data root {root.resolve()}{reason}. Put one of these there: "
        f"torchvision's 'cifar-10-batches-py/' folder; 'cifar10-jpg/train/<class>/*.jpg' + 'cifar10-jpg/test/<class>/*.jpg'; "
        f"or the tarball 'cifar10-jpg.tar.gz'. Or point kdcore at them: KDCORE_DATA=/path (environment), "
        f"--data-root PATH (kdcore train) or data_root=... (notebook parameter).")


def _eurosat(root: Path, download: bool) -> tuple[Split, str]:
    """All 27,000 EuroSAT RGB images (torchvision layout eurosat/2750/<Class>/*.jpg or its tarball)."""
    for folder in (root / "eurosat" / "2750", root / "2750"):
        if folder.is_dir():
            return _cached(f"eurosat-folder-{_source_key(folder)}", lambda: _decode_folder(folder, (64, 64), 3)[1]), f"image folder {folder}"  # noqa: E501
    tar = root / "eurosat-rgb.tar.gz"
    if tar.is_file():
        build = lambda: _decode_tar(tar, {"eurosat/2750": "all"}, (64, 64), 3)["all"][1]  # noqa: E731
        return _cached(f"eurosat-tar-{_source_key(tar)}", build), f"tarball {tar}"
    reason = _download(root, "EuroSAT") if download else ""
    if reason is None:
        return _eurosat(root, download=False)
    raise DataNotFoundError(
        f"EuroSAT not found under data root {root.resolve()}{reason}. Put torchvision's layout "
        f"'eurosat/2750/<Class>/*.jpg' or the tarball 'eurosat-rgb.tar.gz' there, "
        f"or point kdcore at them: KDCORE_DATA=/path (environment), --data-root PATH (kdcore train) "
        f"or data_root=... (notebook parameter).")


EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake")


def make_synthetic(num_classes: int = 10, image_size: int = 32, channels: int = 3, size: int = 1000,
                   seed: int = 0, noise: float = 0.35) -> Split:
    """Class-dependent images a small CNN can learn but not memorise from one pixel.

    Each class is an oriented sine grating (orientation and frequency set by the class) with
    a class tint; every sample gets a random phase, contrast, brightness and pixel noise, so
    the label lives in local texture, which is what convolutions pick up.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(size) % num_classes
    labels = labels[torch.randperm(size, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(image_size, dtype=torch.float32),
                            torch.arange(image_size, dtype=torch.float32), indexing="ij")
    theta = math.pi * labels.float() / num_classes
    freq = (2.0 + (labels % 3).float()) / image_size * 2
    phase = torch.rand(size, generator=g) * 2 * math.pi
    wave = torch.sin(2 * math.pi * freq[:, None, None] * (xx * torch.cos(theta)[:, None, None]
                                                          + yy * torch.sin(theta)[:, None, None]) + phase[:, None, None])
    tint = torch.rand(num_classes, channels, generator=g) * 0.5 + 0.5
    contrast = 0.25 + 0.2 * torch.rand(size, 1, 1, 1, generator=g)
    img = 0.5 + contrast * wave[:, None] * tint[labels][:, :, None, None]
    img = img + 0.1 * (torch.rand(size, 1, 1, 1, generator=g) - 0.5) + noise * 0.5 * torch.randn(img.shape, generator=g)
    return Split((img.clamp(0, 1) * 255).round().to(torch.uint8), labels.long())


def _convert_channels(split: Split, channels: int | None) -> Split:
    """Grayscale -> RGB by repetition, RGB -> grayscale by luminance (ITU-R 601)."""
    c = split.images.shape[1]
    if channels is None or channels == c:
        return split
    if c == 1:
        return Split(split.images.expand(-1, channels, -1, -1).contiguous(), split.labels)
    if channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return Split((split.images.float() * w).sum(1, keepdim=True).round().to(torch.uint8), split.labels)
    raise ConfigError(f"Cannot convert {c}-channel images to {channels} channels; use channels=1 or 3.")


def _resize(split: Split, image_size: int | None) -> Split:
    if image_size is None or tuple(split.images.shape[2:]) == (image_size, image_size):
        return split
    out = F.interpolate(split.images.float(), size=(image_size, image_size), mode="bilinear",
                        antialias=True, align_corners=False)
    return Split(out.round().clamp(0, 255).to(torch.uint8), split.labels)


def load_dataset(name: str, root: str | os.PathLike | None = None, *, val_fraction: float = 0.1, seed: int = 0,
                 image_size: int | None = None, channels: int | None = None, train_limit: int | None = None,
                 val_limit: int | None = None, test_limit: int | None = None, download: bool = True,
                 synthetic: dict | None = None) -> DataBundle:
    """Load a dataset by name into a DataBundle (train / val / test, uint8 on CPU).

    - cifar10: official test split; validation is a seeded stratified `val_fraction` of train.
    - eurosat: seeded stratified 80/10/10 split of all images (no official split exists).
    - imagefolder: `root` holds class folders, or train/ (+ optional val/ and test/) of class folders.
    - synthetic: generated; `synthetic=dict(num_classes=, image_size=, channels=, train_size=, ...)`.
    The validation split is for model selection; the test split is touched once, at the end.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    root = Path(root) if root is not None else default_root()
    if key == "cifar10":
        splits, source = _cifar10(root, download)
        train, val = (splits["train"].subset(i) for i in stratified_split(splits["train"].labels, (1 - val_fraction, val_fraction), seed))
        test, classes = splits["test"], list(CIFAR10_CLASSES)
    elif key == "eurosat":
        everything, source = _eurosat(root, download)
        train, val, test = (everything.subset(i) for i in stratified_split(everything.labels, (0.8, 0.1, 0.1), seed))
        classes = list(EUROSAT_CLASSES)
    elif key == "imagefolder":
        size = (image_size, image_size) if image_size else None
        if (root / "train").is_dir():
            classes, train = _decode_folder(root / "train", size, channels)
            size = tuple(train.images.shape[2:])
            held = {s: _decode_folder(root / s, size, channels) for s in ("val", "test") if (root / s).is_dir()}
            for s, (cls, _) in held.items():
                if cls != classes:
                    raise ConfigError(f"{root / s} has classes {cls} but {root / 'train'} has {classes}; use the same class folders.")
            if "val" not in held:
                tr, va = stratified_split(train.labels, (1 - val_fraction, val_fraction), seed)
                train, held["val"] = train.subset(tr), (classes, train.subset(va))
            val = held["val"][1]
            test = held["test"][1] if "test" in held else val
        else:
            classes, everything = _decode_folder(root, size, channels)
            train, val, test = (everything.subset(i) for i in stratified_split(everything.labels, (0.8, 0.1, 0.1), seed))
        source = f"image folder {root}"
    else:
        opts = dict(num_classes=10, image_size=32, channels=3, train_size=2000, val_size=500, test_size=500, noise=0.35)
        unknown = set(synthetic or {}) - set(opts)
        if unknown:
            raise ConfigError(f"Unknown synthetic option(s) {sorted(unknown)}; valid: {sorted(opts)}.")
        opts.update(synthetic or {})
        gen = dict(num_classes=opts["num_classes"], image_size=opts["image_size"], channels=opts["channels"], noise=opts["noise"])
        train = make_synthetic(size=opts["train_size"], seed=seed * 3 + 1, **gen)
        val = make_synthetic(size=opts["val_size"], seed=seed * 3 + 2, **gen)
        test = make_synthetic(size=opts["test_size"], seed=seed * 3 + 3, **gen)
        classes, source = [f"class{i}" for i in range(opts["num_classes"])], "synthetic gratings"
    train = stratified_subset(train, train_limit, seed)
    val = stratified_subset(val, val_limit, seed)
    test = stratified_subset(test, test_limit, seed)
    train, val, test = (_resize(_convert_channels(s, channels), image_size) for s in (train, val, test))
    return DataBundle(key, classes, train, val, test, source)


# --------------------------------------------------------------------------- batches on the device
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
