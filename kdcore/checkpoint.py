"""Checkpoints and resuming, for every loop that trains (fit, fit_group, the airbench teacher recipe).

A run saves its whole state after each epoch (atomically, so an interruption leaves the previous state) and a
rerun with the same configuration resumes from it. Everything that can go wrong with such a file raises one
error type, CheckpointError, naming the file and the fix: a truncated or corrupt file, or one that another
configuration wrote (which is refused and left untouched).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_save
from .errors import CheckpointError

__all__ = ["load_checkpoint", "resume_state", "save_checkpoint", "rng_state", "set_rng_state"]


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint, turning truncation or corruption into a CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err}). "
                              f"Delete it to start fresh, or restore it from a backup; it was left untouched.") from err


def resume_state(path: Path | None, key, field: str = "config_key", what: str = "a different configuration",
                 fix: str = "use another path, start without resuming, or delete it") -> dict | None:
    """The checkpoint at `path` when its `field` equals `key`, None when there is none (start fresh); one that
    `what` wrote is refused untouched, with `fix` as the way out."""
    if path is None or not path.exists():
        return None
    state = load_checkpoint(path)
    if state.get(field) != key:
        raise CheckpointError(f"{path} was written by {what} ({field} {state.get(field)}, this one: {key}); {fix}.")
    return state


def save_checkpoint(state: dict, path: Path) -> None:
    """Write `state` atomically: a reader sees the previous checkpoint or this one, never half of it."""
    atomic_save(state, path)


def rng_state(device: torch.device) -> dict:
    """Every RNG a training step draws from, so a resumed run continues the uninterrupted one."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
