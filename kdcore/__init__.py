"""kdcore: knowledge distillation (teacher -> student image classifiers) as small, tested parts.

    data      load_dataset(...) -> DataBundle; DeviceLoader (batches + augmentation on the device)
    models    create_model(name, num_classes, in_channels, pretrained); FeatureHooks
    losses    kd_loss, dkd_loss, dist_loss, at_loss, sp_loss, hidden-state cosine, FitNet regressor
    terms     Term, register: one weighted loss module per method name
    distill   Distiller, make_distiller(method, student, teacher)
    train     fit(model_or_distiller, data, TrainConfig) -> FitResult (checkpoint: resuming)
    metrics   accuracy and macro P/R/F1 from a confusion matrix
    evaluate  test metrics and predictions, MB, CPU latency
"""
from .data import DataBundle, DeviceLoader, load_dataset
from .distill import Distiller, make_distiller
from .errors import (CheckpointError, ConfigError, DataNotFoundError, KDError, NonFiniteLossError,
                     PretrainedUnavailableError)
from .models import FeatureHooks, create_model, list_models
from .runtime import seed_everything
from .train import FitResult, TrainConfig, fit

__version__ = "0.1.0"
__all__ = ["DataBundle", "DeviceLoader", "load_dataset", "Distiller", "make_distiller", "CheckpointError", "ConfigError",
           "DataNotFoundError", "KDError", "NonFiniteLossError", "PretrainedUnavailableError", "FeatureHooks",
           "create_model", "list_models", "FitResult", "TrainConfig", "fit", "seed_everything"]
