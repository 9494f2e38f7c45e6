"""Runs collected instead of trained, then trained in groups that share each batch's teacher forward.

Inside `with collect() as runs:`, run_seeds records every storable run that is not yet stored as a PendingRun
and trains nothing. `train(runs)` then co-trains the runs that see the same views (same
data, seed and schedule: kdcore.group.fit_group) and hands each result to the run's own `finish`, which
evaluates and stores it exactly as run_seeds would have. kdcore.cotrain uses this to train a report's runs
before its notebooks execute, so the notebooks find all of them in the run store.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch.nn as nn

from .data import DataBundle
from .distill import Distiller
from .group import fit_group

_COLLECTED: list | None = None


@dataclass
class PendingRun:
    label: str
    key: str
    model: nn.Module | Distiller  # what run_seeds would pass to fit
    data: DataBundle
    fit_kw: dict  # fit's keywords, seed included
    out_dir: Path | None  # its partial checkpoints (resume)
    data_key: str  # the data's fingerprint
    finish: Callable  # finish(FitResult): evaluate on test once and store, as run_seeds does

    @property
    def distiller(self) -> Distiller:
        return self.model if isinstance(self.model, Distiller) else Distiller(self.model)

    def group_key(self) -> str:
        """Runs with equal keys see the same batches: the same data, seed, schedule and loader. Whether a run
        asked for the logit cache is left out: the cache is exact, so the group uses it if any member asked."""
        fit_kw = {k: v for k, v in self.fit_kw.items() if k not in ("progress", "teacher_cache", "teacher_cache_dir")}
        return json.dumps([self.data_key, fit_kw], sort_keys=True, default=str)


def collecting() -> bool:
    return _COLLECTED is not None


def add(run: PendingRun) -> None:
    if _COLLECTED is None:
        raise RuntimeError("pending.add outside pending.collect()")
    if all(r.key != run.key for r in _COLLECTED):  # a run two notebooks share is trained once
        _COLLECTED.append(run)


@contextlib.contextmanager
def collect():
    """Collect run_seeds' runs to train (a list, filled in call order) instead of training them."""
    global _COLLECTED
    previous, _COLLECTED = _COLLECTED, []
    try:
        yield _COLLECTED
    finally:
        _COLLECTED = previous


def groups(runs: list[PendingRun], size: int | None = None) -> list[list[PendingRun]]:
    """The runs by group key, in order of first appearance; within a group, one teacher module (the first one
    its members name: modules of equal weights loaded by different notebooks are one teacher).

    `size` splits a group into consecutive parts of at most that many runs. A part is stored when it ends, so on
    a slow machine a long group lands piece by piece; its logit methods still pay each view's teacher forward
    once, since the later parts read the exact logit cache the first one filled."""
    if size is not None and size < 1:
        raise ValueError(f"group size must be at least 1, not {size}")
    by_key: dict[str, list[PendingRun]] = {}
    for r in runs:
        by_key.setdefault(r.group_key(), []).append(r)
    step = size or max(map(len, by_key.values()), default=1)
    return [members[i:i + step] for members in by_key.values() for i in range(0, len(members), step)]


def train(runs: list[PendingRun], log=print, size: int | None = None) -> int:
    """Co-train each group (parts of at most `size` runs, see `groups`) and finish every run in it; returns how
    many runs were trained."""
    for members in groups(runs, size):
        distillers = [m.distiller for m in members]
        teachers = {id(d.teacher) for d in distillers if d.needs_teacher}
        if len(teachers) > 1:
            raise RuntimeError(f"one group, {len(teachers)} teacher modules: {[m.label for m in members]}")
        log(f"co-training {len(members)} runs at seed {members[0].fit_kw['seed']}: "
            + ", ".join(m.label for m in members))
        kw = dict(members[0].fit_kw, teacher_cache=any(m.fit_kw.get("teacher_cache") for m in members),
                  teacher_cache_dir=next((m.fit_kw["teacher_cache_dir"] for m in members
                                          if m.fit_kw.get("teacher_cache_dir")), None))
        results = fit_group(distillers, members[0].data, out_dirs=[m.out_dir for m in members], **kw)
        for member, result in zip(members, results):
            member.finish(result)
    return len(runs)
