"""A fast, strong CIFAR-10 teacher: our own, readable take on Keller Jordan's airbench94.

Reference: K. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (arXiv:2404.00498) and
github.com/KellerJordan/cifar10-airbench (`legacy/airbench94.py`, `airbench/utils.py`, MIT licence):
94.0 % mean test accuracy in 9.9 epochs with a 2.0 M-parameter net (conv widths 64/256/256).
The network, the hyper-parameters and the tricks below are airbench94's; the code is ours.

The tricks, one line each:
- whitening: the first conv is a frozen 2×2 PCA whitening of training patches (± each eigenvector);
- identity init: each 3×3 conv starts as a partial identity (dirac), so the net starts shallow;
- BatchNorm without scale: only the BN shift trains, with a 64× learning rate (same weight decay);
- pool early: each stage max-pools right after its first conv, so its second conv is 4× cheaper;
- logits ÷ 9 and label smoothing 0.2: softer outputs and targets, which regularise a short run;
- decoupled Nesterov SGD: lr and weight decay are per 1024 examples, independent of the momentum;
- triangular lr: linear 0.2 → 1 over the first 23 % of steps, then linear 1 → 0.07;
- lookahead: every 5 steps the weights move to an EMA of themselves, more so as training ends;
- whitening bias trains for the first 3 epochs only, then freezes with the whitening weights;
- alternating flip: every image gets a random mirror once, then all flip together on odd epochs;
- translate: random shifts of up to 2 pixels;
- test-time augmentation (TTA): logits averaged over mirror and ±1-pixel shift views (TTA_VIEWS).

Changes for kdcore:
- the input gets 1 pixel of zero (mean-colour) padding bottom/right before the 2×2 whitening, so stage maps are
  16²/8²/4² (airbench: 31² → 15²/7²/3²), the sizes of the students' stages: feature KD pairs stages of
  equal resolution, and none of the students has a 15², 7² or 3² stage. It costs ~24 % more FLOPs;
- global max pooling over the final 4² map instead of MaxPool2d(3) over 3²;
- it trains on kdcore's train split (45,000 CIFAR-10 images; airbench uses all 50,000, there is no
  validation split there) and reports validation and test accuracy separately;
- shifts pad with black pixels (kdcore.data.DeviceLoader, and TTA likewise) instead of reflection;
- bf16 autocast on CUDA and on AMX CPUs (fp32 otherwise) instead of fp16 weights.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import resume_state, save_checkpoint
from .data import DataBundle, DeviceLoader, Split, apply_views
from .errors import ConfigError, unknown_name
from .models.airbench import AirbenchNet, ShiftBatchNorm, init_from_data
from .runtime import PRECISIONS, choose_channels_last, cpu_features, resolve_device, resolve_precision

# airbench94's hyper-parameters (hyp in airbench94.py), in its decoupled form
LR = 11.5  # per 1024 examples; loss is summed over the batch
MOMENTUM = 0.85  # Nesterov
WEIGHT_DECAY = 0.0153  # per 1024 examples, independent of the lr
BN_BIAS_LR_SCALE = 64.0  # BatchNorm shifts learn this much faster (weight decay unchanged)
LABEL_SMOOTHING = 0.2
WHITEN_BIAS_EPOCHS = 3
TRANSLATE = 2  # pixels
LOOKAHEAD_EVERY = 5  # steps
EPOCHS = 9.9
BATCH_SIZE = 1024

# TTA views (airbench tta_level=2): (mirrored, window offset in both axes, weight). Offset -1 crops the
# window one pixel up-left of a 1-pixel zero-padded image (its content moves down-right), +1 down-right.
TTA_VIEWS = ((False, 0, 1 / 4), (True, 0, 1 / 4),
             (False, -1, 1 / 8), (True, -1, 1 / 8), (False, 1, 1 / 8), (True, 1, 1 / 8))


# --------------------------------------------------------------------------- training
def lr_factor(step: int, total_steps: int) -> float:
    """Triangular schedule: 0.2 → 1 linearly over the first 23 % of steps, then 1 → 0.07 linearly."""
    warmup = int(total_steps * 0.23)
    if step < warmup:
        return 0.2 + 0.8 * step / warmup
    return 1.0 - 0.93 * (step - warmup) / (total_steps - warmup)


class Lookahead:
    """A slow copy of all float state (weights and BN statistics); update() moves the slow copy towards
    the model by 1 - decay and resets the model to it (airbench's LookaheadState)."""

    def __init__(self, model: nn.Module):
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            if k in self.slow:
                self.slow[k].lerp_(v, 1 - decay)
                v.copy_(self.slow[k])


def _optimizer(model: AirbenchNet, batch_size: int) -> torch.optim.SGD:
    """Nesterov SGD with airbench's decoupled lr and weight decay turned into torch's parameters.

    Nesterov momentum m makes steady-state steps 1 + 1/(1 - m) times the gradient, so the lr is divided
    by that; torch multiplies the weight decay by the lr, so it is divided by the lr.
    """
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr, wd = LR / kilostep, WEIGHT_DECAY * batch_size / kilostep
    bn_biases = [m.bias for m in model.modules() if isinstance(m, ShiftBatchNorm)]
    others = [p for p in model.parameters() if all(p is not b for b in bn_biases)]  # convs, linear, whitening bias
    bias_lr = lr * BN_BIAS_LR_SCALE
    return torch.optim.SGD([dict(params=bn_biases, lr=bias_lr, weight_decay=wd / bias_lr),
                            dict(params=others, lr=lr, weight_decay=wd / lr)], momentum=MOMENTUM, nesterov=True)


def _resolve(device: str, precision: str) -> tuple[torch.device, str, bool]:
    """The device, "fp32" or "bf16" (runtime.resolve_precision, fit()'s rule: bf16 on CUDA, and on CPUs with AMX),
    and whether the CPU has AMX tiles."""

    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    device = resolve_device(device)
    return device, resolve_precision(precision, device), cpu_features()["amx"]


def _channels_last(model: nn.Module, data: DataBundle, device: torch.device) -> bool:
    """runtime.choose_channels_last on 64 training images: NHWC on CUDA, on a CPU where it measures faster."""

    sample = next(iter(DeviceLoader(data.train, data, min(64, len(data.train)), device=device))).images
    return choose_channels_last(model, sample, device, train=True)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _Optimisation:
    """The recipe's optimiser, lr schedule and lookahead, saved and restored together."""

    def __init__(self, model: AirbenchNet, batch_size: int, total_steps: int):
        self.optimizer = _optimizer(model, batch_size)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, total_steps))
        self.lookahead = Lookahead(model)

    def state(self) -> dict:
        return dict(optimizer=self.optimizer.state_dict(), schedule=self.schedule.state_dict(), lookahead=self.lookahead.slow)

    def restore(self, state: dict, device: torch.device) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.lookahead.slow = {k: v.to(device) for k, v in state["lookahead"].items()}


def _train_epoch(model: AirbenchNet, loader: DeviceLoader, mirrored: torch.Tensor, opt: _Optimisation, epoch: int,
                 step: int, total_steps: int, bf16: bool) -> tuple[int, float, float]:
    """One epoch of airbench's step, stopping at `total_steps`; returns (step, train loss, train accuracy)."""
    model.train()
    model.whiten.bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)
    loader.set_epoch(epoch)
    loss_sum = correct = torch.zeros((), device=mirrored.device)
    seen = 0
    for batch in loader:
        flip = (mirrored[batch.index] ^ bool(epoch % 2))[:, None, None, None]  # alternating flip
        x = torch.where(flip, batch.images.flip(-1), batch.images)
        with torch.autocast(mirrored.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=LABEL_SMOOTHING, reduction="sum")
        opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt.optimizer.step()
        opt.schedule.step()
        step += 1
        loss_sum = loss_sum + loss.detach()
        correct = correct + (logits.argmax(1) == batch.labels).sum()
        seen += len(batch.labels)
        if step % LOOKAHEAD_EVERY == 0:
            opt.lookahead.update(model, decay=0.95 ** 5 * (step / total_steps) ** 3)
        if step == total_steps:
            opt.lookahead.update(model, decay=1.0)  # end on the slow weights (as airbench: drops the last steps % 5)
            break
    return step, loss_sum.item() / seen, correct.item() / seen


def _start(model: AirbenchNet, data: DataBundle, device: torch.device, state: dict | None) -> bool:
    """Whiten a fresh model from the data, or load a resumed one (its whitening comes with the weights, and the
    run keeps the layout it started with); returns whether it runs channels-last."""
    model.to(device)
    if state is None:
        init_from_data(model, data)
        channels_last = _channels_last(model, data, device)
    else:
        model.load_state_dict(state["model"])
        channels_last = state["channels_last"]
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return channels_last


def train(model: AirbenchNet, data: DataBundle, epochs: float = EPOCHS, batch_size: int = BATCH_SIZE,
          seed: int = 0, device: str = "auto", precision: str = "auto", progress: bool = True,
          checkpoint: str | os.PathLike | None = None) -> dict:
    """Train `model` in place with airbench94's recipe; validate every epoch; test once at the end.

    With `checkpoint`, the state after each epoch is saved there (atomically), and a call that finds it resumes
    after its epoch: on a slow CPU a teacher can outlive the process (EuroSAT at 64 px: about 15 min an epoch on 2
    fp32 cores). Batches are seeded by (seed, epoch), so a resumed run is the uninterrupted one. The caller removes
    the file once the teacher is saved.

    Returns a dict:
      history       one dict per epoch: epoch, steps, lr (torch's, for the convs), train_loss (smoothed
                    CE per image), train_acc, val_acc (no TTA), seconds (training time so far)
      val_acc, val_acc_tta, test_acc, test_acc_tta   final accuracy without and with TTA_VIEWS
      seconds       wall time of the whole call (whitening, training and every evaluation)
      train_seconds whitening + training steps only (the time airbench reports, before its TTA pass)
      device, precision ("fp32" | "bf16"), amx (whether this CPU has AMX tiles), channels_last, threads,
      epochs, steps, batch_size, seed, resumed_from (the epoch it resumed after, or None)
    `epochs` may be fractional (airbench: 9.9); batches are seeded by (seed, epoch).
    """
    if epochs <= 0:
        raise ConfigError(f"epochs must be > 0, got {epochs}.")
    if not 1 <= batch_size <= len(data.train):
        raise ConfigError(f"batch_size must be between 1 and the {len(data.train)} training images, got {batch_size}.")
    device, precision, amx = _resolve(device, precision)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    recipe = dict(epochs=epochs, batch_size=batch_size, seed=seed, precision=precision, train_size=len(data.train))
    state = resume_state(checkpoint, recipe, field="recipe", what="another airbench run",
                         fix="delete it to start afresh, or pass another checkpoint path")
    bf16, start = precision == "bf16", _now(device)
    channels_last = _start(model, data, device, state)
    loader = DeviceLoader(data.train, data, batch_size, device=device, augment=True, shuffle=True, drop_last=True,
                          seed=seed, pad=TRANSLATE, flip=False, channels_last=channels_last)
    mirrored = torch.randint(2, (len(data.train),), generator=torch.Generator().manual_seed(seed)).bool().to(device)
    total_steps = math.ceil(len(loader) * epochs)
    opt = _Optimisation(model, batch_size, total_steps)
    history, step, train_seconds = [], 0, _now(device) - start
    if state is not None:
        opt.restore(state, device)
        history, step, train_seconds = state["history"], state["step"], state["train_seconds"]
        if progress:
            print(f"resumed from {checkpoint} after epoch {len(history)}", flush=True)
    first_epoch = len(history)
    for epoch in range(first_epoch, math.ceil(epochs)):
        t0 = _now(device)
        step, train_loss, train_acc = _train_epoch(model, loader, mirrored, opt, epoch, step, total_steps, bf16)
        train_seconds += _now(device) - t0
        val_acc = evaluate(model, data.val, data, bf16=bf16, tta=False)["acc"]
        history.append(dict(epoch=epoch + 1, steps=step, lr=opt.optimizer.param_groups[1]["lr"], train_loss=train_loss,
                            train_acc=train_acc, val_acc=val_acc, seconds=train_seconds))
        if checkpoint is not None and step < total_steps:
            save_checkpoint(dict(recipe=recipe, model=model.state_dict(), **opt.state(), history=history, step=step,
                                 train_seconds=train_seconds, channels_last=channels_last), checkpoint)
        if progress:
            print(f"epoch {epoch + 1:2d}/{math.ceil(epochs)}  step {step}/{total_steps}  loss {train_loss:.4f}  "
                  f"train acc {train_acc:.4f}  val acc {val_acc:.4f}  {train_seconds:.1f} s", flush=True)
        if step == total_steps:
            break
    model.whiten.bias.requires_grad_(True)  # frozen only for the rest of this recipe
    run = dict(history=history, seconds=None, train_seconds=train_seconds, device=str(device), precision=precision,
               amx=amx, channels_last=channels_last, threads=torch.get_num_threads(), epochs=epochs, steps=step,
               batch_size=batch_size, seed=seed, resumed_from=first_epoch if state is not None else None)
    return _test(model, data, run, device, bf16, start, progress)


def _test(model: AirbenchNet, data: DataBundle, run: dict, device: torch.device, bf16: bool, start: float,
          progress: bool) -> dict:
    """`run` with the final validation and test accuracy, without and with TTA, and the call's wall time."""
    val, test = evaluate(model, data.val, data, bf16=bf16), evaluate(model, data.test, data, bf16=bf16)
    run.update(val_acc=val["acc"], val_acc_tta=val["acc_tta"], test_acc=test["acc"], test_acc_tta=test["acc_tta"],
               seconds=_now(device) - start)
    if progress:
        print(f"val acc {val['acc']:.4f} (TTA {val['acc_tta']:.4f})  test acc {test['acc']:.4f} "
              f"(TTA {test['acc_tta']:.4f})  train {run['train_seconds']:.1f} s, total {run['seconds']:.1f} s "
              f"({run['precision']}, {run['threads']} threads)", flush=True)
    return run


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def view_logits(model: nn.Module, images: torch.Tensor, data: DataBundle, views=TTA_VIEWS,
                bf16: bool = False, batch_size: int = 1000) -> torch.Tensor:
    """Logits (len(views), N, classes) of uint8 `images` under each (mirrored, offset, weight) view,
    in eval mode, on the model's device. Shifts zero-pad the uint8 image (black), as in training."""
    model.eval()
    device = next(model.parameters()).device
    ids = [9 * mirrored + 4 * (offset + 1) for mirrored, offset, _ in views]  # apply_views(pad=1): 9·flip + 3·dy + dx
    out = []
    for chunk in images.split(batch_size):
        chunk = chunk.to(device)
        per_view = []
        for i in ids:
            x = data.normalize(apply_views(chunk, torch.full((len(chunk),), i, device=device), pad=1))
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                per_view.append(model(x).float())
        out.append(torch.stack(per_view))
    return torch.cat(out, dim=1)


def _weighted_mean(logits: torch.Tensor, views) -> torch.Tensor:
    weights = torch.tensor([w for *_, w in views], device=logits.device)
    return (weights[:, None, None] * logits).sum(0)


def evaluate(model: nn.Module, split: Split, data: DataBundle, bf16: bool = False, tta: bool = True) -> dict:
    """Accuracy on `split` without TTA ("acc") and, with `tta`, with it ("acc_tta"); one pass per view."""
    views = TTA_VIEWS if tta else TTA_VIEWS[:1]
    logits = view_logits(model, split.images, data, views, bf16=bf16)
    labels = split.labels.to(logits.device)
    result = {"acc": (logits[0].argmax(1) == labels).float().mean().item()}
    if tta:
        result["acc_tta"] = (_weighted_mean(logits, views).argmax(1) == labels).float().mean().item()
    return result
