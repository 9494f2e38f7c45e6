"""Distiller: a student, a frozen teacher and weighted loss terms.

mdistiller's idea: `forward_train(images, targets) -> (logits, {term: weighted loss})` and the
train loop sums the dict, so plain training is just a Distiller whose only term is "ce".
Features come from forward hooks by module name (torchdistill's idea): models are never rewritten.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses
from .errors import ConfigError, unknown_name
from .models import FeatureHooks, feature_blocks


@dataclass
class StepInputs:
    """What every term may read in one training step."""

    student_logits: torch.Tensor
    targets: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 0


class Term(nn.Module):
    """One weighted loss term. `pairs` are (student layer, teacher layer) names it reads."""

    name = "term"
    needs_teacher = True

    def __init__(self, weight: float = 1.0, pairs: Sequence[tuple[str, str]] = ()):
        super().__init__()
        self.weight = float(weight)
        self.pairs = [tuple(p) for p in pairs]

    def build(self, inputs: StepInputs) -> None:
        """Create parameters that depend on feature shapes (called once, before the optimiser)."""

    def student_feats(self, inputs: StepInputs) -> list[torch.Tensor]:
        return [inputs.student_features[s] for s, _ in self.pairs]

    def teacher_feats(self, inputs: StepInputs) -> list[torch.Tensor]:
        return [inputs.teacher_features[t] for _, t in self.pairs]


class CrossEntropy(Term):
    name, needs_teacher = "ce", False

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(weight)
        self.label_smoothing = label_smoothing

    def forward(self, s: StepInputs) -> torch.Tensor:
        return F.cross_entropy(s.student_logits.float(), s.targets, label_smoothing=self.label_smoothing)


class LogitKD(Term):
    """Hinton et al. 2015: KL(teacher ‖ student) at temperature T, × T²."""

    name = "kd"

    def __init__(self, weight: float = 0.9, temperature: float = 4.0):
        super().__init__(weight)
        self.temperature = temperature

    def forward(self, s: StepInputs) -> torch.Tensor:
        return losses.kd_loss(s.student_logits, s.teacher_logits, self.temperature)


class DKD(Term):
    """Zhao et al. 2022: α·TCKD + β·NCKD, ramped in linearly over `warmup` epochs as in mdistiller."""

    name = "dkd"

    def __init__(self, weight: float = 1.0, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 0):
        super().__init__(weight)
        self.alpha, self.beta, self.temperature, self.warmup = alpha, beta, temperature, warmup

    def forward(self, s: StepInputs) -> torch.Tensor:
        ramp = min((s.epoch + 1) / self.warmup, 1.0) if self.warmup else 1.0
        return ramp * losses.dkd_loss(s.student_logits, s.teacher_logits, s.targets, self.alpha, self.beta, self.temperature)


class HiddenState(Term):
    """Pooled hidden states matched by cosine similarity, one weight per level (homework exp. 2)."""

    name = "hidden"

    def __init__(self, weight: float = 1.0, pairs=(), level_weights: Sequence[float] | None = None):
        super().__init__(weight, pairs)
        self.level_weights = list(level_weights) if level_weights is not None else None

    def forward(self, s: StepInputs) -> torch.Tensor:
        return losses.hidden_state_loss(self.student_feats(s), self.teacher_feats(s), self.level_weights)


class FitNet(Term):
    """Romero et al. 2015: a trainable conv regressor maps student features to the teacher's; MSE."""

    name = "fitnet"

    def __init__(self, weight: float = 100.0, pairs=()):
        super().__init__(weight, pairs)
        self.regressors: losses.FitNetLoss | None = None

    def build(self, s: StepInputs) -> None:
        self.regressors = losses.FitNetLoss.from_features(self.student_feats(s), self.teacher_feats(s))

    def forward(self, s: StepInputs) -> torch.Tensor:
        return self.regressors(self.student_feats(s), self.teacher_feats(s))


class Attention(Term):
    """Zagoruyko & Komodakis 2017: match normalised spatial attention maps, summed over pairs."""

    name = "at"

    def __init__(self, weight: float = 1000.0, pairs=(), p: float = 2.0):
        super().__init__(weight, pairs)
        self.p = p

    def forward(self, s: StepInputs) -> torch.Tensor:
        return sum(losses.at_loss(fs, ft, self.p) for fs, ft in zip(self.student_feats(s), self.teacher_feats(s)))


class SimilarityPreserving(Term):
    """Tung & Mori 2019: match the batch's row-normalised Gram matrices, summed over pairs."""

    name = "sp"

    def __init__(self, weight: float = 3000.0, pairs=()):
        super().__init__(weight, pairs)

    def forward(self, s: StepInputs) -> torch.Tensor:
        return sum(losses.sp_loss(fs, ft) for fs, ft in zip(self.student_feats(s), self.teacher_feats(s)))


class Distiller(nn.Module):
    """Student + frozen teacher + terms. The teacher never trains and is always in eval mode."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, terms: Sequence[Term] = ()):
        super().__init__()
        terms = list(terms) or [CrossEntropy()]
        if any(t.needs_teacher for t in terms) and teacher is None:
            needing = [t.name for t in terms if t.needs_teacher]
            raise ConfigError(f"Terms {needing} need a teacher; pass teacher=... or use method='baseline'.")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"Each term may appear once, got {names}.")
        self.student = student
        self.terms = nn.ModuleList(terms)
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.student_hooks = FeatureHooks(student, sorted({s for t in terms for s, _ in t.pairs}))
        self.teacher_hooks = FeatureHooks(teacher, sorted({tl for t in terms for _, tl in t.pairs})) if teacher is not None else None
        self.built = False

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms)

    @property
    def needs_teacher_features(self) -> bool:
        return any(t.pairs for t in self.terms)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)

    @torch.no_grad()
    def teacher_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher logits and hooked features, without autograd (no_grad, so features may enter the loss)."""
        with self.teacher_hooks:
            logits = self.teacher(images)
            return logits, dict(self.teacher_hooks.features)

    def forward_train(self, images: torch.Tensor, targets: torch.Tensor, epoch: int = 0,
                      teacher_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(student logits, {term name: weighted loss}). `teacher_logits` may come from a cache."""
        with self.student_hooks:
            logits = self.student(images)
            student_features = dict(self.student_hooks.features)
        teacher_features = {}
        if self.needs_teacher and (teacher_logits is None or self.needs_teacher_features):
            teacher_logits, teacher_features = self.teacher_forward(images)
        step = StepInputs(logits, targets, teacher_logits, student_features, teacher_features, epoch)
        if not self.built:
            self.build(step)
        return logits, {t.name: t.weight * t(step) for t in self.terms}

    def build(self, step: StepInputs) -> None:
        """Check the pair fits together and create shape-dependent parameters (FitNet regressors)."""
        if step.teacher_logits is not None and step.teacher_logits.shape[1] != step.student_logits.shape[1]:
            t, s = step.teacher_logits.shape[1], step.student_logits.shape[1]
            raise ConfigError(f"Teacher predicts {t} classes but the student predicts {s}; build both with the same "
                              f"num_classes (create_model(name, num_classes=...)).")
        for t in self.terms:
            t.build(step)
        self.terms.to(step.student_logits.device)
        self.built = True

    def prepare(self, example_images: torch.Tensor) -> "Distiller":
        """Run one forward so every learnable term exists before the optimiser is created."""
        if not self.built:
            was_training = self.student.training
            self.student.eval()
            with torch.no_grad():
                self.forward_train(example_images, torch.zeros(len(example_images), dtype=torch.long, device=example_images.device))
            self.student.train(was_training)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student parameters plus any learned by the terms (e.g. FitNet regressors)."""
        return [p for p in self.student.parameters() if p.requires_grad] + [p for p in self.terms.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- methods by name
FEATURE_TERMS = {"hidden": HiddenState, "fitnet": FitNet, "at": Attention, "sp": SimilarityPreserving}
LOGIT_TERMS = {"kd": LogitKD, "dkd": DKD}
METHODS = ("baseline", "kd", "dkd", "hidden", "fitnet", "at", "sp")


def parse_method(method: str) -> list[str]:
    """'kd+at' -> ['kd', 'at']; 'baseline' -> []."""
    parts = [p.strip().lower() for p in str(method).split("+") if p.strip()]
    for p in parts:
        if p not in METHODS:
            raise unknown_name("method", p, METHODS)
    if "baseline" in parts and len(parts) > 1:
        raise ConfigError(f"'baseline' trains the student alone and cannot be combined: {method!r}.")
    return [p for p in parts if p != "baseline"]


def default_pairs(student: nn.Module, teacher: nn.Module, pairing: str = "aligned", levels: int | None = None) -> list[tuple[str, str]]:
    """Feature pairs from the models' registered stage outputs.

    aligned: the last blocks of each, matched from the end (depths may differ);
    shifted: teacher block N -> student block N-1 (a deeper teacher stage teaches an earlier student stage).
    """
    sb, tb = feature_blocks(student), feature_blocks(teacher)
    if pairing == "aligned":
        pairs = losses.last_pairs(sb, tb, min(len(sb), len(tb)))
    elif pairing == "shifted":
        pairs = losses.block_pairs(sb, tb, shift=1)
    else:
        raise unknown_name("pairing", pairing, ("aligned", "shifted"))
    return pairs[-levels:] if levels else pairs


def make_distiller(method: str, student: nn.Module, teacher: nn.Module | None = None, *, alpha: float = 0.9,
                   temperature: float = 4.0, weights: dict[str, float] | None = None,
                   pairs: Sequence[tuple[str, str]] | None = None, pairing: str = "aligned", levels: int | None = None,
                   level_weights: Sequence[float] | None = None, dkd_alpha: float = 1.0, dkd_beta: float = 8.0,
                   dkd_warmup: int = 0, label_smoothing: float = 0.0) -> Distiller:
    """Build a Distiller from a method string such as 'baseline', 'kd', 'at', 'kd+at', 'dkd'.

    Loss = (1-α)·CE + α·KD when 'kd' is present, else CE; feature terms are added with their
    literature weights (FitNet 100, AT 1000, SP 3000; hidden 1) unless `weights` overrides them.
    """
    names = parse_method(method)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha is the weight of the KD term in (1-alpha)·CE + alpha·KD and must be in [0, 1]; got {alpha}.")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0 (softmax(z/T)); got {temperature}. Typical values: 1-8.")
    weights = dict(weights or {})
    unknown = set(weights) - set(METHODS) - {"ce"}
    if unknown:
        raise ConfigError(f"weights has unknown term(s) {sorted(unknown)}; valid: ce, {', '.join(METHODS[1:])}.")
    if names and teacher is None:
        raise ConfigError(f"method {method!r} needs a teacher; pass teacher=... or use method='baseline'.")
    terms: list[Term] = [CrossEntropy(weights.get("ce", 1 - alpha if "kd" in names else 1.0), label_smoothing)]
    feature_pairs = None
    for n in names:
        if n in FEATURE_TERMS and feature_pairs is None:
            feature_pairs = list(pairs) if pairs else default_pairs(student, teacher, pairing, levels)
        if n == "kd":
            terms.append(LogitKD(weights.get("kd", alpha), temperature))
        elif n == "dkd":
            terms.append(DKD(weights.get("dkd", 1.0), dkd_alpha, dkd_beta, temperature, dkd_warmup))
        elif n == "hidden":
            terms.append(HiddenState(weights.get("hidden", 1.0), feature_pairs, level_weights))
        else:
            cls = FEATURE_TERMS[n]
            terms.append(cls(weights[n], feature_pairs) if n in weights else cls(pairs=feature_pairs))
    return Distiller(student, teacher, terms)

