"""Classification metrics from a confusion matrix: the one place accuracy and macro P/R/F1 are computed.

The training loops validate with `confusion` (summed on the device, over ranks under torch.distributed) and
`metrics_from_confusion`; the notebooks' test evaluation (kdcore.evaluate) builds the same matrix from
predictions, so a validation and a test number always mean the same thing.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .data import DeviceLoader
from .runtime import distributed_world


@torch.no_grad()
def confusion(model: nn.Module, loader: DeviceLoader, num_classes: int, amp: bool = False) -> tuple[torch.Tensor, float]:
    """(confusion matrix [true, pred] summed over ranks, summed cross-entropy) of `model` on a loader."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes * num_classes, dtype=torch.long, device=loader.device)
    loss = torch.zeros((), device=loader.device)
    for batch in loader:
        with torch.autocast(loader.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(batch.images).float()
        loss += nn.functional.cross_entropy(logits, batch.labels, reduction="sum")
        cm += torch.bincount(batch.labels * num_classes + logits.argmax(1), minlength=num_classes * num_classes)
    if distributed_world()[1] > 1:
        torch.distributed.all_reduce(cm)
        torch.distributed.all_reduce(loss)
    model.train(was_training)
    return cm.view(num_classes, num_classes).cpu(), loss.item()


def confusion_from_predictions(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The [true, pred] count matrix of two label vectors."""
    labels, predictions = torch.as_tensor(labels).long(), torch.as_tensor(predictions).long()
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class precision, recall, F1 and support (a class never predicted has precision 0, as scikit-learn's
    zero_division=0)."""
    cm = cm.double()
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), torch.zeros_like(tp))
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 over the classes present in the labels."""
    c, cm = per_class_from_confusion(cm), cm.double()
    present = c["support"] > 0
    return {"acc": (cm.diag().sum() / cm.sum().clamp_min(1)).item(), "precision": c["precision"][present].mean().item(),
            "recall": c["recall"][present].mean().item(), "f1": c["f1"][present].mean().item()}
