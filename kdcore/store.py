"""The run store: finished teachers and student runs, kept by what they are rather than by the code that made them.

A key names the training recipe, not a hash of every source file, so a refactor keeps hours of runs:

    key = <readable prefix>-<sha1 of {recipe version, data fingerprint, models, method and options, schedule,
                                      seed, teacher weights}>

`RECIPE_VERSION` is the explicit part. A change that alters training numerics (the loop, a loss, augmentation,
initialisation) must bump it; tests/test_golden.py fails until it does, so no stale run is ever reused silently.

Each entry is two files written atomically: `<key>.json` (the key's configuration, metrics, history and the
provenance of the run: commit, device, CPU, precision; readable and diffable in git) and `<key>.pt` (tensors:
the weights when they are small, and the test predictions a page plots). The `full` profile's store lives under
results/full/store/ in git, so a fresh machine re-renders the pages without training; other profiles keep theirs
under checkpoints/store/. Runs still in progress never enter the store: their per-epoch state stays in checkpoints/.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .atomic import atomic_save, atomic_write_text

RECIPE_VERSION = 1
STUDENT_WEIGHTS_MB = 2.0  # larger students keep their test predictions only
TEACHER_WEIGHTS_MB = 10.0  # the airbench teachers (about 8 MB in fp32) are committed; larger ones stay local
KINDS = ("teachers", "runs")


def jsonable(obj):
    """Plain JSON types for numpy scalars, paths, data frames (records) and non-finite floats (None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, pd.DataFrame):
        return jsonable(obj.to_dict(orient="records"))
    return obj


def config_hash(cfg: dict) -> str:
    return hashlib.sha1(json.dumps(jsonable(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def store_key(prefix: str, cfg: dict) -> str:
    """`<prefix>-<hash>`: the prefix (data, model, method) for a reader of `ls`, the hash for identity."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in prefix)
    return f"{safe}-{config_hash({'recipe': RECIPE_VERSION, **cfg})}"


def weights_hash(model: nn.Module | dict) -> str:
    """sha1 of the weights' bytes (names, shapes, dtypes, values): the identity of a trained teacher, which
    every run distilled from it records, so a store never mixes runs of two different teachers."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha1()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def state_mb(state: dict) -> float:
    return sum(t.numel() * t.element_size() for t in state.values()) / 2**20


class RunStore:
    """Entries under <root>/teachers/ and <root>/runs/; counts what it served and what it stored."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.loaded = 0
        self.saved = 0

    def path(self, kind: str, key: str, suffix: str = ".pt") -> Path:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.root / kind / f"{key}{suffix}"

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key, ".json").exists() and self.path(kind, key).exists()

    def load(self, kind: str, key: str) -> tuple[dict, dict] | None:
        """(record, tensors) of a stored entry, or None when there is none."""
        if not self.has(kind, key):
            return None
        record = json.loads(self.path(kind, key, ".json").read_text(encoding="utf-8"))
        tensors = torch.load(self.path(kind, key), map_location="cpu", weights_only=True)
        self.loaded += 1
        return record, tensors

    def save(self, kind: str, key: str, record: dict, tensors: dict) -> Path:
        """Tensors first, then the JSON record: an entry counts as stored only once both exist, and each file is
        written atomically, so an interruption leaves either nothing or a whole entry."""
        atomic_save(tensors, self.path(kind, key))
        path = atomic_write_text(json.dumps(jsonable({"key": key, "recipe": RECIPE_VERSION, **record}), indent=1,
                                            sort_keys=True, default=str) + "\n", self.path(kind, key, ".json"))
        self.saved += 1
        return path

    def records(self, kind: str) -> list[dict]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((self.root / kind).glob("*.json"))]


def small_weights(model: nn.Module, limit_mb: float) -> dict | None:
    """The model's weights on the CPU when they fit `limit_mb`, else None (the entry keeps its predictions)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state if state_mb(state) <= limit_mb else None
