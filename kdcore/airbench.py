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

from .data import DataBundle, DeviceLoader, Split, apply_views, atomic_save
from .errors import ConfigError, unknown_name
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
WHITEN_IMAGES = 5000  # training images whose patches set the whitening

# TTA views (airbench tta_level=2): (mirrored, window offset in both axes, weight). Offset -1 crops the
# window one pixel up-left of a 1-pixel zero-padded image (its content moves down-right), +1 down-right.
TTA_VIEWS = ((False, 0, 1 / 4), (True, 0, 1 / 4),
             (False, -1, 1 / 8), (True, -1, 1 / 8), (False, 1, 1 / 8), (True, 1, 1 / 8))


# --------------------------------------------------------------------------- network
class ShiftBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale is fixed at 1, so only its shift (bias) trains; airbench's momentum 0.6 is torch's 0.4.

    The scale is left out (affine=False) rather than frozen, so every parameter of the net trains. The shift is
    added after the normalisation, not passed to F.batch_norm: with a bias and no weight, its CUDA backward returns
    an empty bias gradient ("invalid gradient at index 2 - got [0]", torch 2.11 on an H100).
    """

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, self.momentum, self.eps)
        return y + self.bias.to(y.dtype).view(1, -1, 1, 1)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    """3×3 conv whose first `cin` filters start as the identity (dirac), the rest at torch's default init."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:cin])
    return conv


class ConvGroup(nn.Module):
    """One stage: conv → max-pool 2 → BN → GELU → conv → BN → GELU (halves the resolution)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.pool, self.norm1 = _conv(cin, cout), nn.MaxPool2d(2), ShiftBatchNorm(cout)
        self.conv2, self.norm2 = _conv(cout, cout), ShiftBatchNorm(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class Whitening(nn.Module):
    """A 2×2 conv whose filters are a buffer (frozen by construction: no optimiser sees them), set from
    data by init_whitening, plus a trainable bias. It pads 1 pixel bottom/right, so 32² in gives 32² out."""

    def __init__(self, in_channels: int, kernel_size: int = 2):
        super().__init__()
        channels = 2 * in_channels * kernel_size ** 2  # + and − each eigenvector of the k×k patches
        weight = torch.empty(channels, in_channels, kernel_size, kernel_size)
        self.register_buffer("weight", nn.init.kaiming_uniform_(weight, a=math.sqrt(5)))  # nn.Conv2d's init until then
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias)


class AirbenchNet(nn.Module):
    """whiten (2×2, frozen filters) → GELU → block1 → block2 → block3 → global max-pool → linear / 9.

    At 32² input the stage outputs block1/block2/block3 are 16²/8²/4² (the model's feature blocks).
    train() sets the whitening filters from the training images; until then they are random (nn.Conv2d's init).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int] = (64, 256, 256)):
        super().__init__()
        self.whiten = Whitening(in_channels)
        self.act = nn.GELU()
        self.block1 = ConvGroup(len(self.whiten.bias), widths[0])
        self.block2 = ConvGroup(widths[0], widths[1])
        self.block3 = ConvGroup(widths[1], widths[2])
        self.fc = nn.Linear(widths[2], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.amax(x, dim=(2, 3))) / 9


@torch.no_grad()
def init_whitening(whiten: Whitening, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Make `whiten` whiten the k×k patches of normalised `images`: filter i is eigenvector i of the
    patches' second-moment matrix over sqrt(eigenvalue + eps), so its outputs are decorrelated with unit
    variance; the second half is the negation of the first, so the GELU after it keeps both signs."""
    c, k = images.shape[1], whiten.weight.shape[-1]
    patches = images.float().unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).reshape(-1, c, k, k)
    whiten.weight.copy_(torch.cat([filters, -filters]))


@torch.no_grad()
def init_from_data(model: nn.Module, data: DataBundle) -> None:
    """Set every Whitening in `model` from the first WHITEN_IMAGES training images (on the model's device).

    fit() calls this for a fresh student, so an airbench-family student is whitened as airbench.train whitens its
    teacher; a model without a Whitening module is left alone."""
    for layer in model.modules():
        if isinstance(layer, Whitening):
            init_whitening(layer, data.normalize(data.train.images[:WHITEN_IMAGES].to(layer.weight.device)))


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


def _load_state(checkpoint: Path | None, recipe: dict) -> dict | None:
    """The state saved after an epoch of this same recipe, or None to start fresh; another recipe's is refused."""
    if checkpoint is None or not checkpoint.exists():
        return None
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state.get("recipe") != recipe:
        raise ConfigError(f"{checkpoint} holds another airbench run ({state.get('recipe')}, this one: {recipe}); "
                          "delete it to start afresh, or pass another checkpoint path.")
    return state


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


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
    state = _load_state(checkpoint, recipe)
    bf16 = precision == "bf16"
    start = _now(device)
    model.to(device)
    if state is None:
        init_from_data(model, data)
        channels_last = _channels_last(model, data, device)
    else:  # the whitening comes with the weights, and the run keeps the layout it started with
        model.load_state_dict(state["model"])
        channels_last = state["channels_last"]
    if channels_last:
        model.to(memory_format=torch.channels_last)

    loader = DeviceLoader(data.train, data, batch_size, device=device, augment=True, shuffle=True, drop_last=True,
                          seed=seed, pad=TRANSLATE, flip=False, channels_last=channels_last)
    mirrored = torch.randint(2, (len(data.train),), generator=torch.Generator().manual_seed(seed)).bool().to(device)
    total_steps = math.ceil(len(loader) * epochs)
    optimizer = _optimizer(model, batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps))
    lookahead = Lookahead(model)
    history, step, train_seconds, first_epoch = [], 0, _now(device) - start, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        lookahead.slow = {k: v.to(device) for k, v in state["lookahead"].items()}
        history, step, train_seconds, first_epoch = state["history"], state["step"], state["train_seconds"], len(state["history"])
        if progress:
            print(f"resumed from {checkpoint} after epoch {first_epoch}", flush=True)
    for epoch in range(first_epoch, math.ceil(epochs)):
        t0 = _now(device)
        model.train()
        model.whiten.bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)
        loader.set_epoch(epoch)
        loss_sum = correct = torch.zeros((), device=device)
        seen = 0
        for batch in loader:
            flip = (mirrored[batch.index] ^ bool(epoch % 2))[:, None, None, None]
            x = torch.where(flip, batch.images.flip(-1), batch.images)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=LABEL_SMOOTHING, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            loss_sum = loss_sum + loss.detach()
            correct = correct + (logits.argmax(1) == batch.labels).sum()
            seen += len(batch.labels)
            if step % LOOKAHEAD_EVERY == 0:
                lookahead.update(model, decay=0.95 ** 5 * (step / total_steps) ** 3)
            if step == total_steps:
                lookahead.update(model, decay=1.0)  # end on the slow weights (as airbench: drops the last steps % 5)
                break
        train_seconds += _now(device) - t0
        val_acc = evaluate(model, data.val, data, bf16=bf16, tta=False)["acc"]
        history.append(dict(epoch=epoch + 1, steps=step, lr=optimizer.param_groups[1]["lr"],
                            train_loss=loss_sum.item() / seen, train_acc=correct.item() / seen,
                            val_acc=val_acc, seconds=train_seconds))
        if checkpoint is not None and step < total_steps:
            atomic_save(dict(recipe=recipe, model=model.state_dict(), optimizer=optimizer.state_dict(),
                             schedule=schedule.state_dict(), lookahead=lookahead.slow, history=history, step=step,
                             train_seconds=train_seconds, channels_last=channels_last), checkpoint)
        if progress:
            h = history[-1]
            print(f"epoch {h['epoch']:2d}/{math.ceil(epochs)}  step {step}/{total_steps}  loss {h['train_loss']:.4f}  "
                  f"train acc {h['train_acc']:.4f}  val acc {val_acc:.4f}  {train_seconds:.1f} s", flush=True)
        if step == total_steps:
            break
    model.whiten.bias.requires_grad_(True)  # frozen only for the rest of this recipe

    val, test = evaluate(model, data.val, data, bf16=bf16), evaluate(model, data.test, data, bf16=bf16)
    result = dict(history=history, val_acc=val["acc"], val_acc_tta=val["acc_tta"], test_acc=test["acc"],
                  test_acc_tta=test["acc_tta"], seconds=_now(device) - start, train_seconds=train_seconds,
                  device=str(device), precision=precision, amx=amx, channels_last=channels_last,
                  threads=torch.get_num_threads(),
                  epochs=epochs, steps=step, batch_size=batch_size, seed=seed,
                  resumed_from=first_epoch if state is not None else None)
    if progress:
        print(f"val acc {val['acc']:.4f} (TTA {val['acc_tta']:.4f})  test acc {test['acc']:.4f} "
              f"(TTA {test['acc_tta']:.4f})  train {train_seconds:.1f} s, total {result['seconds']:.1f} s "
              f"({precision}, {result['threads']} threads)", flush=True)
    return result


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


def tta_logits(model: nn.Module, images: torch.Tensor, data: DataBundle, bf16: bool = False) -> torch.Tensor:
    """The TTA prediction: the weighted mean of the logits over TTA_VIEWS (weights sum to 1)."""
    return _weighted_mean(view_logits(model, images, data, bf16=bf16), TTA_VIEWS)


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
