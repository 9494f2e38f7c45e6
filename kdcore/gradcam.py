"""Grad-CAM (Selvaraju et al., 2017) with forward/backward hooks on one named layer; no extra dependency.

    cam = ReLU( sum_k  w_k · A_k ),   w_k = mean_{i,j} dy_c / dA_k[i, j]

A is the layer's output (k channels), y_c the logit of class c (default: the predicted class). The map is
upsampled to the input size and scaled to [0, 1] per image.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import feature_blocks


class GradCAM:
    def __init__(self, model: nn.Module, layer: str | None = None):
        self.model = model
        self.layer = layer or feature_blocks(model)[-1]
        self.module = dict(model.named_modules())[self.layer]
        self._acts: torch.Tensor | None = None
        self._grads: torch.Tensor | None = None

    def _forward_hook(self, module, inputs, output):
        self._acts = output
        output.register_hook(self._save_grad)

    def _save_grad(self, grad):
        self._grads = grad

    def __call__(self, images: torch.Tensor, class_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps (N, H, W) in [0, 1], the classes explained) for normalised `images` (N, C, H, W)."""
        was_training = self.model.training
        self.model.eval()
        handle = self.module.register_forward_hook(self._forward_hook)
        try:
            with torch.enable_grad():
                x = images.detach().clone().requires_grad_(True)
                logits = self.model(x)
                if class_idx is None:
                    class_idx = logits.argmax(1)
                self.model.zero_grad(set_to_none=True)
                logits.gather(1, class_idx.view(-1, 1)).sum().backward()
        finally:
            handle.remove()
            self.model.train(was_training)
        acts, grads = self._acts.detach(), self._grads.detach()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * acts).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.flatten(1).min(1).values.view(-1, 1, 1)
        hi = cam.flatten(1).max(1).values.view(-1, 1, 1)
        return (cam - lo) / (hi - lo).clamp_min(1e-8), class_idx.detach()


def gradcam(model: nn.Module, images: torch.Tensor, layer: str | None = None, class_idx=None):
    """One-shot Grad-CAM: see GradCAM."""
    return GradCAM(model, layer)(images, class_idx)
