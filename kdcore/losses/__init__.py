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

from .features import at_loss, attention_map, hidden_cosine_loss, hidden_state_loss, pool_to_common, sp_loss
from .fitnets import FitNetLoss, FitNetRegressor, fitnet_loss, resolution_pairs
from .logits import dist_loss, dkd_loss, dkd_terms, kd_loss, pearson_rows, standardize_logits

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
]
