"""The datasets by name: CIFAR-10 and EuroSAT (torchvision's layout, an image folder or the offline tarball),
any folder of class folders, and synthetic gratings for tests."""
from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataNotFoundError, unknown_name
from .bundle import DataBundle, Split, stratified_split, stratified_subset
from .decode import _cached, _decode_folder, _decode_tar, _source_key

DATASETS = ("cifar10", "eurosat", "imagefolder", "synthetic")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def default_root() -> Path:
    """The one default data folder, for the notebooks, the report and `kdcore train`: $KDCORE_DATA, else
    ../shared/data beside the repository (where an offline machine keeps the tarballs; online, torchvision
    downloads into it)."""
    return Path(os.environ.get("KDCORE_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")



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


def _imagefolder(root: Path, image_size: int | None, channels: int | None, val_fraction: float,
                 seed: int) -> tuple[list[str], Split, Split, Split]:
    """(classes, train, val, test) of `root`: train/ (+ val/, test/) of class folders, or class folders split 80/10/10.
    Without test/, the test split is the validation split."""
    size = (image_size, image_size) if image_size else None
    if not (root / "train").is_dir():
        classes, everything = _decode_folder(root, size, channels)
        return (classes, *(everything.subset(i) for i in stratified_split(everything.labels, (0.8, 0.1, 0.1), seed)))
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
    return classes, train, val, held["test"][1] if "test" in held else val


def _synthetic(options: dict | None, seed: int) -> tuple[list[str], Split, Split, Split]:
    opts = dict(num_classes=10, image_size=32, channels=3, train_size=2000, val_size=500, test_size=500, noise=0.35)
    unknown = set(options or {}) - set(opts)
    if unknown:
        raise ConfigError(f"Unknown synthetic option(s) {sorted(unknown)}; valid: {sorted(opts)}.")
    opts.update(options or {})
    gen = dict(num_classes=opts["num_classes"], image_size=opts["image_size"], channels=opts["channels"], noise=opts["noise"])
    splits = [make_synthetic(size=opts[f"{s}_size"], seed=seed * 3 + k, **gen) for k, s in enumerate(("train", "val", "test"), 1)]
    return [f"class{i}" for i in range(opts["num_classes"])], *splits


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
        classes, train, val, test = _imagefolder(root, image_size, channels, val_fraction, seed)
        source = f"image folder {root}"
    else:
        classes, train, val, test = _synthetic(synthetic, seed)
        source = "synthetic gratings"
    train = stratified_subset(train, train_limit, seed)
    val = stratified_subset(val, val_limit, seed)
    test = stratified_subset(test, test_limit, seed)
    train, val, test = (_resize(_convert_channels(s, channels), image_size) for s in (train, val, test))
    return DataBundle(key, classes, train, val, test, source)

