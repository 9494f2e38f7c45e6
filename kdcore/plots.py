"""Plots and tables the notebooks share: training curves per loss term, confusion matrix, example
predictions, per-class tables and Grad-CAM grids (matplotlib only)."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .data import DataBundle


RUN_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2)),
              (0, (5, 2, 1, 2, 1, 2)), (0, (2, 1)))  # 10 dash patterns, one per tab10 colour
TERM_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def run_style(k: int) -> dict:
    """Colour and line style of the k-th run: the first 10 runs differ in both, the first 100 in at least one."""
    return {"color": plt.get_cmap("tab10")(k % 10), "linestyle": RUN_STYLES[(k + k // 10) % len(RUN_STYLES)]}


def history(histories: dict[str, pd.DataFrame], metric: str = "val_acc", title: str = ""):
    """Left: training loss per term (loss_<term>) per run; right: a validation metric per epoch.

    A run keeps one colour and line style in both panels (legend: right); a loss term keeps one marker across
    runs (legend: left), so 15 loss lines read as (run, term) from two short legends instead of one long one.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    histories = {k: h for k, h in histories.items() if h is not None and len(h)}
    terms = list(dict.fromkeys(c[5:] for h in histories.values() for c in h.columns if c.startswith("loss_")))
    markers = dict(zip([*terms, "total"], TERM_MARKERS * 4))
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(13, 4.5))
    used = []
    for k, (label, h) in enumerate(histories.items()):
        style = run_style(k)
        run_terms = [c[5:] for c in h.columns if c.startswith("loss_")]
        for t in run_terms:
            ax_loss.plot(h["epoch"], h[f"loss_{t}"], marker=markers[t], markersize=4, **style)
        if len(run_terms) > 1:
            ax_loss.plot(h["epoch"], h["train_loss"], marker=markers["total"], markersize=4, linewidth=2.5, **style)
            run_terms.append("total")
        ax_val.plot(h["epoch"], h[metric], marker=".", label=label, **style)
        used += [t for t in run_terms if t not in used]
    ax_loss.set(xlabel="epoch", ylabel="training loss (weighted)", title="training loss per term", yscale="log")
    ax_val.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    ax_loss.legend(handles=[Line2D([], [], color="gray", marker=markers[t], linestyle="", label=t) for t in used],
                   title="loss term", fontsize=7, title_fontsize=7)
    ax_val.legend(title="run", fontsize=7, title_fontsize=7, handlelength=4)  # long enough to show the dashes
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    plt.close(fig)


def convergence(history: pd.DataFrame, plateau: int, tolerance: float, metric: str = "val_acc", title: str = ""):
    """One run's validation curve with the epoch from which it stays within `tolerance` of its best (stats.plateau_epoch)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(history["epoch"], history[metric], marker=".")
    best = history[metric].max()
    ax.axhspan(best - tolerance, best, color="tab:green", alpha=0.15, label=f"within {tolerance:g} of the best")
    ax.axvline(plateau, color="tab:green", linestyle="--", label=f"plateau from epoch {plateau}")
    ax.set(xlabel="epoch", ylabel=metric, title=title or f"validation {metric} over one long schedule")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
    """Per-class precision / recall / F1 of the student (and the teacher's F1 next to it), 4 digits each."""
    t = student_eval["per_class"].set_index("class")
    if teacher_eval is not None:
        t["teacher_f1"] = teacher_eval["per_class"]["f1"].values
    scores = ["precision", "recall", "f1"] + ["teacher_f1"] * (teacher_eval is not None)
    return t.assign(**{c: t[c].map("{:.4f}".format) for c in scores})


def evaluation(data: DataBundle, runs, teacher=None, n_examples: int = 8) -> pd.DataFrame:
    """Confusion matrix + example predictions of a SeedRuns' first seed, and its per-class table (returned)."""
    t_eval = teacher.eval if teacher is not None else None
    confusion(runs.eval["confusion"], data.classes, f"{runs.label}: confusion matrix (test, first seed)")
    examples(data, runs.eval, t_eval, n=n_examples)
    return per_class(runs.eval, t_eval)


def bars(table: pd.DataFrame, x: str, ys: list[str], title: str = ""):
    """One bar chart per column in `ys`; a column <y>_std (or <name>_std for y = <name>_mean) draws error bars."""
    fig, axes = plt.subplots(1, len(ys), figsize=(4 * len(ys), 3.4))
    for ax, y in zip(np.atleast_1d(axes), ys):
        std = f"{y[:-5] if y.endswith('_mean') else y}_std"
        err = table[std].astype(float).fillna(0) if std in table else None
        ax.bar(table[x].astype(str), table[y].astype(float), yerr=err, capsize=4 if err is not None else 0)
        ax.set_title(f"{y} (± std over seeds)" if err is not None else y, fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    plt.close(fig)


def seed_bars(runs, metrics=("test_acc",), extra=("params",), title: str = ""):
    """Bars over runs (kdcore.runs.SeedRuns): each metric's mean with its std over seeds as error bars,
    plus `extra` numbers from each run's efficiency (params, size_mb, ...) as plain bars."""
    table = pd.DataFrame([{"run": r.label, **{f"{m}_mean": r.runs[m].mean() for m in metrics},
                           **{f"{m}_std": r.runs[m].std(ddof=1) for m in metrics},
                           **{e: r.efficiency.get(e) for e in extra}} for r in runs])
    bars(table, "run", [f"{m}_mean" for m in metrics] + list(extra), title)


def gradcam_grid(data: DataBundle, models: dict, n: int = 6, seed: int = 0, device: str = "cpu"):
    """Rows: image, then one Grad-CAM overlay per model (explaining each model's own prediction).

    The model's name labels its row (left), so the titles above the images are short class names that fit.
    """
    from .gradcam import gradcam

    g = np.random.default_rng(seed)
    idx = torch.as_tensor(np.sort(g.choice(len(data.test), size=min(n, len(data.test)), replace=False)))
    raw = data.test.images[idx]
    x = data.normalize(raw)
    rows = {"image": None, **models}
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(2.0 * len(idx) + 1.2, 2.1 * len(rows)), squeeze=False)
    for r, (name, model) in enumerate(rows.items()):
        if model is None:
            titles = [f"true: {data.classes[int(data.test.labels[i])]}" for i in idx]
            maps = None
        else:
            maps, pred = gradcam(model.cpu(), x)
            titles = [f"pred: {data.classes[int(p)]}" for p in pred]
        for j in range(len(idx)):
            ax = axes[r, j]
            ax.imshow(_to_hwc(raw[j]), cmap="gray")
            if maps is not None:
                ax.imshow(maps[j].numpy(), cmap="jet", alpha=0.45)
            ax.set_title(titles[j], fontsize=7, wrap=True)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(textwrap.fill(name, 22), fontsize=8)
    fig.tight_layout()
    plt.show()
    plt.close(fig)
