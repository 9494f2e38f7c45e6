"""Feature losses: attention transfer (Zagoruyko 2017), similarity preserving (Tung 2019), hidden-state cosine."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ._checks import _check_batch, _check_maps, _f32, _fp32_region, _resolve_weights


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


