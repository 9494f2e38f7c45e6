"""Teachers and students by name, pretrained or checkpoint weights, and feature hooks.

Every model is a plain nn.Module. Feature distillation reads stage outputs through forward hooks
by module name (FeatureHooks, torchdistill's idea), so no architecture is rewritten to return
features; each registered model only declares which of its modules are its stages (feature_blocks).
"""
from __future__ import annotations

from .airbench import AirbenchNet, init_from_data
from .hooks import FeatureHooks
from .registry import AIRBENCH_SMALL_WIDTHS, MODELS, ModelSpec, count_parameters, create_model, feature_blocks, list_models

__all__ = ["AIRBENCH_SMALL_WIDTHS", "AirbenchNet", "FeatureHooks", "MODELS", "ModelSpec", "count_parameters", "create_model",
           "feature_blocks", "init_from_data", "list_models"]
