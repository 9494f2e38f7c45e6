"""Image files, folders and tarballs decoded once into uint8 tensors, and cached on disk by their source."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_save
from ..errors import ConfigError, DataNotFoundError
from .bundle import Split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def cache_dir() -> Path:
    """Decoded tensors live here (never next to the data, which may be read-only or shared)."""
    return Path(os.environ.get("KDCORE_CACHE", Path.home() / ".cache" / "kdcore"))



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


