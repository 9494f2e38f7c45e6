"""Errors kdcore raises on bad input.

Every message names the problem and the fix. They subclass the built-in error a
caller would expect (ValueError, FileNotFoundError, ...) so generic handlers still work.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class KDError(Exception):
    """Base class of every kdcore error."""


class ConfigError(KDError, ValueError):
    """A parameter, name or combination of settings is invalid."""


class DataNotFoundError(KDError, FileNotFoundError):
    """A dataset is missing and cannot be downloaded."""


class PretrainedUnavailableError(KDError, RuntimeError):
    """Pretrained weights were asked for but cannot be loaded here."""


class NonFiniteLossError(KDError, FloatingPointError):
    """A loss term became NaN or Inf during training."""


class CheckpointError(KDError, RuntimeError):
    """A checkpoint file is truncated, corrupt or from an incompatible run."""


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ConfigError:
    """Build the error for an unknown `kind` name, listing the valid ones and close matches."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"Unknown {kind} {name!r}.{hint} Valid {kind} names: {', '.join(valid)}.")
