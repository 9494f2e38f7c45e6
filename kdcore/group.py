"""Co-training: several students at one seed, one teacher forward per batch.

Runs at the same seed see the same views (the loader's order and augmentation come from (seed, epoch)), so
a group of students can share each batch: the teacher runs once, with hooks on every layer any member's
terms read, and each member then takes exactly the step `fit` would take alone. Logit members read the
exact logit cache, which the shared forward fills. Each member keeps its own RNG state, optimiser, schedule,
early stopping and best-on-validation weights, so in deterministic fp32 on a CPU every student ends
bit-identical to the same run trained alone (tests/test_group.py).

Where fit() would choose a memory layout per run, the group chooses it once, from its first member: the
members share their batches.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from .cache import TeacherLogitCache, shared_cache
from .checkpoint import rng_state, set_rng_state
from .config import FitResult, TrainConfig, make_optimizer, make_scheduler
from .data import DataBundle, DeviceLoader
from .distill import Distiller
from .errors import ConfigError
from .models import FeatureHooks, init_from_data
from .runtime import distributed_world, resolve_device, resolve_precision, seed_everything
from .train import (RunProgress, apply_layout, check_finite, choose_layout, close_epoch, load_best, restore,
                    resume_checkpoint, save_epoch)


@dataclass
class _Member:
    """One student's run inside the group: what fit() keeps in its local variables."""
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    scheduler: object
    run: RunProgress
    rng: dict
    out: Path | None
    seconds: float = 0.0


def _check_group(members: Sequence[Distiller]) -> None:
    if not members:
        raise ConfigError("fit_group needs at least one student.")
    teachers = {id(d.teacher) for d in members if d.needs_teacher}
    if len(teachers) > 1:
        raise ConfigError("A group shares one teacher forward: give every member the same teacher module "
                          "(one fit_group call per teacher).")
    if distributed_world()[1] > 1:
        raise ConfigError("fit_group runs in one process; under torch.distributed use fit() per run.")


def _start(distiller: Distiller, data: DataBundle, cfg: TrainConfig, sample: torch.Tensor, layout: dict,
           device: torch.device, steps: int, out: Path | None, resume: bool) -> _Member:
    """fit()'s set-up for one member, in fit()'s order, so the RNG it starts training with is fit()'s."""
    seed_everything(cfg.seed, cfg.deterministic)
    distiller.to(device)
    ckpt = resume_checkpoint(out, resume, cfg)
    if ckpt is None:
        init_from_data(distiller.student, data)
    apply_layout(distiller, layout)
    distiller.prepare(sample[:8])
    optimizer = make_optimizer(distiller.trainable_parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    run = restore(ckpt, distiller, optimizer, scheduler, device)
    return _Member(distiller, optimizer, scheduler, run, rng_state(device), out)


def _teacher_pass(members: list[_Member], hooks: FeatureHooks | None, cache: TeacherLogitCache | None, batch):
    """The batch's teacher logits and features, computed once: live when a member reads features (the cache
    then records the logits), else from the cache (filled on a miss); None when no member needs the teacher."""
    needing = [m for m in members if m.distiller.needs_teacher]
    if not needing:
        return None, {}
    if hooks is None and cache is not None:
        return cache.fetch(batch.index, batch.view, batch.images), {}
    with torch.no_grad(), (hooks or contextlib.nullcontext()):
        logits = needing[0].distiller.teacher(batch.images)
        features = dict(hooks.features) if hooks is not None else {}
    if cache is not None:
        cache.record(batch.index, batch.view, logits)
    return logits, features


def _member_step(m: _Member, batch, teacher_logits, features, epoch: int, progress: float, bf16: bool, cache,
                 scheduler_steps: bool, device) -> tuple[torch.Tensor, dict]:
    """train_step for one member on the shared batch, under the member's own RNG state."""
    d = m.distiller
    set_rng_state(m.rng, device)
    with torch.autocast(batch.images.device.type, dtype=torch.bfloat16, enabled=bf16):
        if d.needs_teacher_features:
            given = dict(teacher_logits=teacher_logits, teacher_features={k: features[k] for k in d.teacher_hooks.names})
        elif d.needs_teacher:
            given = dict(teacher_logits=cache.fetch(batch.index, batch.view, batch.images) if cache is not None
                         else teacher_logits)
        else:
            given = {}
        logits, losses = d.forward_train(batch.images, batch.labels, epoch, progress=progress, **given)
    m.optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    m.optimizer.step()
    if scheduler_steps:
        m.scheduler.step()
    m.rng = rng_state(device)
    return logits, losses


def _epoch(members: list[_Member], loader: DeviceLoader, hooks, cache, epoch: int, steps: int, cfg: TrainConfig,
           bf16: bool) -> list[dict]:
    """One pass over the loader for the members still training: train_epoch's sums, member by member."""
    loader.set_epoch(epoch)
    for m in members:
        m.distiller.train()
    names = [[t.name for t in m.distiller.terms] for m in members]
    sums = [torch.zeros(len(n) + 2, device=loader.device) for n in names]
    pending = [[] for _ in members]
    clock = [0.0] * len(members)
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        with torch.autocast(batch.images.device.type, dtype=torch.bfloat16, enabled=bf16):
            teacher_logits, features = _teacher_pass(members, hooks, cache, batch)
        done = (epoch * steps + step + 1) / (cfg.epochs * steps)
        for k, m in enumerate(members):
            t0 = time.perf_counter()
            logits, losses = _member_step(m, batch, teacher_logits, features, epoch, done, bf16, cache,
                                          cfg.schedule != "plateau", loader.device)
            values = torch.stack([losses[n].detach().float() for n in names[k]])
            sums[k][:-2] += values * len(batch.labels)
            sums[k][-2] += (logits.argmax(1) == batch.labels).sum()
            sums[k][-1] += len(batch.labels)
            pending[k].append((epoch, step, values))
            if len(pending[k]) >= (50 if loader.device.type == "cuda" else 1):
                check_finite(pending[k], names[k])
                pending[k].clear()
            clock[k] += time.perf_counter() - t0
    out = []
    for k, total in enumerate(sums):
        check_finite(pending[k], names[k])
        total = total.cpu()
        out.append({"train_loss": (total[:-2].sum() / total[-1]).item(),
                    **{f"loss_{n}": (total[i] / total[-1]).item() for i, n in enumerate(names[k])},
                    "train_acc": (total[-2] / total[-1]).item(), "step_seconds": clock[k]})
    return out


def _close_epoch(m: _Member, train: dict, val_loader: DeviceLoader, data: DataBundle, epoch: int, cfg: TrainConfig,
                 bf16: bool, precision: str, layout: dict, teacher_share: float) -> None:
    """fit()'s end of an epoch for one member: validation, best-on-validation and its checkpoint files. The
    epoch's seconds (its steps, its share of the teacher passes, its validation) are in the row before it is
    saved, so a resumed run keeps them."""
    t0 = time.perf_counter()
    seconds = train.pop("step_seconds") + teacher_share
    train["train_seconds"] = seconds
    improved = close_epoch(m.run, m.distiller, train, val_loader, data, epoch, m.optimizer, m.scheduler, cfg, bf16,
                           seconds=0.0)
    m.run.rows[-1]["seconds"] = seconds + time.perf_counter() - t0
    m.seconds += m.run.rows[-1]["seconds"]
    if m.out:
        save_epoch(m.out, m.run, m.distiller, m.optimizer, m.scheduler, epoch, m.rng, cfg, precision, layout, improved)


def fit_group(members: Sequence[Distiller], data: DataBundle, config: TrainConfig | None = None, *,
              out_dirs: Sequence[str | Path | None] | None = None, resume: bool = True,
              **overrides) -> list[FitResult]:
    """Train every Distiller in `members` as fit(member, data, config) would, sharing each batch's teacher
    forward. Returns one FitResult per member, in order; `seconds` is the member's own steps and validation
    plus its share of the teacher passes. With `out_dirs`, each member writes fit()'s files and resumes
    from its own last.pt (a member further on waits for the others to catch up)."""
    cfg = replace(config or TrainConfig(), **overrides).validate()
    members = list(members)
    _check_group(members)
    if cfg.compile:
        raise ConfigError("fit_group does not compile; pass compile=False or train the run alone with fit().")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, probe=not cfg.deterministic)
    bf16 = precision == "bf16"
    outs = [Path(o) if o is not None else None for o in (out_dirs or [None] * len(members))]
    for m in members:
        m.to(device)
    sample = next(iter(DeviceLoader(data.train, data, min(64, len(data.train)), device=device))).images
    layout = (choose_layout(members[0], sample, device, probe=not cfg.deterministic) if cfg.channels_last
              else {"student": False, "teacher": False})
    loader = DeviceLoader(data.train, data, cfg.batch_size, device=device, augment=cfg.augment, shuffle=True,
                          drop_last=len(data.train) >= cfg.batch_size, seed=cfg.seed, pad=cfg.pad,
                          channels_last=layout["student"])
    val_loader = DeviceLoader(data.val, data, max(cfg.batch_size, 256), device=device, channels_last=layout["student"])
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    runs = [_start(d, data, cfg, sample, layout, device, steps, o, resume) for d, o in zip(members, outs)]
    feature_layers = sorted({n for d in members if d.needs_teacher_features for n in d.teacher_hooks.names})
    teacher = next((d.teacher for d in members if d.needs_teacher), None)
    hooks = FeatureHooks(teacher, feature_layers) if feature_layers else None
    logit_members = any(d.needs_teacher and not d.needs_teacher_features for d in members)
    cache = (shared_cache(teacher, loader, data.num_classes, amp=bf16, directory=cfg.teacher_cache_dir)
             if logit_members and (cfg.teacher_cache or cfg.teacher_cache_dir) else None)
    for epoch in range(min(m.run.start_epoch for m in runs), cfg.epochs):
        active = [m for m in runs if m.run.start_epoch <= epoch
                  and (cfg.early_stopping is None or m.run.stale < cfg.early_stopping)]
        if not active:
            break
        t0 = time.perf_counter()
        trains = _epoch(active, loader, hooks, cache, epoch, steps, cfg, bf16)
        teacher_share = (time.perf_counter() - t0 - sum(t["step_seconds"] for t in trains)) / len(active)
        if cache is not None and cache.path is not None:
            cache.persist()
        for m, train in zip(active, trains):
            _close_epoch(m, train, val_loader, data, epoch, cfg, bf16, precision, layout, teacher_share)
    return [_finish(m, precision, layout, device) for m in runs]


def _finish(m: _Member, precision: str, layout: dict, device) -> FitResult:
    """The member's best-on-validation weights loaded, as fit() leaves its student."""
    load_best(m.distiller.student, m.out, m.run)
    return FitResult(pd.DataFrame(m.run.rows), m.run.best_epoch, m.run.best_acc, str(device), m.seconds, m.out,
                     m.run.resumed_from, precision, None, layout)
