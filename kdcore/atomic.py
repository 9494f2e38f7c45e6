"""Atomic writes: a temp file renamed into place, so a crash or Ctrl-C never leaves a half-written file
(checkpoints, the run store, pages)."""
from __future__ import annotations

import os
from pathlib import Path

import torch


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

