"""Distiller: a student, a frozen teacher and weighted loss terms (kdcore.terms), built from a method string.

mdistiller's idea: `forward_train(images, targets) -> (logits, {term: weighted loss})` and the
train loop sums the dict, so plain training is just a Distiller whose only term is "ce".
Features come from forward hooks by module name (torchdistill's idea): models are never rewritten.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn as nn

from . import losses
from .errors import ConfigError, unknown_name
from .models import FeatureHooks, feature_blocks
from .terms import (DIST, DKD, LS_REFERENCE, METHODS, Attention, CrossEntropy, FitNet, HiddenState, LogitKD,  # noqa: F401
                    SimilarityPreserving, StepInputs, Term, register, select_pairs)


PAIRINGS = {"resolution": 0, "shifted": 1}  # shift of the teacher stage from the equal-resolution partner


class Distiller(nn.Module):
    """Student + frozen teacher + terms. The teacher never trains and is always in eval mode.

    Feature pairs that no term names explicitly are chosen on the first step from the real feature
    shapes: `pairing="resolution"` pairs stage outputs of equal spatial size, `"shifted"` pairs each
    student stage with the teacher stage one deeper (teacher block N → student block N−1).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, terms: Sequence[Term] = (),
                 pairing: str = "resolution"):
        super().__init__()
        terms = list(terms) or [CrossEntropy()]
        if any(t.needs_teacher for t in terms) and teacher is None:
            needing = [t.name for t in terms if t.needs_teacher]
            raise ConfigError(f"Terms {needing} need a teacher; pass teacher=... or use method='baseline'.")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"Each term may appear once, got {names}.")
        if pairing not in PAIRINGS:
            raise unknown_name("pairing", pairing, PAIRINGS)
        self.student = student
        self.terms = nn.ModuleList(terms)
        self.teacher = teacher
        self.pairing = pairing
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        # (C, H, W) of each hooked layer, filled by build; one dict per side, since a student built like its
        # teacher (airbench_small, airbench) has layers of the same names
        self.student_shapes: dict[str, tuple[int, ...]] = {}
        self.teacher_shapes: dict[str, tuple[int, ...]] = {}
        auto = any(t.layers and t.pairs is None for t in terms)
        self._hook(feature_blocks(student) if auto else (), feature_blocks(teacher) if auto else ())
        self.built = False

    def _hook(self, student_layers=(), teacher_layers=()) -> None:
        """Hook the layers the terms read (plus, before the first step, every stage a pair may come from)."""
        s = {sl for t in self.terms for sl, _ in t.pairs or ()} | set(student_layers)
        tl = {tl for t in self.terms for _, tl in t.pairs or ()} | set(teacher_layers)
        self.student_hooks = FeatureHooks(self.student, sorted(s))
        self.teacher_hooks = FeatureHooks(self.teacher, sorted(tl)) if self.teacher is not None else None

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms)

    @property
    def needs_teacher_features(self) -> bool:
        return any(t.layers or t.pairs for t in self.terms)

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
                      teacher_logits: torch.Tensor | None = None,
                      teacher_features: dict[str, torch.Tensor] | None = None, progress: float | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(student logits, {term name: weighted loss}). `teacher_logits` may come from a cache; with
        `teacher_features` too (a teacher forward shared by several students), the teacher does not run here.
        `progress`: the share of the run's steps done after this one (StepInputs.progress, DKD's warm-up)."""
        with self.student_hooks:
            logits = self.student(images)
            student_features = dict(self.student_hooks.features)
        shared = teacher_logits is not None and teacher_features is not None
        teacher_features = teacher_features if shared else {}
        if self.needs_teacher and not shared and (teacher_logits is None or self.needs_teacher_features):
            teacher_logits, teacher_features = self.teacher_forward(images)
        step = StepInputs(logits, targets, teacher_logits, student_features, teacher_features, epoch, progress)
        if not self.built:
            self.build(step)
        return logits, {t.name: t.weight * t(step) for t in self.terms}

    def build(self, step: StepInputs) -> None:
        """Check the pair fits together, choose feature pairs and create shape-dependent parameters."""
        if step.teacher_logits is not None and step.teacher_logits.shape[1] != step.student_logits.shape[1]:
            t, s = step.teacher_logits.shape[1], step.student_logits.shape[1]
            raise ConfigError(f"Teacher predicts {t} classes but the student predicts {s}; build both with the same "
                              f"num_classes (create_model(name, num_classes=...)).")
        shape = lambda f: tuple(f.shape[1:])  # noqa: E731
        self.student_shapes = {k: shape(v) for k, v in step.student_features.items()}
        self.teacher_shapes = {k: shape(v) for k, v in step.teacher_features.items()}
        auto = [t for t in self.terms if t.layers and t.pairs is None]
        if auto:
            pairs = losses.resolution_pairs(
                [(n, shape(step.student_features[n])) for n in feature_blocks(self.student)],
                [(n, shape(step.teacher_features[n])) for n in feature_blocks(self.teacher)], PAIRINGS[self.pairing])
            for t in auto:
                t.pairs = select_pairs(pairs, t.layers)
            self._hook()  # from now on only the layers the terms read
        for t in self.terms:
            t.build(step)
        self.terms.to(step.student_logits.device)
        self.built = True

    def prepare(self, example_images: torch.Tensor) -> "Distiller":
        """Run one forward so pairs are chosen and every learnable term exists before the optimiser is created."""
        if not self.built:
            was_training = self.student.training
            self.student.eval()
            with torch.no_grad():
                self.forward_train(example_images, torch.zeros(len(example_images), dtype=torch.long, device=example_images.device))
            self.student.train(was_training)
        return self

    def pairs_table(self) -> list[dict]:
        """One row per (term, student layer, teacher layer) with both shapes and the pair's weight in the loss."""
        if not self.built:
            raise ConfigError("The pairs are chosen on the first step: call distiller.prepare(images) first.")
        return [{"term": t.name, "student layer": s, "student shape": self.student_shapes[s], "teacher layer": tl,
                 "teacher shape": self.teacher_shapes[tl], "weight": t.weight * w}
                for t in self.terms if t.pairs for (s, tl), w in zip(t.pairs, t.pair_weights)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student parameters plus any learned by the terms (e.g. FitNet regressors)."""
        return [p for p in self.student.parameters() if p.requires_grad] + [p for p in self.terms.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- methods by name
def parse_method(method) -> list[str | Term]:
    """'kd+at' -> ['kd', 'at']; 'baseline' -> []; Term instances (or lists mixing names and Terms) pass through.

    A name may carry options after colons: a term's variant ('kd:ls', 'dkd:ls': logit standardization) or a
    pairing ('at:shifted'); they are checked here and kept in the returned name ('kd:ls')."""
    parts = method if isinstance(method, (list, tuple)) else [method] if isinstance(method, Term) else str(method).split("+")
    out = []
    for p in parts:
        if isinstance(p, Term):
            out.append(p)
            continue
        p = str(p).strip().lower()
        name, *flags = p.split(":")
        if p and name != "baseline" and name not in METHODS:
            raise unknown_name("method", name, ["baseline", *METHODS])
        if flags and name == "baseline":
            raise ConfigError(f"'baseline' trains the student alone and takes no options: {p!r}.")
        for flag in flags:
            choices = [*METHODS[name].variants, *PAIRINGS]
            if flag not in choices:
                raise unknown_name(f"'{name}:' option", flag, choices)
        if p:
            out.append(p)
    if "baseline" in out and len(out) > 1:
        raise ConfigError(f"'baseline' trains the student alone and cannot be combined: {method!r}.")
    return [p for p in out if p != "baseline"]


def _split_variant(part: str) -> tuple[str, dict, str | None]:
    """'kd:ls' -> ('kd', the 'ls' variant's arguments, None); 'at:shifted' -> ('at', {}, 'shifted')."""
    name, *flags = part.split(":")
    variant = {k: v for f in flags if f not in PAIRINGS for k, v in METHODS[name].variants[f].items()}
    pairings = {f for f in flags if f in PAIRINGS}
    if len(pairings) > 1:
        raise ConfigError(f"{part!r} names several pairings {sorted(pairings)}; keep one.")
    return name, variant, next(iter(pairings), None)


def _term_options(cls: type[Term], options: dict, variant: dict | None = None) -> dict:
    """The options a term's constructor takes: plain `<arg>` shared by every term that has it (temperature), then
    the method string's variant ('kd:ls' sets T = 2), then `<name>_<arg>` for that term alone (kd_temperature)."""
    params = inspect.signature(cls.__init__).parameters
    kw = {k: v for k, v in options.items() if k in params and k not in ("self", "weight", "pairs")}
    kw.update({k: v for k, v in (variant or {}).items() if k != "weight"})
    prefix = f"{cls.name}_"
    kw.update({k[len(prefix):]: v for k, v in options.items() if k.startswith(prefix) and k[len(prefix):] in params})
    return kw


def make_distiller(method, student: nn.Module, teacher: nn.Module | None = None, *, alpha: float = 0.9,
                   temperature: float = 4.0, weights: dict[str, float] | None = None,
                   pairs: Sequence[tuple[str, str]] | None = None, pairing: str = "resolution",
                   label_smoothing: float = 0.0, **options) -> Distiller:
    """Build a Distiller from a method: a string such as 'baseline', 'kd', 'at', 'kd+at', 'dkd', a Term
    instance, or a list of names and Terms.

    Weights follow RepDistiller's train_student.py, loss = γ·CE + α·KD + β·feature: plain 'kd' is
    (1−α)·CE + α·KD; every other method and every combination keeps CE at 1, KD at α, and each feature
    term at its reference β (FitNet 100, AT 1000, SP 3000, hidden 1) unless `weights` overrides it.
    `pairs` fixes the (student layer, teacher layer) pairs of every feature term; other options go to
    the terms that take them (`level_weights`, `p`, `dkd_beta`, `dkd_warmup`, ...) and are ignored by the others,
    so one set of options serves every method; a name no registered term takes is refused.
    A name may carry a variant after a colon: 'kd:ls' and 'dkd:ls' are logit standardization at its reference's
    T = 2 and weight 9 (the shared `temperature` does not reach a variant's own T; `kd_temperature`,
    `dkd_temperature` and `weights` do). A pairing after a colon ('at:shifted') is `pairing="shifted"`.
    """
    parts = parse_method(method)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha is the weight of the KD term in (1-alpha)·CE + alpha·KD and must be in [0, 1]; got {alpha}.")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0 (softmax(z/T)); got {temperature}. Typical values: 1-8.")
    split = {p: _split_variant(p) for p in parts if isinstance(p, str)}
    names = [split[p][0] if isinstance(p, str) else p.name for p in parts]
    pairing = _method_pairing(method, [split[p][2] for p in split], pairing)
    weights = dict(weights or {})
    unknown = set(weights) - set(METHODS) - {"ce"} - set(names)
    if unknown:
        raise ConfigError(f"weights has unknown term(s) {sorted(unknown)}; valid: ce, {', '.join(METHODS)}.")
    if parts and teacher is None:
        raise ConfigError(f"method {method!r} needs a teacher; pass teacher=... or use method='baseline'.")
    ce = weights.get("ce", 1 - alpha if names == ["kd"] else 1.0)
    terms: list[Term] = [CrossEntropy(ce, label_smoothing)]
    for part in parts:
        if isinstance(part, Term):
            part.weight = float(weights.get(part.name, part.weight))
            terms.append(part)
            continue
        name, variant, _ = split[part]
        cls = METHODS[name]
        kw = _term_options(cls, {"temperature": temperature, **options}, variant)
        if "pairs" in inspect.signature(cls.__init__).parameters and pairs:
            kw["pairs"] = pairs
        terms.append(cls(weights.get(name, variant.get("weight", alpha if name == "kd" else None)), **kw))
    unknown = {o for o in options if not any(_term_options(cls, {o: None}) for cls in METHODS.values())}
    if unknown:
        raise ConfigError(f"Option(s) {sorted(unknown)} are not taken by any method's term; check the spelling, or "
                          f"prefix an option with its term's name (e.g. dkd_beta).")
    return Distiller(student, teacher, terms, pairing)


def _method_pairing(method, named: list[str | None], pairing: str) -> str:
    """The pairing of a method string ('at:shifted'), which must agree with an explicit non-default `pairing`."""
    named = {p for p in named if p is not None}
    if len(named) > 1 or (named and pairing != "resolution" and pairing not in named):
        raise ConfigError(f"method {method!r} and pairing={pairing!r} name different pairings; the pairing is one "
                          f"for the whole distiller: name it once.")
    return next(iter(named), pairing)
