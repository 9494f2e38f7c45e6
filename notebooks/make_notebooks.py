"""Generate notebooks/0*.ipynb (no outputs, kernel python3) from one template so they stay consistent.

    python notebooks/make_notebooks.py

Every notebook: a Colab cell (no-op elsewhere), a `parameters` cell (None = the profile's value, see
kdcore/profiles.py), a markdown explanation with the formula, then a few calls into kdcore.experiments
and kdcore.plots, and finally ctx.finish() writing results/<profile>/<notebook>.json.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from kdcore.profiles import NOTEBOOKS, PROFILES

HERE = Path(__file__).resolve().parent
REPO_URL = "https://github.com/<org>/kdcore"  # placeholder: the project's public repository

COLAB = f'''# Colab: install kdcore when running there (does nothing anywhere else).
import sys
KDCORE_REPO = "{REPO_URL}"  # placeholder: set to the project's repository
if "google.colab" in sys.modules:
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{{KDCORE_REPO}}"], check=True)'''


def param_names(nb: str) -> list[str]:
    p = PROFILES["cpu"]
    return ["profile", *p["common"], *[k for k in p["notebooks"][nb] if k not in p["common"]]]


def parameters_cell(nb: str) -> nbformat.NotebookNode:
    lines = ["# Parameters (papermill). None = the value of the profile in kdcore/profiles.py;",
             "# profile None = 'gpu' when CUDA is available, else 'cpu' ('smoke' = synthetic, a few seconds)."]
    lines += [f"{k} = None" for k in param_names(nb)]
    cell = new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["parameters"]
    return cell


def setup_cell(nb: str) -> str:
    args = ", ".join(f"{k}={k}" for k in param_names(nb))
    return ("from kdcore import experiments as ex, plots\n\n"
            f"ctx = ex.setup({nb!r}, {args})")


EVAL = "plots.evaluation(ctx.data, {run}, teacher, ctx.n_examples)  # confusion matrix, examples, per-class table"
FINISH = "display(ctx.summary())\nctx.finish()"

BODIES: dict[str, list[tuple[str, str]]] = {
    "01_baseline": [
        ("md", r"""# 01 · Baseline: teacher and student, each trained alone

Both models minimise the cross-entropy with the labels only; this is the reference every distillation
method is compared to (same data, epochs and seeds):

$$\mathcal{L}_{CE} = -\sum_{c} y_c \log \operatorname{softmax}(z)_c$$

The checkpoint is chosen on the validation split; the test split is used once, at the end."""),
        ("code", "teacher = ctx.teacher()  # trained once, then reused by every notebook\nbase = ctx.run(\"baseline\")"),
        ("code", "plots.history(ctx.histories())"),
        ("code", EVAL.format(run="base")),
        ("code", "ctx.compare_models({f\"teacher {teacher.name}\": teacher.model, f\"student {ctx.student}\": base.model},\n"
                 "                   {f\"teacher {teacher.name}\": teacher.test_acc, f\"student {ctx.student}\": base.runs.test_acc.mean()})"),
        ("code", FINISH),
    ],
    "02_logits": [
        ("md", r"""# 02 · Logit distillation (Hinton et al., 2015)

The student matches the teacher's softened class probabilities at temperature $T$, mixed with the label loss by $\alpha$:

$$\mathcal{L} = (1-\alpha)\,\mathcal{L}_{CE}(y, z_s) + \alpha\, T^2\, \mathrm{KL}\big(\operatorname{softmax}(z_t/T)\,\|\,\operatorname{softmax}(z_s/T)\big)$$

A higher $T$ exposes the teacher's "dark knowledge" (relative probabilities of wrong classes); $T^2$ keeps the gradient scale."""),
        ("code", "teacher = ctx.teacher()\nbase = ctx.run(\"baseline\")\nkd = ctx.run(\"kd\", alpha=ctx.alpha, temperature=ctx.temperature)"),
        ("code", "plots.history(ctx.histories())"),
        ("code", EVAL.format(run="kd")),
        ("md", "Small $\\alpha \\times T$ sweep (test accuracy, mean over `sweep_seeds`; kept out of the main table):"),
        ("code", "ctx.sweep_kd(ctx.sweep_alphas, ctx.sweep_temperatures, ctx.sweep_seeds, ctx.sweep_epochs)"),
        ("code", FINISH),
    ],
    "03_hidden_state": [
        ("md", r"""# 03 · Hidden-state distillation (pooled features + cosine)

Each paired stage $l$ is global-average-pooled (and projected when widths differ); the student is pulled
towards the teacher's direction with one weight per level:

$$\mathcal{L} = \mathcal{L}_{CE} + \lambda \sum_l w_l\,\big(1 - \cos(\bar h^{s}_l, \bar h^{t}_l)\big), \qquad \bar h_l = \operatorname{GAP}(h_l)$$"""),
        ("code", "teacher = ctx.teacher()\nbase = ctx.run(\"baseline\")\n"
                 "hidden = ctx.run(\"hidden\", level_weights=ctx.level_weights, levels=ctx.levels, weights={\"hidden\": ctx.hidden_weight})"),
        ("code", "plots.history(ctx.histories())"),
        ("code", EVAL.format(run="hidden")),
        ("code", FINISH),
    ],
    "04_regressor": [
        ("md", r"""# 04 · FitNets: a convolutional regressor + MSE (Romero et al., 2015)

A trainable $1\times1$ conv regressor $r$ maps the student's feature map to the teacher's shape (resized to its spatial size):

$$\mathcal{L} = \mathcal{L}_{CE} + \beta\, \big\| r(F_s) - F_t \big\|_2^2$$"""),
        ("code", "teacher = ctx.teacher()\nbase = ctx.run(\"baseline\")\n"
                 "fitnet = ctx.run(\"fitnet\", levels=ctx.levels, weights={\"fitnet\": ctx.fitnet_weight})"),
        ("code", "plots.history(ctx.histories())"),
        ("code", EVAL.format(run="fitnet")),
        ("code", FINISH),
    ],
    "05_bonus": [
        ("md", r"""# 05 · Bonus: combined losses, attention transfer, shifted blocks, DKD, SP

* **AT** (Zagoruyko & Komodakis): $\mathcal{L}_{AT} = \sum_l \big\| \frac{a^s_l}{\|a^s_l\|_2} - \frac{a^t_l}{\|a^t_l\|_2} \big\|_2^2$, $a_l = \sum_c |F_{l,c}|^2$ (flattened).
* **Shifted pairing** (`at:shifted`): teacher block $N$ teaches student block $N-1$.
* **DKD** (Zhao et al., 2022): $\mathcal{L} = \mathcal{L}_{CE} + \alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}$ (target / non-target class KD decoupled).
* **SP** (Tung & Mori): $\mathcal{L}_{SP} = \frac{1}{b^2} \| \hat G_s - \hat G_t \|_F^2$, $G = F F^\top$ over the batch, rows L2-normalised.
* **Combined** (`kd+at`): the terms add up, KD weighted by $\alpha$ as in notebook 02."""),
        ("code", "teacher = ctx.teacher()\nbase = ctx.run(\"baseline\")\n"
                 "for method in ctx.methods:\n    ctx.run(method, alpha=ctx.alpha, temperature=ctx.temperature)"),
        ("code", "plots.history(ctx.histories())"),
        ("code", "best, worst = ctx.best_and_worst(ctx.methods)\nprint(\"best method:\", best)\n" + EVAL.format(run="ctx.results[best]")),
        ("code", FINISH),
    ],
    "06_efficientvit": [
        ("md", r"""# 06 · EfficientViT-B3 → EfficientViT-B1 (timm)

Logit KD as in notebook 02, $\mathcal{L} = (1-\alpha)\mathcal{L}_{CE} + \alpha T^2 \mathrm{KL}(p_t^T \| p_s^T)$, between two
EfficientViT sizes. Counter-measures against over-fitting are parameters: a dropout head (`drop_rate`, timm's kwarg),
stronger augmentation (`pad` of the random crop) and the loss balance `alpha`. Pretrained ImageNet weights are used when
they can be loaded here, else both models train from scratch: the output below says which."""),
        ("code", "teacher_init = ex.try_pretrained(ctx.params[\"teacher\"], ctx.pretrained, num_classes=ctx.data.num_classes)\n"
                 "student_init = ex.try_pretrained(ctx.student, ctx.pretrained, num_classes=ctx.data.num_classes)\n"
                 "ctx.extra[\"initialisation\"] = {\"teacher\": \"pretrained\" if teacher_init else \"from scratch\",\n"
                 "                              \"student\": \"pretrained\" if student_init else \"from scratch\"}\n"
                 "print(ctx.extra[\"initialisation\"])\n"
                 "teacher = ctx.teacher(pretrained=teacher_init)\n"
                 "head = {\"drop_rate\": ctx.drop_rate} if ctx.drop_rate is not None else {}\n"
                 "base = ctx.run(\"baseline\", student_kwargs={**ctx.student_kwargs, **head}, pretrained=student_init)\n"
                 "kd = ctx.run(\"kd\", student_kwargs={**ctx.student_kwargs, **head}, pretrained=student_init, alpha=ctx.alpha, temperature=ctx.temperature)"),
        ("code", "plots.history(ctx.histories())"),
        ("code", "table = ctx.compare_models({teacher.name: teacher.model, f\"{ctx.student} (kd)\": kd.model},\n"
                 "                           {teacher.name: teacher.test_acc, f\"{ctx.student} (kd)\": kd.runs.test_acc.mean()})\n"
                 "ctx.extra[\"size_latency\"] = table  # ratios: b3 / b1, measured here\ntable"),
        ("code", EVAL.format(run="kd")),
        ("code", FINISH),
    ],
    "07_eurosat": [
        ("md", r"""# 07 · EuroSAT: a ResNet teacher → SmallMyNet, and five small students

EuroSAT RGB (64×64, 10 land-use classes; the cpu profile trains on a stratified subset resized to 32×32 to fit its
time budget — the data line printed below says which), seeded stratified 80/10/10 split. First SmallMyNet (89,397 parameters)
with and without logit KD, $\mathcal{L} = (1-\alpha)\mathcal{L}_{CE} + \alpha T^2 \mathrm{KL}(p_t^T \| p_s^T)$.

> The seed project reported SmallMyNet 0.908 → 0.928 test accuracy with KD from a ResNet101 teacher at 0.977.
> Those are the seed's numbers, not ours; ours are below, with the profile's data size and epochs."""),
        ("code", "teacher = ctx.teacher()\nbase = ctx.run(\"baseline\")\nkd = ctx.run(\"kd\", alpha=ctx.alpha, temperature=ctx.temperature)"),
        ("code", "plots.history(ctx.histories())"),
        ("code", EVAL.format(run="kd")),
        ("md", "## The five EuroSAT students side by side (same teacher and settings)"),
        ("code", "labels = [ctx.run(ctx.students_method, f\"{s} ({ctx.students_method})\", student=s, alpha=ctx.alpha, temperature=ctx.temperature).label\n"
                 "          for s in ctx.students]\n"
                 "table = ctx.summary().set_index(\"method\").loc[labels]\nplots.bars(table.reset_index().assign(acc=[r.runs.test_acc.mean() for r in map(ctx.results.get, labels)]),\n"
                 "           \"method\", [\"acc\", \"params\"])\ntable"),
        ("md", "## Grad-CAM: teacher vs student, and best vs worst student (same test images)"),
        ("code", "plots.gradcam_grid(ctx.data, {\"teacher\": teacher.model, \"student (kd)\": kd.model}, n=ctx.gradcam_images)\n"
                 "best, worst = ctx.best_and_worst(labels)\n"
                 "plots.gradcam_grid(ctx.data, {f\"best: {best}\": ctx.results[best].model, f\"worst: {worst}\": ctx.results[worst].model}, n=ctx.gradcam_images)"),
        ("code", FINISH),
    ],
}


def build(nb: str) -> nbformat.NotebookNode:
    cells = [new_code_cell(COLAB), parameters_cell(nb)]
    body = BODIES[nb]
    cells.append(new_markdown_cell(body[0][1]))
    cells.append(new_code_cell(setup_cell(nb)))
    for kind, src in body[1:]:
        cells.append(new_markdown_cell(src) if kind == "md" else new_code_cell(src))
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    for i, c in enumerate(notebook.cells):
        c["id"] = f"{nb[:2]}-{i:02d}"
    return notebook


def main() -> None:
    for nb in NOTEBOOKS:
        path = HERE / f"{nb}.ipynb"
        nbformat.write(build(nb), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
