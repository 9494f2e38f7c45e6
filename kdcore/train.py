"""One `fit()` for plain and distilled training, in timm's layout: `train_step` (one batch),
`train_epoch` (one pass, per-batch schedule, loss sums) and `fit` (the run: set-up, resume,
validation, checkpoints, early stopping).

The loop sums the Distiller's loss dict (plain training is a Distiller with only "ce"), keeps
data on the device, evaluates on the validation split every epoch, keeps the best checkpoint by
validation accuracy and the last one for resuming, and never looks at the test split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn

from .airbench import init_from_data
from .cache import TeacherLogitCache, shared_cache
from .data import Batch, DataBundle, DeviceLoader, atomic_save, atomic_write_text
from .distill import Distiller
from .errors import CheckpointError, ConfigError, NonFiniteLossError, unknown_name
from .runtime import PRECISIONS, choose_channels_last, resolve_device, resolve_precision, seed_everything

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "plateau", "constant")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    augment: bool = True  # random crop (zero padding `pad`) + horizontal flip, batched on the device
    pad: int = 4
    early_stopping: int | None = None  # stop after this many epochs without a better validation accuracy
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast for student and teacher, or fp32; "auto": see resolve_precision
    channels_last: bool = True  # NHWC where it pays: on CUDA always, on CPU per model (choose_channels_last)
    compile: bool = False
    teacher_cache: bool = False  # exact per-view teacher-logit cache (kdcore.cache), shared by runs of one teacher
    teacher_cache_dir: str | None = None  # also keep that cache here, for runs in other processes (implies teacher_cache)
    seed: int = 0
    deterministic: bool = False
    progress: bool = False
    max_steps_per_epoch: int | None = None  # cap for smoke runs

    def validate(self) -> "TrainConfig":
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}.")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}.")
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, SCHEDULES)
        if self.precision not in PRECISIONS:
            raise unknown_name("precision", self.precision, PRECISIONS)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}.")
        return self

    def key(self) -> str:
        """Hash of everything that changes the result (not progress or compile), for resume checks."""
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in ("progress", "compile", "device", "teacher_cache_dir")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class FitResult:
    history: pd.DataFrame
    best_epoch: int
    best_val_acc: float
    device: str
    seconds: float
    out_dir: Path | None
    resumed_from: int | None = None  # epoch the run resumed after, if it did
    precision: str = "fp32"  # what "auto" resolved to
    teacher_cache: dict | None = None  # this run's cache lookups: hits, misses, fill_fraction (None: no cache)
    channels_last: dict = dataclasses.field(default_factory=dict)  # {"student": bool, "teacher": bool}: who ran NHWC


def choose_layout(distiller: Distiller, images: torch.Tensor, device: torch.device, probe: bool = True) -> dict:
    """{"student": bool, "teacher": bool}: which of the two runs NHWC (choose_channels_last for each)."""
    teacher = distiller.teacher
    return {"student": choose_channels_last(distiller.student, images, device, True, probe),
            "teacher": teacher is not None and choose_channels_last(teacher, images, device, False, probe)}


def apply_layout(distiller: Distiller, layout: dict) -> None:
    """NHWC weights make the convs run NHWC, even on NCHW batches. A teacher stays NHWC after the run (its
    values are unchanged)."""
    for name, on in layout.items():
        if on:
            getattr(distiller, name).to(memory_format=torch.channels_last)


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    """Step-wise schedules (stepped every batch) except plateau (stepped on validation accuracy)."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=max(warmup / total, 0.15))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total - warmup, 1)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if cfg.schedule == "step":
            return 0.1 ** ((t >= 0.5) + (t >= 0.75))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def confusion(model: nn.Module, loader: DeviceLoader, num_classes: int, amp: bool = False) -> tuple[torch.Tensor, float]:
    """(confusion matrix [true, pred] summed over ranks, summed cross-entropy) of `model` on a loader."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes * num_classes, dtype=torch.long, device=loader.device)
    loss = torch.zeros((), device=loader.device)
    for batch in loader:
        with torch.autocast(loader.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(batch.images).float()
        loss += nn.functional.cross_entropy(logits, batch.labels, reduction="sum")
        cm += torch.bincount(batch.labels * num_classes + logits.argmax(1), minlength=num_classes * num_classes)
    if _dist()[1] > 1:
        dist.all_reduce(cm)
        dist.all_reduce(loss)
    model.train(was_training)
    return cm.view(num_classes, num_classes).cpu(), loss.item()


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 (classes never predicted count as 0 precision)."""
    cm = cm.double()
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), torch.zeros_like(tp))
    present = support > 0
    return {"acc": (tp.sum() / cm.sum().clamp_min(1)).item(), "precision": precision[present].mean().item(),
            "recall": recall[present].mean().item(), "f1": f1[present].mean().item()}


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint, turning truncation or corruption into a CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err}). "
                              f"Delete it to start fresh, or restore it from a backup; it was left untouched.") from err


def _all_reduce_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average gradients over ranks in one flat all-reduce (same effect as DDP, hooks stay intact)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


# --------------------------------------------------------------------------- the loop
def train_step(distiller: Distiller, batch: Batch, optimizer: torch.optim.Optimizer, *, epoch: int = 0,
               cache: TeacherLogitCache | None = None, bf16: bool = False,
               progress: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step on one batch: forward under bf16 autocast if asked (teacher logits from `cache`
    when given), backward, gradient all-reduce under torch.distributed, step. `progress` (the run's share of
    steps done after this one) reaches the terms, for schedules such as DKD's warm-up. Returns (student
    logits, {term: weighted loss}) as device tensors: nothing here waits for the device."""
    with torch.autocast(batch.images.device.type, dtype=torch.bfloat16, enabled=bf16):
        teacher_logits = cache.fetch(batch.index, batch.view, batch.images) if cache is not None else None
        logits, losses = distiller.forward_train(batch.images, batch.labels, epoch, teacher_logits=teacher_logits,
                                                 progress=progress)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    world = _dist()[1]
    if world > 1:
        _all_reduce_gradients([p for group in optimizer.param_groups for p in group["params"]], world)
    optimizer.step()
    return logits, losses


def train_epoch(distiller: Distiller, loader: DeviceLoader, optimizer: torch.optim.Optimizer, scheduler=None, *,
                epoch: int = 0, steps: int | None = None, cache: TeacherLogitCache | None = None, bf16: bool = False,
                progress: bool = False, run_steps: int | None = None) -> dict[str, float]:
    """One pass of train_step over `loader` (at most `steps` batches), stepping a per-batch `scheduler`.
    With `run_steps` (the whole run's steps), each step tells the terms how far the run has come.

    Returns train_loss (the summed terms), loss_<term> and train_acc, sample-weighted over the epoch and
    over ranks. Finiteness is checked every step on CPU and every 50 on CUDA, where a check is a sync.
    """
    distiller.train()
    loader.set_epoch(epoch)
    names = [t.name for t in distiller.terms]
    steps = len(loader) if steps is None else min(len(loader), steps)
    check_every = 50 if loader.device.type == "cuda" else 1
    sums = torch.zeros(len(names) + 2, device=loader.device)  # terms..., correct, count
    pending: list[tuple[int, int, torch.Tensor]] = []
    for step, batch in enumerate(_progress(loader, steps, f"epoch {epoch + 1}", progress)):
        if step >= steps:
            break
        done = (epoch * steps + step + 1) / run_steps if run_steps else None
        logits, losses = train_step(distiller, batch, optimizer, epoch=epoch, cache=cache, bf16=bf16, progress=done)
        if scheduler is not None:
            scheduler.step()
        values = torch.stack([losses[n].detach().float() for n in names])
        sums[:-2] += values * len(batch.labels)
        sums[-2] += (logits.argmax(1) == batch.labels).sum()
        sums[-1] += len(batch.labels)
        pending.append((epoch, step, values))
        if len(pending) >= check_every:
            _check_finite(pending, names)
            pending.clear()
    _check_finite(pending, names)
    if _dist()[1] > 1:
        dist.all_reduce(sums)
        for b in distiller.student.buffers():  # BN statistics as rank 0 has them (what DDP does)
            dist.broadcast(b.data, 0)
    sums = sums.cpu()
    return {"train_loss": (sums[:-2].sum() / sums[-1]).item(),
            **{f"loss_{n}": (sums[i] / sums[-1]).item() for i, n in enumerate(names)},
            "train_acc": (sums[-2] / sums[-1]).item()}


def _resume_state(out: Path | None, resume: bool, cfg: TrainConfig) -> dict | None:
    """last.pt of this configuration, or None to start fresh; another configuration's is refused untouched."""
    path = out / "last.pt" if out else None
    if not (path and resume and path.exists()):
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("config_key") != cfg.key():
        raise CheckpointError(f"{path} was written by a different configuration (key {ckpt.get('config_key')} "
                              f"vs {cfg.key()}); use another out_dir, pass resume=False, or delete it.")
    return ckpt


def fit(model: nn.Module | Distiller, data: DataBundle, config: TrainConfig | None = None, *,
        out_dir: str | os.PathLike | None = None, resume: bool = True, **overrides) -> FitResult:
    """Train `model` (a student, or a Distiller holding student + teacher + terms) on `data`.

    Returns the per-epoch history (loss per term, train/val accuracy, val macro-F1, lr, seconds)
    with the best validation checkpoint's weights loaded into the student. With `out_dir`,
    writes best.pt, last.pt (model, optimiser, scheduler, epoch, RNG states, history, config
    key, precision) and history.csv atomically; a rerun with the same arguments resumes from last.pt.
    The caller's teacher keeps its dtype and weights (bf16 runs it under autocast).
    """
    cfg = dataclasses.replace(config or TrainConfig(), **overrides).validate()
    distiller = model if isinstance(model, Distiller) else Distiller(model)
    student = distiller.student
    device = resolve_device(cfg.device)
    rank, world = _dist()
    out = Path(out_dir) if out_dir is not None else None
    ckpt = _resume_state(out, resume, cfg)
    # a resumed run keeps its precision; a deterministic one must not depend on a timing
    precision = ckpt["precision"] if ckpt else resolve_precision(cfg.precision, device, probe=not cfg.deterministic)
    if world > 1:  # every rank trains in rank 0's precision
        flag = torch.tensor([precision == "bf16"], dtype=torch.int64, device=device)
        dist.broadcast(flag, 0)
        precision = "bf16" if flag.item() else "fp32"
    bf16 = precision == "bf16"
    seed_everything(cfg.seed, cfg.deterministic)

    distiller.to(device)
    sample = next(iter(DeviceLoader(data.train, data, min(64, len(data.train)), device=device))).images
    if ckpt is None:  # data-dependent init (airbench's whitening); a resumed run loads it with the weights
        init_from_data(student, data)
    layout = ckpt.get("channels_last") if ckpt else None  # a resumed run keeps its memory format
    if layout is None:
        layout = (choose_layout(distiller, sample, device, probe=not cfg.deterministic) if cfg.channels_last
                  else {"student": False, "teacher": False})
    if world > 1:  # every rank runs rank 0's layout
        flags = torch.tensor([layout["student"], layout["teacher"]], dtype=torch.int64, device=device)
        dist.broadcast(flags, 0)
        layout = {"student": bool(flags[0]), "teacher": bool(flags[1])}
    apply_layout(distiller, layout)
    channels_last = layout["student"]  # the batches follow the student's layout
    train_loader = DeviceLoader(data.train, data, cfg.batch_size, device=device, augment=cfg.augment, shuffle=True,
                                drop_last=len(data.train) // world >= cfg.batch_size, seed=cfg.seed, pad=cfg.pad,
                                channels_last=channels_last, rank=rank, world_size=world)
    val_loader = DeviceLoader(data.val, data, max(cfg.batch_size, 256), device=device,
                              channels_last=channels_last, rank=rank, world_size=world)
    distiller.prepare(sample[:8])
    params = distiller.trainable_parameters()
    if world > 1:  # identical start on every rank
        for t in list(params) + list(student.buffers()):
            dist.broadcast(t.data, 0)
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    optimizer = _make_optimizer(params, cfg)
    scheduler = _make_scheduler(optimizer, cfg, steps)
    cache = None
    if (cfg.teacher_cache or cfg.teacher_cache_dir) and distiller.needs_teacher and not distiller.needs_teacher_features:
        cache = shared_cache(distiller.teacher, train_loader, data.num_classes, amp=bf16,
                             directory=cfg.teacher_cache_dir)
        hits0, misses0 = cache.hits, cache.misses
    if cfg.compile:
        if distiller.needs_teacher_features:  # hooks re-registered every step would force recompiles
            raise ConfigError("compile=True works with logit methods only (baseline, kd, dkd); feature methods "
                              "read forward hooks. Set compile=False for this method.")
        student.compile()  # in place: state_dict keys stay the same

    rows: list[dict] = []
    best_state = None
    start_epoch, best_acc, best_epoch, resumed_from, stale = 0, -1.0, -1, None, 0
    if ckpt:
        student.load_state_dict(ckpt["student"])
        distiller.terms.load_state_dict(ckpt["terms"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], device)
        rows, best_acc, best_epoch, stale = ckpt["history"], ckpt["best_val_acc"], ckpt["best_epoch"], ckpt["stale"]
        start_epoch = resumed_from = ckpt["epoch"] + 1
        if rank == 0:
            print(f"resumed from {out / 'last.pt'} after epoch {ckpt['epoch'] + 1}", flush=True)

    term_names = [t.name for t in distiller.terms]
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.early_stopping is not None and stale >= cfg.early_stopping:
            break
        t0 = time.perf_counter()
        train = train_epoch(distiller, train_loader, optimizer, None if cfg.schedule == "plateau" else scheduler,
                            epoch=epoch, steps=steps, cache=cache, bf16=bf16, progress=cfg.progress and rank == 0,
                            run_steps=cfg.epochs * steps)
        if cache is not None and cache.path is not None:  # every rank: each holds the views of its own shard
            cache.persist()
        cm, val_loss_sum = confusion(student, val_loader, data.num_classes, bf16)
        val = metrics_from_confusion(cm)
        if cfg.schedule == "plateau":
            scheduler.step(val["acc"])
        row = {"epoch": epoch + 1, **train, "val_loss": val_loss_sum / max(len(data.val), 1), "val_acc": val["acc"],
               "val_f1": val["f1"], "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        rows.append(row)
        improved = val["acc"] > best_acc
        if improved:
            best_acc, best_epoch, stale = val["acc"], epoch + 1, 0
        else:
            stale += 1
        if rank == 0:
            if not cfg.progress:
                terms = " ".join(f"{n}={row[f'loss_{n}']:.4f}" for n in term_names)
                print(f"epoch {epoch + 1:>3}/{cfg.epochs} {terms} train_acc={row['train_acc']:.4f} "
                      f"val_acc={row['val_acc']:.4f} val_f1={row['val_f1']:.4f} lr={row['lr']:.2e} "
                      f"{row['seconds']:.1f}s{' *' if improved else ''}", flush=True)
            if out:
                if improved:
                    atomic_save({"model": student.state_dict(), "epoch": epoch, "val_acc": best_acc}, out / "best.pt")
                atomic_save({"student": student.state_dict(), "terms": distiller.terms.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": _rng_state(device),
                             "history": rows, "best_val_acc": best_acc, "best_epoch": best_epoch, "stale": stale,
                             "config_key": cfg.key(), "config": dataclasses.asdict(cfg), "precision": precision,
                             "channels_last": layout},
                            out / "last.pt")
                atomic_write_text(pd.DataFrame(rows).to_csv(index=False), out / "history.csv")
        if best_epoch == epoch + 1:
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    if world > 1:  # rank 0 may still be writing this run's best.pt: others must not load the previous one
        dist.barrier()
    if out and (out / "best.pt").exists():
        student.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    elif best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    cache_stats = None if cache is None else {"hits": cache.hits - hits0, "misses": cache.misses - misses0,
                                              "fill_fraction": cache.fill_fraction}
    return FitResult(pd.DataFrame(rows), best_epoch, best_acc, str(device), time.perf_counter() - t_start, out,
                     resumed_from, precision, cache_stats, layout)


def _check_finite(pending: list[tuple[int, int, torch.Tensor]], names: list[str]) -> None:
    """Stop at the first step whose term was NaN/Inf, naming the term and the step."""
    if not pending or bool(torch.isfinite(torch.stack([v for *_, v in pending])).all()):
        return
    for epoch, step, values in pending:
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise NonFiniteLossError(f"Loss term '{names[bad[0]]}' became {values[bad[0]].item()} at epoch {epoch + 1}, "
                                     f"step {step}. Lower the learning rate or that term's weight, or check the "
                                     f"inputs for NaN/Inf.")


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False)
