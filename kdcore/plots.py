"""Plots and tables the notebooks share: training curves per loss term, confusion matrix, example
predictions, per-class tables and Grad-CAM grids (matplotlib only)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .data import DataBundle


def history(histories: dict[str, pd.DataFrame], metric: str = "val_acc", title: str = ""):
    """Left: training loss per term (loss_<term>) per run; right: a validation metric per epoch."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4))
    for label, h in histories.items():
        if h is None or len(h) == 0:
            continue
        terms = [c for c in h.columns if c.startswith("loss_")]
        for c in terms:
            style = "-" if c == "loss_ce" else "--"
            ax_loss.plot(h["epoch"], h[c], style, marker="o", label=f"{label}: {c[5:]}")
        if len(terms) > 1:
            ax_loss.plot(h["epoch"], h["train_loss"], ":", marker=".", label=f"{label}: total")
        ax_val.plot(h["epoch"], h[metric], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (weighted)", title="training loss per term", yscale="log")
    ax_val.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    for ax in (ax_loss, ax_val):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    plt.close(fig)


def confusion(cm: np.ndarray, classes: list[str], title: str = "confusion matrix (test, rows = true)"):
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    plt.show()
    plt.close(fig)


def _to_hwc(img: torch.Tensor) -> np.ndarray:
    a = img.permute(1, 2, 0).numpy()
    return a[..., 0] if a.shape[2] == 1 else a


def examples(data: DataBundle, student_eval: dict, teacher_eval: dict | None = None, n: int = 8, seed: int = 0):
    """n test images with the true label and the student's (and teacher's) prediction; wrong ones in red."""
    g = np.random.default_rng(seed)
    idx = np.sort(g.choice(len(data.test), size=min(n, len(data.test)), replace=False))
    fig, axes = plt.subplots(1, len(idx), figsize=(2 * len(idx), 2.6))
    axes = np.atleast_1d(axes)
    s_pred = student_eval["logits"].argmax(1)
    t_pred = teacher_eval["logits"].argmax(1) if teacher_eval is not None else None
    for ax, i in zip(axes, idx):
        y = int(data.test.labels[i])
        ax.imshow(_to_hwc(data.test.images[i]), cmap="gray")
        text = f"true: {data.classes[y]}\nstudent: {data.classes[int(s_pred[i])]}"
        if t_pred is not None:
            text += f"\nteacher: {data.classes[int(t_pred[i])]}"
        ax.set_title(text, fontsize=7, color="black" if int(s_pred[i]) == y else "red")
        ax.axis("off")
    fig.tight_layout()
    plt.show()
    plt.close(fig)


def per_class(student_eval: dict, teacher_eval: dict | None = None) -> pd.DataFrame:
    """Per-class precision / recall / F1 of the student (and the teacher's F1 next to it)."""
    t = student_eval["per_class"].copy().round(4)
    if teacher_eval is not None:
        t["teacher_f1"] = teacher_eval["per_class"]["f1"].round(4).values
    return t


def evaluation(data: DataBundle, runs, teacher=None, n_examples: int = 8) -> pd.DataFrame:
    """Confusion matrix + example predictions of a SeedRuns' first seed, and its per-class table (returned)."""
    t_eval = teacher.eval if teacher is not None else None
    confusion(runs.eval["confusion"], data.classes, f"{runs.label}: confusion matrix (test, first seed)")
    examples(data, runs.eval, t_eval, n=n_examples)
    return per_class(runs.eval, t_eval)


def bars(table: pd.DataFrame, x: str, ys: list[str], title: str = ""):
    fig, axes = plt.subplots(1, len(ys), figsize=(4 * len(ys), 3.2))
    for ax, y in zip(np.atleast_1d(axes), ys):
        ax.bar(table[x].astype(str), table[y].astype(float))
        ax.set_title(y)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    plt.close(fig)


def gradcam_grid(data: DataBundle, models: dict, n: int = 6, seed: int = 0, device: str = "cpu"):
    """Rows: image, then one Grad-CAM overlay per model (explaining each model's own prediction)."""
    from .gradcam import gradcam

    g = np.random.default_rng(seed)
    idx = torch.as_tensor(np.sort(g.choice(len(data.test), size=min(n, len(data.test)), replace=False)))
    raw = data.test.images[idx]
    x = data.normalize(raw)
    fig, axes = plt.subplots(1 + len(models), len(idx), figsize=(1.5 * len(idx), 1.6 * (1 + len(models))), squeeze=False)
    for j, i in enumerate(idx):
        axes[0, j].imshow(_to_hwc(raw[j]), cmap="gray")
        axes[0, j].set_title(f"true: {data.classes[int(data.test.labels[i])]}", fontsize=7)
    for r, (name, model) in enumerate(models.items(), start=1):
        model = model.cpu()
        maps, pred = gradcam(model, x)
        for j in range(len(idx)):
            axes[r, j].imshow(_to_hwc(raw[j]), cmap="gray")
            axes[r, j].imshow(maps[j].numpy(), cmap="jet", alpha=0.45)
            axes[r, j].set_title(f"{name}: {data.classes[int(pred[j])]}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    plt.show()
    plt.close(fig)
