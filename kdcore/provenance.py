"""Where a result came from: the data's content fingerprint, the commit, the machine, the time.

Every store entry and results JSON carries these, so a number can be traced to the run that wrote it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import subprocess

import torch

from . import profiles as _profiles
from .data import DataBundle
from .runtime import cpu_features, resolve_device

REPO_ROOT = _profiles.REPO_ROOT


def data_fingerprint(data: DataBundle) -> str:
    """Identifies a dataset split by content (labels + a sample of pixels), independent of how it was loaded."""
    h = hashlib.sha1()
    h.update(f"{data.name}|{data.classes}|{len(data.train)}|{len(data.val)}|{len(data.test)}|{data.image_size}".encode())
    for s in (data.train, data.val, data.test):
        h.update(s.labels.numpy().tobytes())
        h.update(s.images[:64].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def git_commit() -> str:
    """Short hash of the checkout the code runs from, "+dirty" when tracked files differ from it, "unknown" outside
    git. $KDCORE_COMMIT, when set, wins: a copied tree (e.g. on a GPU machine without network) may carry no .git or a stale
    one. --no-optional-locks: never take the index lock from under a git command running beside us."""
    if os.environ.get("KDCORE_COMMIT"):
        return os.environ["KDCORE_COMMIT"]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "unknown" if head.returncode else head.stdout.strip() + ("+dirty" if dirty else "")


_AT_START: dict[object, str] = {}  # REPO_ROOT -> its commit when first asked


def started_commit() -> str:
    """git_commit() as it was the first time this process asked: a run of hours records the code it imported,
    not a commit made beside it while it trained (kdcore.experiments.setup and kdcore.cotrain ask first thing)."""
    if os.environ.get("KDCORE_COMMIT"):
        return os.environ["KDCORE_COMMIT"]
    if REPO_ROOT not in _AT_START:
        _AT_START[REPO_ROOT] = git_commit()
    return _AT_START[REPO_ROOT]


def run_info(params: dict | None = None, data: DataBundle | None = None, notebook: str | None = None) -> dict:
    params = params or {}
    dev = resolve_device(params.get("device", "auto"))
    info = {"timestamp": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                                  f" ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"),
            "cpu": cpu_features(), "commit": started_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "profile": params.get("profile"),
            "scaling": (_profiles.scaling_for(params["profile"], notebook) if notebook and params.get("profile") in
                        _profiles.PROFILES else _profiles.SCALING.get(params.get("profile"), "custom")),
            "epochs": params.get("epochs"), "teacher_epochs": params.get("teacher_epochs"), "seeds": params.get("seeds"),
            "limits": {k: params.get(k) for k in ("train_limit", "val_limit", "test_limit", "max_steps_per_epoch")}}
    if data is not None:
        info["dataset"] = {"name": data.name, "source": data.source, "train": len(data.train), "val": len(data.val),
                           "test": len(data.test), "image_size": list(data.image_size), "classes": len(data.classes)}
    return info


def provenance(data: DataBundle | None = None) -> dict:
    """Where and how a store entry was made: commit, time, device, CPU, torch, and the data it saw."""
    info = {k: v for k, v in run_info().items() if k in ("timestamp", "device", "cpu", "commit", "torch")}
    if data is not None:
        info["data"] = {"name": data.name, "source": data.source, "fingerprint": data_fingerprint(data),
                        "splits": [len(data.train), len(data.val), len(data.test)], "image_size": list(data.image_size)}
    return info
