"""One `fit()` for plain and distilled training, in timm's layout: `train_step` (one batch),
`train_epoch` (one pass, per-batch schedule, loss sums) and `fit` (the run: set-up, resume,
validation, checkpoints, early stopping).

The loop sums the Distiller's loss dict (plain training is a Distiller with only "ce"), keeps
data on the device, evaluates on the validation split every epoch, keeps the best checkpoint by
validation accuracy and the last one for resuming, and never looks at the test split.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn

from .atomic import atomic_write_text
from .cache import TeacherLogitCache, shared_cache
from .checkpoint import load_checkpoint, resume_state, rng_state, save_checkpoint, set_rng_state
from .config import FitResult, TrainConfig, make_optimizer, make_scheduler
from .data import Batch, DataBundle, DeviceLoader
from .distill import Distiller
from .errors import ConfigError, NonFiniteLossError
from .metrics import confusion, metrics_from_confusion
from .models import init_from_data
from .runtime import choose_channels_last, distributed_world, resolve_device, resolve_precision, seed_everything


def choose_layout(distiller: Distiller, images: torch.Tensor, device: torch.device, probe: bool = True) -> dict:
    """{"student": bool, "teacher": bool}: which of the two runs NHWC (choose_channels_last for each)."""
    teacher = distiller.teacher
    return {"student": choose_channels_last(distiller.student, images, device, True, probe),
            "teacher": teacher is not None and choose_channels_last(teacher, images, device, False, probe)}


def apply_layout(distiller: Distiller, layout: dict) -> None:
    """NHWC weights make the convs run NHWC, even on NCHW batches. A teacher stays NHWC after the run (its
    values are unchanged). A run without a teacher (a baseline co-trained beside KD runs, whose first member
    chose the group's layout) has none to convert."""
    for name, on in layout.items():
        module = getattr(distiller, name)
        if on and module is not None:
            module.to(memory_format=torch.channels_last)


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
    world = distributed_world()[1]
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
            check_finite(pending, names)
            pending.clear()
    check_finite(pending, names)
    if distributed_world()[1] > 1:
        dist.all_reduce(sums)
        for b in distiller.student.buffers():  # BN statistics as rank 0 has them (what DDP does)
            dist.broadcast(b.data, 0)
    sums = sums.cpu()
    return {"train_loss": (sums[:-2].sum() / sums[-1]).item(),
            **{f"loss_{n}": (sums[i] / sums[-1]).item() for i, n in enumerate(names)},
            "train_acc": (sums[-2] / sums[-1]).item()}


TIMING_COLUMNS = ("seconds", "train_seconds")  # history columns that differ between identical runs


@dataclass
class RunProgress:
    """Where a run stands between epochs: what a checkpoint restores and each epoch updates."""
    rows: list = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = -1
    stale: int = 0  # epochs since the best
    start_epoch: int = 0
    resumed_from: int | None = None
    best_state: dict | None = None  # the best weights, kept in memory when no out_dir holds best.pt


def resume_checkpoint(out: Path | None, resume: bool, cfg: TrainConfig) -> dict | None:
    """last.pt of this configuration, or None to start fresh; another configuration's is refused untouched."""
    return resume_state(out / "last.pt" if (out and resume) else None, cfg.key(),
                        fix="use another out_dir, pass resume=False, or delete it")


def restore(ckpt: dict | None, distiller: Distiller, optimizer, scheduler, device: torch.device) -> RunProgress:
    """Load a checkpoint's weights, optimiser, schedule and RNG states; the run's progress (fresh without one)."""
    if not ckpt:
        return RunProgress()
    distiller.student.load_state_dict(ckpt["student"])
    distiller.terms.load_state_dict(ckpt["terms"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"], device)
    return RunProgress(ckpt["history"], ckpt["best_val_acc"], ckpt["best_epoch"], ckpt["stale"],
                       ckpt["epoch"] + 1, ckpt["epoch"] + 1)


def close_epoch(run: RunProgress, distiller: Distiller, train: dict, val_loader: DeviceLoader, data: DataBundle,
                epoch: int, optimizer, scheduler, cfg: TrainConfig, bf16: bool, seconds: float) -> bool:
    """Validate, step a plateau schedule, append the epoch's row and track the best; True when it improved."""
    cm, val_loss_sum = confusion(distiller.student, val_loader, data.num_classes, bf16)
    val = metrics_from_confusion(cm)
    if cfg.schedule == "plateau":
        scheduler.step(val["acc"])
    run.rows.append({"epoch": epoch + 1, **train, "val_loss": val_loss_sum / max(len(data.val), 1),
                     "val_acc": val["acc"], "val_f1": val["f1"], "lr": optimizer.param_groups[0]["lr"],
                     "seconds": seconds})
    improved = val["acc"] > run.best_acc
    if improved:
        run.best_acc, run.best_epoch, run.stale = val["acc"], epoch + 1, 0
        run.best_state = {k: v.detach().clone() for k, v in distiller.student.state_dict().items()}
    else:
        run.stale += 1
    return improved


def save_epoch(out: Path, run: RunProgress, distiller: Distiller, optimizer, scheduler, epoch: int, rng: dict,
               cfg: TrainConfig, precision: str, layout: dict, improved: bool) -> None:
    """best.pt when the epoch improved, last.pt (everything a resume needs) and history.csv, each atomically."""
    student = distiller.student
    if improved:
        save_checkpoint({"model": student.state_dict(), "epoch": epoch, "val_acc": run.best_acc}, out / "best.pt")
    save_checkpoint({"student": student.state_dict(), "terms": distiller.terms.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                     "rng": rng, "history": run.rows, "best_val_acc": run.best_acc, "best_epoch": run.best_epoch,
                     "stale": run.stale, "config_key": cfg.key(), "config": dataclasses.asdict(cfg),
                     "precision": precision, "channels_last": layout}, out / "last.pt")
    atomic_write_text(pd.DataFrame(run.rows).to_csv(index=False), out / "history.csv")


def load_best(student: nn.Module, out: Path | None, run: RunProgress) -> None:
    """Leave the student with its best-on-validation weights, in eval mode."""
    if out and (out / "best.pt").exists():
        student.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    elif run.best_state is not None:
        student.load_state_dict(run.best_state)
    student.eval()


def _log_epoch(row: dict, epochs: int, term_names: list[str], improved: bool) -> None:
    terms = " ".join(f"{n}={row[f'loss_{n}']:.4f}" for n in term_names)
    print(f"epoch {row['epoch']:>3}/{epochs} {terms} train_acc={row['train_acc']:.4f} val_acc={row['val_acc']:.4f} "
          f"val_f1={row['val_f1']:.4f} lr={row['lr']:.2e} {row['seconds']:.1f}s{' *' if improved else ''}", flush=True)


def _broadcast_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """Rank 0's flags on every rank (precision and layout must agree across ranks)."""
    if distributed_world()[1] == 1:
        return flags
    t = torch.tensor(flags, dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return [bool(v) for v in t.tolist()]


def _run_layout(distiller: Distiller, sample: torch.Tensor, device: torch.device, cfg: TrainConfig,
                ckpt: dict | None) -> dict:
    """A resumed run keeps its memory format; a new one measures it (choose_layout), rank 0's on every rank."""
    layout = ckpt.get("channels_last") if ckpt else None
    if layout is None:
        layout = (choose_layout(distiller, sample, device, probe=not cfg.deterministic) if cfg.channels_last
                  else {"student": False, "teacher": False})
    student, teacher = _broadcast_flags([layout["student"], layout["teacher"]], device)
    return {"student": student, "teacher": teacher}


def _loaders(data: DataBundle, cfg: TrainConfig, device: torch.device, channels_last: bool) -> tuple[DeviceLoader, DeviceLoader]:
    """The shuffled, augmented training loader (this rank's shard) and the validation loader."""
    rank, world = distributed_world()
    train = DeviceLoader(data.train, data, cfg.batch_size, device=device, augment=cfg.augment, shuffle=True,
                         drop_last=len(data.train) // world >= cfg.batch_size, seed=cfg.seed, pad=cfg.pad,
                         channels_last=channels_last, rank=rank, world_size=world)
    val = DeviceLoader(data.val, data, max(cfg.batch_size, 256), device=device, channels_last=channels_last,
                       rank=rank, world_size=world)
    return train, val


def _logit_cache(distiller: Distiller, cfg: TrainConfig, loader: DeviceLoader, data: DataBundle,
                 bf16: bool) -> TeacherLogitCache | None:
    """The exact teacher-logit cache, for logit methods when asked (feature methods need the live teacher)."""
    if (cfg.teacher_cache or cfg.teacher_cache_dir) and distiller.needs_teacher and not distiller.needs_teacher_features:
        return shared_cache(distiller.teacher, loader, data.num_classes, amp=bf16, directory=cfg.teacher_cache_dir)
    return None


def fit(model: nn.Module | Distiller, data: DataBundle, config: TrainConfig | None = None, *,
        out_dir: str | os.PathLike | None = None, resume: bool = True, **overrides) -> FitResult:
    """Train `model` (a student, or a Distiller holding student + teacher + terms) on `data`.

    Returns the per-epoch history (loss per term, train/val accuracy, val macro-F1, lr, seconds, and
    train_seconds: the epoch's steps without its validation)
    with the best validation checkpoint's weights loaded into the student. With `out_dir`,
    writes best.pt, last.pt (model, optimiser, scheduler, epoch, RNG states, history, config
    key, precision) and history.csv atomically; a rerun with the same arguments resumes from last.pt.
    The caller's teacher keeps its dtype and weights (bf16 runs it under autocast).
    """
    cfg = dataclasses.replace(config or TrainConfig(), **overrides).validate()
    distiller = model if isinstance(model, Distiller) else Distiller(model)
    device, (rank, world) = resolve_device(cfg.device), distributed_world()
    out = Path(out_dir) if out_dir is not None else None
    ckpt = resume_checkpoint(out, resume, cfg)
    s = _set_up(distiller, data, cfg, ckpt, device, world)
    run = restore(ckpt, distiller, s.optimizer, s.scheduler, device)
    if ckpt and rank == 0:
        print(f"resumed from {out / 'last.pt'} after epoch {run.start_epoch}", flush=True)
    t_start = time.perf_counter()
    for epoch in range(run.start_epoch, cfg.epochs):
        if cfg.early_stopping is not None and run.stale >= cfg.early_stopping:
            break
        _run_epoch(run, distiller, data, s, cfg, epoch, out, device, rank)
    if world > 1:  # rank 0 may still be writing this run's best.pt: others must not load the previous one
        dist.barrier()
    load_best(distiller.student, out, run)
    cache_stats = None if s.cache is None else {"hits": s.cache.hits - s.hits0, "misses": s.cache.misses - s.misses0,
                                                "fill_fraction": s.cache.fill_fraction}
    return FitResult(pd.DataFrame(run.rows), run.best_epoch, run.best_acc, str(device), time.perf_counter() - t_start,
                     out, run.resumed_from, s.precision, cache_stats, s.layout)


@dataclass
class _RunSetUp:
    """What `fit` builds before its first epoch (and a resumed run rebuilds): precision, layout, loaders, optimiser."""
    precision: str
    layout: dict
    train_loader: DeviceLoader
    val_loader: DeviceLoader
    steps: int
    optimizer: torch.optim.Optimizer
    scheduler: object
    cache: TeacherLogitCache | None
    hits0: int
    misses0: int


def _set_up(distiller: Distiller, data: DataBundle, cfg: TrainConfig, ckpt: dict | None, device: torch.device,
            world: int) -> _RunSetUp:
    """Precision, seeding, data-dependent init, layout, loaders, optimiser, scheduler and logit cache, in the order
    the golden-numerics test pins (the RNG stream depends on it)."""
    student = distiller.student
    # a resumed run keeps its precision; a deterministic one must not depend on a timing
    precision = ckpt["precision"] if ckpt else resolve_precision(cfg.precision, device, probe=not cfg.deterministic)
    bf16 = _broadcast_flags([precision == "bf16"], device)[0]
    seed_everything(cfg.seed, cfg.deterministic)
    distiller.to(device)
    sample = next(iter(DeviceLoader(data.train, data, min(64, len(data.train)), device=device))).images
    if ckpt is None:  # data-dependent init (airbench's whitening); a resumed run loads it with the weights
        init_from_data(student, data)
    layout = _run_layout(distiller, sample, device, cfg, ckpt)
    apply_layout(distiller, layout)
    train_loader, val_loader = _loaders(data, cfg, device, channels_last=layout["student"])
    distiller.prepare(sample[:8])
    params = distiller.trainable_parameters()
    if world > 1:  # identical start on every rank
        for t in list(params) + list(student.buffers()):
            dist.broadcast(t.data, 0)
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    cache = _logit_cache(distiller, cfg, train_loader, data, bf16)
    if cfg.compile:
        if distiller.needs_teacher_features:  # hooks re-registered every step would force recompiles
            raise ConfigError("compile=True works with logit methods only (baseline, kd, dkd); feature methods "
                              "read forward hooks. Set compile=False for this method.")
        student.compile()  # in place: state_dict keys stay the same
    return _RunSetUp("bf16" if bf16 else "fp32", layout, train_loader, val_loader, steps, optimizer, scheduler, cache,
                     *((cache.hits, cache.misses) if cache is not None else (0, 0)))


def _run_epoch(run: RunProgress, distiller: Distiller, data: DataBundle, s: _RunSetUp, cfg: TrainConfig, epoch: int,
               out: Path | None, device: torch.device, rank: int) -> None:
    """One epoch of `fit`: train, persist the logit cache, validate, log, checkpoint."""
    t0 = time.perf_counter()
    bf16 = s.precision == "bf16"
    train = train_epoch(distiller, s.train_loader, s.optimizer, None if cfg.schedule == "plateau" else s.scheduler,
                        epoch=epoch, steps=s.steps, cache=s.cache, bf16=bf16, progress=cfg.progress and rank == 0,
                        run_steps=cfg.epochs * s.steps)
    train["train_seconds"] = time.perf_counter() - t0  # the steps alone: what plan.probe_fit times
    if s.cache is not None and s.cache.path is not None:  # every rank: each holds the views of its own shard
        s.cache.persist()
    improved = close_epoch(run, distiller, train, s.val_loader, data, epoch, s.optimizer, s.scheduler, cfg, bf16,
                           seconds=0.0)
    run.rows[-1]["seconds"] = time.perf_counter() - t0
    if rank == 0:
        if not cfg.progress:
            _log_epoch(run.rows[-1], cfg.epochs, [t.name for t in distiller.terms], improved)
        if out:
            save_epoch(out, run, distiller, s.optimizer, s.scheduler, epoch, rng_state(device), cfg, s.precision,
                       s.layout, improved)


def check_finite(pending: list[tuple[int, int, torch.Tensor]], names: list[str]) -> None:
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
