"""FitNets (Romero 2015): a trainable regressor from student to teacher features, and layer pairing."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ._checks import _check_maps, _f32, _fp32_region, _resolve_weights


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

