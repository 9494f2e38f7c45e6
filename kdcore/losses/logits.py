"""Logit losses: KD (Hinton 2015), DKD (Zhao 2022), logit standardization (Sun 2024), DIST (Huang 2022)."""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ._checks import _check_logits, _check_reduction, _check_temperature, _check_weight, _f32, _fp32_region, _kl_rows, _reduce


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


