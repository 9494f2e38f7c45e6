"""Distillation losses: logits (KD, DKD, logit standardization, DIST), features (AT, SP, hidden-state cosine, FitNets).

Each loss follows the reference implementation of its paper (RepDistiller's
``distiller_zoo`` for KD/AT/SP/FitNets, mdistiller for DKD, logit-standardization-KD for
the z-scored logits, DIST_KD for DIST) so numbers are comparable with published results. Conventions shared by every loss here:

* arguments are ``(student, teacher)`` in that order; the teacher is *not* detached
  (compute it under ``torch.no_grad()``), so the functions stay pure;
* inputs are upcast to float32 and autocast is switched off inside, so a loss is exact
  under bf16/fp16 autocast (softmax/KL of low-precision logits loses mass badly);
  float64 inputs stay float64;
* the result is a 0-dim tensor (unless ``reduction="none"`` asks for one value per sample);
* bad arguments raise :class:`kdcore.errors.ConfigError` naming the problem and the fix.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError, NonFiniteLossError

__all__ = [
    "standardize_logits",
    "kd_loss",
    "dkd_terms",
    "dkd_loss",
    "pearson_rows",
    "dist_loss",
    "attention_map",
    "at_loss",
    "sp_loss",
    "pool_to_common",
    "hidden_cosine_loss",
    "hidden_state_loss",
    "FitNetRegressor",
    "fitnet_loss",
    "FitNetLoss",
    "resolution_pairs",
    "check_finite",
]

_REDUCTIONS = ("batchmean", "none")


# --------------------------------------------------------------------------- helpers


def _fp32_region(tensor: torch.Tensor):
    """Context that disables autocast on `tensor`'s device (so mm/conv stay float32)."""
    device_type = tensor.device.type
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if (available(device_type) if available else device_type in ("cpu", "cuda")):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Upcast to float32 (float64 is kept: it is already at least as precise)."""
    return x if x.dtype == torch.float64 else x.float()


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ConfigError(
            f"{name} has shape {tuple(x.shape)}; expected a non-empty batch (B, ...) with B >= 1."
        )
    return x


def _check_batch(student: torch.Tensor, teacher: torch.Tensor, what: str = "features") -> None:
    _check_tensor(f"student {what}", student)
    _check_tensor(f"teacher {what}", teacher)
    if student.shape[0] != teacher.shape[0]:
        raise ConfigError(
            f"Batch sizes differ: student {what} {tuple(student.shape)} vs teacher {what} "
            f"{tuple(teacher.shape)}; feed the same batch of images to both networks."
        )


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    _check_batch(student_logits, teacher_logits, "logits")
    for who, x in (("student", student_logits), ("teacher", teacher_logits)):
        if x.dim() != 2:
            raise ConfigError(
                f"{who} logits have shape {tuple(x.shape)}; expected (batch, num_classes)."
            )
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ConfigError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} have different class counts: teacher and student "
            "must predict the same classes (build both heads with the same num_classes)."
        )


def _check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ConfigError(f"temperature must be a number, got {temperature!r}.") from None
    if not (t > 0 and math.isfinite(t)):
        raise ConfigError(
            f"temperature must be a finite number > 0, got {temperature!r}; "
            "use e.g. 4.0 (the usual CIFAR setting) or 1.0 for plain softmax."
        )
    return t


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")


def _check_weight(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}.") from None
    if not (v >= 0 and math.isfinite(v)):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")
    return v


def _resolve_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Per-term weights; None means the mean over the n terms (1/n each)."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ConfigError(
            f"Got {len(weights)} weights for {n} layer pairs; pass one weight per pair "
            "or weights=None for 1/L each."
        )
    return weights


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample.mean() if reduction == "batchmean" else per_sample


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) = sum_c p_c (log p_c - log q_c), from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


# --------------------------------------------------------------------------- logits


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample z-score of (B, C) logits: ``(z − mean_c z) / (1e-7 + std_c z)``, as logit-standardization-KD's
    ``normalize`` (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).

    The std is the sample std over classes (``torch.std``'s default, ddof = 1) and the 1e-7 is added to it, exactly
    as in the reference. Why: a smaller student cannot reach the teacher's logit *range*; after the z-score only
    the *relation* between the logits is matched, and each sample gets its own effective temperature (its std).
    """
    return (logits - logits.mean(dim=1, keepdim=True)) / (1e-7 + logits.std(dim=1, keepdim=True))


def _scaled_logits(logits: torch.Tensor, t: float, standardize: bool) -> torch.Tensor:
    """``z/T`` in float32, z-scored first when `standardize` (the reference divides the z-scores by T)."""
    z = _f32(logits)
    return (standardize_logits(z) if standardize else z) / t


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
    standardize: bool = False,
) -> torch.Tensor:
    """Hinton et al. (2015) KD: ``T² · mean_b KL(softmax(t/T) ‖ softmax(s/T))``.

    The KL is summed over classes and averaged over the batch ("batchmean", as
    RepDistiller's ``DistillKL``). The T² factor keeps the gradient,
    ``T·(p_s − p_t)/B`` w.r.t. the student logits, on the same scale as the hard-label
    loss when T changes. ``reduction="none"`` returns the per-sample values (B,).
    ``standardize=True`` z-scores both logits per sample first (:func:`standardize_logits`), then
    divides by T and keeps the T² factor, as logit-standardization-KD's ``kd_loss(..., logit_stand=True)``.
    """
    t = _check_temperature(temperature)
    _check_logits(student_logits, teacher_logits)
    _check_reduction(reduction)
    with _fp32_region(student_logits):
        log_ps = F.log_softmax(_scaled_logits(student_logits, t, standardize), dim=1)
        log_pt = F.log_softmax(_scaled_logits(teacher_logits, t, standardize), dim=1)
        return _reduce(_kl_rows(log_pt, log_ps), reduction) * (t * t)


def _check_target(target: object, logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise ConfigError(f"target must be a tensor of class indices, got {type(target).__name__}.")
    is_index = not target.dtype.is_floating_point and target.dtype != torch.bool
    if target.shape != logits.shape[:1] or not is_index:
        raise ConfigError(
            f"target has shape {tuple(target.shape)} and dtype {target.dtype}; expected integer "
            f"class indices of shape ({logits.shape[0]},) (for soft/mixup labels pass labels.argmax(1))."
        )
    if logits.shape[1] < 2:
        raise ConfigError(
            f"DKD needs at least 2 classes (logits {tuple(logits.shape)}): it splits the "
            "target class from the non-target classes."
        )
    return target.long()


def _binary_log_probs(z: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 − p_target] of softmax(z), computed as log-sum-exps (no log(1−p) cancellation)."""
    lse_all = torch.logsumexp(z, dim=1)
    log_p_target = torch.logsumexp(z.masked_fill(~gt, float("-inf")), dim=1) - lse_all
    log_p_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1) - lse_all
    return torch.stack([log_p_target, log_p_rest], dim=1)


def _non_target_log_probs(z: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """log softmax over the non-target classes only; the target entry is set to 0.

    The target logit is removed exactly (−inf instead of mdistiller's −1000, which stops
    masking once |logit/T| ≳ 1000). Writing 0 into the target's log-prob makes its KL
    term 1·(0 − 0) = 0 instead of 0·(−inf + inf) = NaN, and masked_fill gives that entry
    a zero gradient.
    """
    return F.log_softmax(z.masked_fill(gt, float("-inf")), dim=1).masked_fill(gt, 0.0)


def dkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
    standardize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD terms (Zhao et al., CVPR 2022) ``(TCKD, NCKD)``, both scaled by T².

    With p = softmax(z/T), b = [p_target, 1 − p_target] and p̂ the softmax over the
    non-target classes: ``TCKD = T²·KL(b_t ‖ b_s)``, ``NCKD = T²·KL(p̂_t ‖ p̂_s)``.
    Per sample they decompose Hinton KD exactly: ``KD = TCKD + (1 − p_t[target])·NCKD``;
    DKD re-weights the two parts because the (1 − p_t[target]) factor suppresses NCKD
    exactly when the teacher is confident. ``reduction="none"`` gives per-sample (B,) terms.
    ``standardize=True`` z-scores both logits per sample before dividing by T (logit-standardization-KD's
    ``dkd_loss(..., logit_stand=True)``; the T² factor stays).
    """
    t = _check_temperature(temperature)
    _check_logits(student_logits, teacher_logits)
    _check_reduction(reduction)
    target = _check_target(target, student_logits)
    with _fp32_region(student_logits):
        zs = _scaled_logits(student_logits, t, standardize)
        zt = _scaled_logits(teacher_logits, t, standardize)
        gt = torch.zeros_like(zs, dtype=torch.bool).scatter_(1, target.unsqueeze(1), True)
        tckd = _kl_rows(_binary_log_probs(zt, gt), _binary_log_probs(zs, gt))
        nckd = _kl_rows(_non_target_log_probs(zt, gt), _non_target_log_probs(zs, gt))
        scale = t * t
        return _reduce(tckd, reduction) * scale, _reduce(nckd, reduction) * scale


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
) -> torch.Tensor:
    """DKD = ``alpha·TCKD + beta·NCKD`` (mdistiller defaults for CIFAR-100: α=1, β=8, T=4).

    mdistiller additionally warms the whole term up linearly over the first 20 of 240 epochs;
    that schedule belongs to the term (``distill.DKD``), not here.
    """
    a = _check_weight("alpha", alpha)
    b = _check_weight("beta", beta)
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature, standardize=standardize)
    return a * tckd + b * nckd


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`, as DIST_KD's ``pearson_correlation``:
    the cosine of the mean-centred rows, ``<a', b'> / (‖a'‖·‖b'‖ + eps)``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022), as DIST_KD's ``DIST``:
    ``τ²·[β·(1 − mean_b ρ(p_s[b,:], p_t[b,:])) + γ·(1 − mean_c ρ(p_s[:,c], p_t[:,c]))]`` with p = softmax(z/τ)
    and ρ the Pearson correlation (:func:`pearson_rows`).

    Why: KL asks the student to reproduce the teacher's probabilities exactly, which a much weaker student
    cannot; a correlation only asks for the same *ranking and relative spread*, invariant to a scale and shift
    of the predictions. The first (inter-class) term matches each image's class distribution, the second
    (intra-class) how each class's probability varies over the images of the batch, so the value depends on
    the whole batch (there is no per-sample reduction). Defaults are the class's own (β = γ = τ = 1).
    """
    t = _check_temperature(tau)
    bw, gw = _check_weight("beta", beta), _check_weight("gamma", gamma)
    _check_logits(student_logits, teacher_logits)
    with _fp32_region(student_logits):
        ps = F.softmax(_f32(student_logits) / t, dim=1)
        pt = F.softmax(_f32(teacher_logits) / t, dim=1)
        inter = 1 - pearson_rows(ps, pt).mean()
        intra = 1 - pearson_rows(ps.t(), pt.t()).mean()
        return (t * t) * (bw * inter + gw * intra)


# --------------------------------------------------------------------------- features


def _check_maps(student_feat: torch.Tensor, teacher_feat: torch.Tensor, what: str) -> None:
    _check_batch(student_feat, teacher_feat)
    for who, x in (("student", student_feat), ("teacher", teacher_feat)):
        if x.dim() != 4:
            raise ConfigError(
                f"{what} needs (B, C, H, W) feature maps; the {who} feature has shape "
                f"{tuple(x.shape)}. Hook a convolutional block output instead."
            )


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a (B, C, H, W) map: ``mean_c |f|^p`` → (B, H, W).

    Averaging over channels makes maps of networks with different widths comparable.
    """
    return feat.abs().pow(p).mean(dim=1)


def at_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), as RepDistiller's ``Attention.at_loss``:
    ``mean_{b,hw} (â_s − â_t)²`` with ``â = normalize(flat(mean_c |f|^p))`` per sample.

    When the spatial sizes differ, the larger *feature map* is average-pooled to the smaller size
    first and the attention map is taken afterwards (RepDistiller's order; pooling the map instead
    gives a different value). Normalising makes the loss ignore the activation scale: only *where*
    the network looks matters. The mean runs over batch × H·W, so a pair's weight depends on its
    resolution (see ``distill.Attention``). Channel counts may differ.
    """
    _check_maps(student_feat, teacher_feat, "Attention transfer")
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"p must be a number > 0, got {p!r}.") from None
    if not (p > 0 and math.isfinite(p)):
        raise ConfigError(f"p must be a finite number > 0 (the paper uses 2), got {p!r}.")
    with _fp32_region(student_feat):
        fs, ft = _f32(student_feat), _f32(teacher_feat)
        size = (min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3]))
        fs, ft = _pool_spatial(fs, size), _pool_spatial(ft, size)
        a_s = F.normalize(attention_map(fs, p).flatten(1), p=2, dim=1)
        a_t = F.normalize(attention_map(ft, p).flatten(1), p=2, dim=1)
        return (a_s - a_t).pow(2).mean()


def sp_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): ``‖G_s − G_t‖_F² / B²``, as RepDistiller's
    ``Similarity``.

    G = row-normalised B×B Gram matrix of the flattened features: the student should
    find the same *pairs of images* similar as the teacher, whatever its feature shape.
    RepDistiller applies it to one pair, the last stage (``distill.SimilarityPreserving``).
    """
    _check_batch(student_feat, teacher_feat)
    b = student_feat.shape[0]
    with _fp32_region(student_feat):
        fs = _f32(student_feat).reshape(b, -1)
        ft = _f32(teacher_feat).reshape(b, -1)
        g_s = F.normalize(fs @ fs.t(), p=2, dim=1)
        g_t = F.normalize(ft @ ft.t(), p=2, dim=1)
        return (g_s - g_t).pow(2).sum() / (b * b)


def _pool_spatial(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def _pool_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Average groups of neighbouring channels down to `channels` (adaptive 1-D pooling)."""
    if x.shape[1] == channels:
        return x
    if x.dim() == 2:
        return F.adaptive_avg_pool1d(x.unsqueeze(1), channels).squeeze(1)
    b, c, h, w = x.shape
    y = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(b * h * w, 1, c), channels)
    return y.reshape(b, h, w, channels).permute(0, 3, 1, 2)


def pool_to_common(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool both features to the smaller spatial size and the smaller channel count.

    Accepts (B, C, H, W) maps or (B, C) vectors; a map paired with a vector is globally
    average-pooled to (B, C). Pooling (not a learned projection) keeps the hidden-state
    loss parameter-free. Returns tensors of equal shape, in the input dtype.
    """
    _check_batch(student_feat, teacher_feat)
    for who, x in (("student", student_feat), ("teacher", teacher_feat)):
        if x.dim() not in (2, 4):
            raise ConfigError(
                f"Hidden-state matching takes (B, C, H, W) maps or (B, C) vectors; the {who} "
                f"feature has shape {tuple(x.shape)}. Reshape token features (B, N, D) to "
                "(B, D, H, W) or pool them to (B, D) first."
            )
    s, t = student_feat, teacher_feat
    if s.dim() != t.dim():  # one map, one vector: global average pool the map
        s = s.mean(dim=(2, 3)) if s.dim() == 4 else s
        t = t.mean(dim=(2, 3)) if t.dim() == 4 else t
    if s.dim() == 4:
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        s, t = _pool_spatial(s, size), _pool_spatial(t, size)
    channels = min(s.shape[1], t.shape[1])
    return _pool_channels(s, channels), _pool_channels(t, channels)


def hidden_cosine_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """``mean_b (1 − cos(flat(ŝ_b), flat(t̂_b)))`` after :func:`pool_to_common`.

    Cosine ignores the activation scale, which differs between architectures; the loss
    is 0 for aligned features and 2 for opposite ones.
    """
    _check_batch(student_feat, teacher_feat)
    with _fp32_region(student_feat):
        s, t = pool_to_common(_f32(student_feat), _f32(teacher_feat))
        cos = F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)
        return (1.0 - cos).mean()


def hidden_state_loss(
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """``Σ_l w_l · hidden_cosine_loss(s_l, t_l)`` over paired layers (default w_l = 1/L)."""
    student_feats, teacher_feats = list(student_feats), list(teacher_feats)
    if len(student_feats) != len(teacher_feats):
        raise ConfigError(
            f"Got {len(student_feats)} student features but {len(teacher_feats)} teacher "
            "features; pair the layers one to one (see resolution_pairs)."
        )
    if not student_feats:
        raise ConfigError("hidden_state_loss needs at least one (student, teacher) feature pair.")
    ws = _resolve_weights(weights, len(student_feats))
    terms = [w * hidden_cosine_loss(s, t) for w, s, t in zip(ws, student_feats, teacher_feats)]
    return torch.stack(terms).sum()


# --------------------------------------------------------------------------- FitNets


def _chw(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"{name} must be the (C, H, W) shape of one sample's feature map, got {shape}; "
            "pass feat.shape[1:]."
        )
    return shape  # type: ignore[return-value]


class FitNetRegressor(nn.Module):
    """FitNets hint regressor (Romero et al., ICLR 2015), exactly RepDistiller's ``ConvReg``:
    conv → BatchNorm2d(teacher channels) → ReLU, mapping the student's (C, H, W) map to the teacher's.

    The conv depends on the heights (RepDistiller's cases, checked in this order):

    * student H = 2 × teacher H → 3×3 conv, stride 2, padding 1;
    * student H × 2 = teacher H → 4×4 transposed conv, stride 2, padding 1;
    * student H ≥ teacher H     → conv with kernel (1 + H_s − H_t, 1 + W_s − W_t) (1×1 at equal size);
    * otherwise (student smaller by more than 2×) → error: pick another pair.

    Convs keep their bias as in the reference. The parameters must be given to the optimiser
    together with the student's (``Distiller.trainable_parameters`` does).
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]):
        super().__init__()
        cs, hs, ws = _chw(student_shape, "student_shape")
        ct, ht, wt = _chw(teacher_shape, "teacher_shape")
        self.student_shape, self.teacher_shape = (cs, hs, ws), (ct, ht, wt)
        if hs == 2 * ht:
            self.conv = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
        elif hs * 2 == ht:
            self.conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
        elif hs >= ht and ws >= wt:
            self.conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
        else:
            raise ConfigError(
                f"A FitNets regressor cannot map student feature (C, H, W)={self.student_shape} "
                f"to teacher feature {self.teacher_shape}: the student map must be 2x the teacher's, "
                "half of it, or at least as large on both axes (RepDistiller's ConvReg). "
                "Pick a hint/guided layer pair of equal resolution."
            )
        self.bn = nn.BatchNorm2d(ct)
        self.relu = nn.ReLU()

    @property
    def kind(self) -> str:
        """Which conv the shapes called for: "3x3/stride 2", "transposed 4x4" or "kxk" (1x1 at equal size)."""
        if isinstance(self.conv, nn.ConvTranspose2d):
            return "transposed 4x4"
        if self.conv.stride == (2, 2):
            return "3x3/stride 2"
        return "{}x{}".format(*self.conv.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.student_shape:
            raise ConfigError(
                f"This regressor was built for student features (B, C, H, W) with (C, H, W) = "
                f"{self.student_shape}, got {tuple(x.shape)}; rebuild it from the current features."
            )
        return self.relu(self.bn(self.conv(x)))

    def extra_repr(self) -> str:
        return f"student_shape={self.student_shape}, teacher_shape={self.teacher_shape}"


def fitnet_loss(
    regressor: FitNetRegressor, student_feat: torch.Tensor, teacher_feat: torch.Tensor
) -> torch.Tensor:
    """FitNets hint loss, RepDistiller's ``HintLoss``: ``mean (r(f_s) − f_t)²`` over all elements.

    Runs the regressor in float32 (autocast off).
    """
    _check_maps(student_feat, teacher_feat, "FitNets")
    if tuple(teacher_feat.shape[1:]) != regressor.teacher_shape:
        raise ConfigError(
            f"Teacher feature {tuple(teacher_feat.shape)} does not match the regressor built for "
            f"teacher shape {regressor.teacher_shape}; rebuild the regressor from the current features."
        )
    with _fp32_region(student_feat):
        out = regressor(_f32(student_feat))
        return F.mse_loss(out, _f32(teacher_feat).to(out.dtype))


class FitNetLoss(nn.Module):
    """FitNets hints on several layer pairs: ``Σ_l w_l · fitnet_loss(r_l, s_l, t_l)``.

    Holds one :class:`FitNetRegressor` per pair in a ModuleList; add ``.parameters()``
    to the optimiser (and move it to the device) alongside the student.
    Default weights are 1/L each, like :func:`hidden_state_loss`.
    """

    def __init__(self, student_shapes: Sequence[Sequence[int]], teacher_shapes: Sequence[Sequence[int]]):
        super().__init__()
        student_shapes, teacher_shapes = list(student_shapes), list(teacher_shapes)
        if len(student_shapes) != len(teacher_shapes) or not student_shapes:
            raise ConfigError(
                f"Got {len(student_shapes)} student and {len(teacher_shapes)} teacher shapes; "
                "pass the same, non-zero number of (C, H, W) shapes for each."
            )
        self.regressors = nn.ModuleList(
            FitNetRegressor(s, t) for s, t in zip(student_shapes, teacher_shapes)
        )

    @classmethod
    def from_features(
        cls, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
    ) -> "FitNetLoss":
        """Build regressors from example (B, C, H, W) features, on the student features' device."""
        student_feats, teacher_feats = list(student_feats), list(teacher_feats)
        for s, t in zip(student_feats, teacher_feats):
            _check_maps(s, t, "FitNets")
        module = cls([s.shape[1:] for s in student_feats], [t.shape[1:] for t in teacher_feats])
        return module.to(student_feats[0].device)

    def forward(
        self,
        student_feats: Sequence[torch.Tensor],
        teacher_feats: Sequence[torch.Tensor],
        weights: Sequence[float] | None = None,
    ) -> torch.Tensor:
        student_feats, teacher_feats = list(student_feats), list(teacher_feats)
        n = len(self.regressors)
        if len(student_feats) != n or len(teacher_feats) != n:
            raise ConfigError(
                f"This FitNetLoss has {n} regressors but got {len(student_feats)} student and "
                f"{len(teacher_feats)} teacher features; pass one feature per layer pair."
            )
        ws = _resolve_weights(weights, n)
        terms = [
            w * fitnet_loss(r, s, t)
            for w, r, s, t in zip(ws, self.regressors, student_feats, teacher_feats)
        ]
        return torch.stack(terms).sum()


# --------------------------------------------------------------------------- layer pairing


def resolution_pairs(
    student_shapes: Sequence[tuple[str, Sequence[int]]],
    teacher_shapes: Sequence[tuple[str, Sequence[int]]],
    shift: int = 0,
) -> list[tuple[str, str]]:
    """Pair stage outputs of equal spatial resolution, shallow to deep (RepDistiller pairs the
    CIFAR ResNets' 32²/16²/8² group outputs).

    Arguments are ``(layer name, (C, H, W))`` lists in network order. Each student stage is paired
    with the deepest teacher stage of the same (H, W); when several student stages share a
    resolution, the deepest one is kept. ``shift=1`` is "teacher block N → student block N−1":
    every student stage is taught by the teacher stage one deeper than its equal-resolution partner
    (pairs whose teacher stage would not exist are dropped). Non-map features are ignored.
    """
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ConfigError(f"shift must be an integer >= 0, got {shift!r}.")
    maps = [(n, tuple(s)) for n, s in teacher_shapes if len(s) == 3]
    by_size = {}  # (H, W) -> index of the deepest teacher stage of that size
    for i, (_, shape) in enumerate(maps):
        by_size[shape[1:]] = i
    chosen: dict[tuple[int, int], str] = {}
    for name, shape in student_shapes:
        if len(shape) == 3 and tuple(shape)[1:] in by_size:
            chosen[tuple(shape)[1:]] = name  # a deeper student stage of the same size replaces it
    pairs = [(s, maps[by_size[size] + shift][0]) for size, s in chosen.items() if by_size[size] + shift < len(maps)]
    if not pairs:
        what = "no student stage has the resolution of a teacher stage" if not chosen else (
            f"shift={shift} leaves no teacher stage deeper than the equal-resolution partners")
        raise ConfigError(
            f"No feature pair: {what} (student {[(n, tuple(s)) for n, s in student_shapes]}, teacher "
            f"{[(n, tuple(s)) for n, s in teacher_shapes]}). Pass pairs=[(student_layer, teacher_layer), ...] "
            "explicitly, or change the input size."
        )
    return pairs


# --------------------------------------------------------------------------- guard


def check_finite(name: str, value, step: int):
    """Return `value` unchanged, or raise NonFiniteLossError if any element is NaN/Inf.

    Stopping at the first bad step (instead of letting NaN weights propagate) names the
    term that diverged. Note: this synchronises with the device.
    """
    if not bool(torch.isfinite(torch.as_tensor(value).detach()).all()):
        raise NonFiniteLossError(
            f"loss term '{name}' is NaN/Inf at step {step}; lower the learning rate or the "
            "term's weight, or check the inputs"
        )
    return value
