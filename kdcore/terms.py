"""The loss terms a Distiller sums, one tiny module each, and the registry that names them.

A term reads what one training step produced (StepInputs: logits, targets, hooked features, the run's
progress) and returns its weighted loss; the formulas live in kdcore.losses, next to their citations. `@register`
makes a term usable by name in method strings ("kd+at", "dkd:ls"), as mdistiller's dict of distillers does.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses
from .errors import ConfigError, unknown_name


@dataclass
class StepInputs:
    """What every term may read in one training step."""

    student_logits: torch.Tensor
    targets: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 0
    progress: float | None = None  # share of the run's optimiser steps done once this one is: (step + 1) / total


class Term(nn.Module):
    """One weighted loss term: a tiny module `forward(StepInputs) -> loss`, its reference weight and citation.

    Subclass it, set `name`, `weight` (the reference default) and `reference`, implement `forward`, and
    decorate the class with `@register` to use it by name in method strings ("kd+mine"); or pass an
    instance straight to `make_distiller` / a notebook's `ctx.run`. A feature term sets `layers` to
    choose among the equal-resolution stage pairs: "all", "middle" or "last"; `pairs` overrides that.
    `variants` names method-string options: "kd:ls" builds the term with `variants["ls"]` (constructor
    arguments, plus "weight": the variant's reference weight).
    """

    name = "term"
    weight = 1.0
    reference = ""
    needs_teacher = True
    layers: str | None = None  # None: reads logits only
    variants: dict[str, dict] = {}

    def __init__(self, weight: float | None = None, pairs: Sequence[tuple[str, str]] | None = None):
        super().__init__()
        self.weight = float(type(self).weight if weight is None else weight)
        self.pairs = [tuple(p) for p in pairs] if pairs else None  # None: chosen by Distiller.build
        if self.pairs is None and self.layers is not None and self.layers not in _LAYER_CHOICES:
            raise unknown_name("layers", self.layers, _LAYER_CHOICES)

    @property
    def pair_weights(self) -> list[float]:
        """Weight of each pair in the term's value (before `weight`); the pairs table prints weight × these."""
        return [1.0] * len(self.pairs or ())

    def build(self, inputs: StepInputs) -> None:
        """Create parameters that depend on feature shapes (called once, before the optimiser)."""

    def student_feats(self, inputs: StepInputs) -> list[torch.Tensor]:
        return [inputs.student_features[s] for s, _ in self.pairs]

    def teacher_feats(self, inputs: StepInputs) -> list[torch.Tensor]:
        return [inputs.teacher_features[t] for _, t in self.pairs]

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}" + (f", pairs={self.pairs}" if self.pairs else "")


def term_identity(term: Term) -> dict | None:
    """What a run store key needs to know of a Term defined outside kdcore (in a notebook, say): its class
    name, its options and a hash of its code, or None when that code cannot be read (then its runs are not stored).

    kdcore's own terms are keyed by name and guarded by the store's recipe version. A notebook's term has no
    version, so its key holds the code itself: the syntax tree of every method and class attribute of each class
    between it and kdcore, docstrings left out, so an edited comment or docstring keeps the stored runs and an
    edited formula does not.
    """
    code = []
    for cls in type(term).__mro__:
        if cls.__module__.startswith("kdcore.") or cls in (nn.Module, object):
            continue
        for name, value in vars(cls).items():
            if name.startswith("__") and name not in ("__init__", "__call__"):
                continue
            func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if not callable(func):
                text = repr(value)
                if " at 0x" in text:  # an object's address: no stable key
                    return None
                code.append(f"{cls.__qualname__}.{name} = {text}")
                continue
            try:
                tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
            except (OSError, TypeError, SyntaxError):
                return None
            for node in ast.walk(tree):  # docstrings are not code
                body = getattr(node, "body", None)
                if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                        and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                    node.body = body[1:] or [ast.Pass()]
            code.append(ast.dump(tree))
    digest = hashlib.sha256("\n".join(code).encode()).hexdigest()[:16]
    options = {k: repr(v) for k, v in sorted(vars(term).items()) if not k.startswith("_") and k != "training"}
    return {"term": type(term).__qualname__, "options": options, "code": digest}


_LAYER_CHOICES = ("all", "middle", "last")
METHODS: dict[str, type[Term]] = {}


def register(cls: type[Term]) -> type[Term]:
    """Class decorator: make a Term usable by its `name` in method strings such as "kd+at"."""
    METHODS[cls.name] = cls
    return cls


class CrossEntropy(Term):
    name, needs_teacher = "ce", False

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(weight)
        self.label_smoothing = label_smoothing

    def forward(self, s: StepInputs) -> torch.Tensor:
        return F.cross_entropy(s.student_logits.float(), s.targets, label_smoothing=self.label_smoothing)


# logit standardization's recipe (logit-standardization-KD, tools/train.py with --logit-stand --base-temp 2
# --kd-weight 9): z-scored logits, T = 2, the KD term at weight 9 (for DKD: α and β both times 9)
_LS = {"standardize": True, "temperature": 2.0, "weight": 9.0}
LS_REFERENCE = ("Sun et al., Logit Standardization in Knowledge Distillation, CVPR 2024; "
                "sunshangquan/logit-standardization-KD mdistiller/distillers/KD.py, DKD.py")


@register
class LogitKD(Term):
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": T²·KL(p_t^T ‖ p_s^T), batch mean
    (RepDistiller's DistillKL). Alone it is mixed (1−α)·CE + α·KD; in combinations CE keeps weight 1.

    "kd:ls" is logit standardization (Sun et al., CVPR 2024): both logits z-scored per sample, then divided by
    T = 2, KL × T², at weight 9, the reference's `--logit-stand --base-temp 2 --kd-weight 9`, whose CE weight
    0.1 is the 1 − α of plain KD at α = 0.9."""

    name, weight = "kd", 0.9
    reference = "Hinton et al., arXiv:1503.02531 (2015); RepDistiller distiller_zoo/KD.py"
    variants = {"ls": _LS}

    def __init__(self, weight: float | None = None, temperature: float = 4.0, standardize: bool = False):
        super().__init__(weight)
        self.temperature, self.standardize = temperature, standardize

    def forward(self, s: StepInputs) -> torch.Tensor:
        return losses.kd_loss(s.student_logits, s.teacher_logits, self.temperature, standardize=self.standardize)


@register
class DKD(Term):
    """Zhao et al. 2022: α·TCKD + β·NCKD, times a linear warm-up ramp.

    Warm-up: mdistiller ramps DKD in over 20 of its 240 epochs, `min(epoch / 20, 1)`. By default (`warmup=None`)
    this term ramps over the same share of the run, 20/240 = 1/12 of its optimiser steps: the weight is
    `min(progress / (1/12), 1)`, with `progress` = (step + 1) / total steps from the train loop (a 5-epoch run
    reaches full weight after 5/12 of an epoch). Without `progress` in the step (a loop that does not give it)
    there is no ramp. `warmup=E` epochs ramps per epoch instead, `min((epoch + 1) / E, 1)` (mdistiller's rule
    with E = 20); `warmup=0` turns it off.

    "dkd:ls" adds logit standardization (Sun et al., CVPR 2024): z-scored logits, T = 2, and the term at weight
    9, which is the reference's α = 9, β = 72 (its `--kd-weight 9` multiplies α = 1 and β = 8); CE stays at 1."""

    name = "dkd"
    reference = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022; mdistiller distillers/DKD.py"
    variants = {"ls": _LS}
    warmup_fraction = 20 / 240  # mdistiller: CFG.DKD.WARMUP = 20 of SOLVER.EPOCHS = 240

    def __init__(self, weight: float | None = None, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup: float | None = None, standardize: bool = False):
        super().__init__(weight)
        self.alpha, self.beta, self.temperature, self.warmup = alpha, beta, temperature, warmup
        self.standardize = standardize

    def ramp(self, s: StepInputs) -> float:
        """The warm-up factor of this step (see the class docstring)."""
        if self.warmup is not None:
            return min((s.epoch + 1) / self.warmup, 1.0) if self.warmup else 1.0
        return 1.0 if s.progress is None else min(s.progress / self.warmup_fraction, 1.0)

    def forward(self, s: StepInputs) -> torch.Tensor:
        return self.ramp(s) * losses.dkd_loss(s.student_logits, s.teacher_logits, s.targets, self.alpha, self.beta,
                                              self.temperature, standardize=self.standardize)


@register
class DIST(Term):
    """Huang et al. 2022: τ²·[β·(1 − inter-class Pearson ρ) + γ·(1 − intra-class ρ)] of the softened predictions,
    for a teacher much stronger than the student (losses.dist_loss).

    Defaults are DIST_KD's CIFAR-100 recipe (configs/strategies/distill/dist_cifar.yaml: `kd: dist_t4`,
    `kd_loss_weight: 2`, `ori_loss_weight: 1`): β = γ = 1, τ = 4, weight 2, CE at 1. Its ImageNet recipe
    (`kd: dist`) is τ = 1 (`dist_tau=1.0`). τ is its own option, so KD's shared `temperature` does not reach it."""

    name, weight = "dist", 2.0
    reference = ("Huang et al., Knowledge Distillation from A Stronger Teacher, NeurIPS 2022; hunto/DIST_KD "
                 "(hunto/image_classification_sota lib/models/losses/dist_kd.py)")

    def __init__(self, weight: float | None = None, beta: float = 1.0, gamma: float = 1.0, tau: float = 4.0):
        super().__init__(weight)
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def forward(self, s: StepInputs) -> torch.Tensor:
        return losses.dist_loss(s.student_logits, s.teacher_logits, self.beta, self.gamma, self.tau)


@register
class HiddenState(Term):
    """Homework experiment 2: every equal-resolution stage pair, channels average-pooled to the smaller
    width (no projection, no parameters), 1 − cosine per sample; Σ_l w_l (default w_l = 1/L)."""

    name, layers = "hidden", "all"
    reference = "CIFAR-10 homework, experiment 2 (pooled hidden states + cosine)"

    def __init__(self, weight: float | None = None, pairs=None, level_weights: Sequence[float] | None = None):
        super().__init__(weight, pairs)
        self.level_weights = list(level_weights) if level_weights is not None else None

    @property
    def pair_weights(self) -> list[float]:
        n = len(self.pairs or ())
        return self.level_weights if self.level_weights is not None else [1 / n] * n

    def build(self, s: StepInputs) -> None:
        if self.level_weights is not None and len(self.level_weights) != len(self.pairs):
            raise ConfigError(f"level_weights has {len(self.level_weights)} values but hidden-state matching uses "
                              f"{len(self.pairs)} layer pairs {self.pairs}; pass one weight per pair, or None for 1/L each.")

    def forward(self, s: StepInputs) -> torch.Tensor:
        return losses.hidden_state_loss(self.student_feats(s), self.teacher_feats(s), self.level_weights)


@register
class FitNet(Term):
    """Romero et al. 2015 as RepDistiller runs it: one hint at the middle stage (`--hint_layer 2`), a
    Conv-BN-ReLU regressor (ConvReg) and MSE, β = 100."""

    name, weight, layers = "fitnet", 100.0, "middle"
    reference = "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015; RepDistiller distiller_zoo/FitNet.py"

    def __init__(self, weight: float | None = None, pairs=None):
        super().__init__(weight, pairs)
        self.regressors: losses.FitNetLoss | None = None

    @property
    def pair_weights(self) -> list[float]:
        return [1 / len(self.pairs)] * len(self.pairs or ())

    def build(self, s: StepInputs) -> None:
        self.regressors = losses.FitNetLoss.from_features(self.student_feats(s), self.teacher_feats(s))

    def forward(self, s: StepInputs) -> torch.Tensor:
        return self.regressors(self.student_feats(s), self.teacher_feats(s))


@register
class Attention(Term):
    """Zagoruyko & Komodakis 2017 as RepDistiller runs it: every stage pair (`feat[1:-1]`), summed, β = 1000.

    Why β = 1000 fits kdcore: each pair's loss is a mean over batch × H·W of unit-norm maps, so a pair's
    effective weight is β/(H·W) and depends on its resolution alone. Pairs now have equal resolution and
    sit at the reference's 32²/16²/8² for 32-px inputs, so β = 1000 weighs every pair as RepDistiller does.
    """

    name, weight, layers = "at", 1000.0, "all"
    reference = "Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017; RepDistiller distiller_zoo/AT.py"

    def __init__(self, weight: float | None = None, pairs=None, p: float = 2.0):
        super().__init__(weight, pairs)
        self.p = p

    def forward(self, s: StepInputs) -> torch.Tensor:
        return sum(losses.at_loss(fs, ft, self.p) for fs, ft in zip(self.student_feats(s), self.teacher_feats(s)))


@register
class SimilarityPreserving(Term):
    """Tung & Mori 2019 as RepDistiller runs it: one pair, the last stage (`feat[-2]`), β = 3000."""

    name, weight, layers = "sp", 3000.0, "last"
    reference = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019; RepDistiller distiller_zoo/SP.py"

    def forward(self, s: StepInputs) -> torch.Tensor:
        return sum(losses.sp_loss(fs, ft) for fs, ft in zip(self.student_feats(s), self.teacher_feats(s)))


def select_pairs(pairs: list[tuple[str, str]], layers: str) -> list[tuple[str, str]]:
    """The pairs a term reads: all of them, the middle one ((n−1)//2, shallow to deep) or the last one."""
    if layers == "all":
        return list(pairs)
    return [pairs[(len(pairs) - 1) // 2]] if layers == "middle" else [pairs[-1]]
