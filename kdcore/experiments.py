"""The notebooks' side of kdcore: set-up, the notebook Context, results JSON.

A notebook is parameters + a few calls into this module (and kdcore.plots):

    ctx = setup("02_logits", globals())             # notebook defaults, the profile's values, -p overrides; data
    teacher = ctx.teacher()                          # trained once, kept in the run store (kdcore.teachers)
    base = ctx.run("baseline"); kd = ctx.run("kd", alpha=..., temperature=...)   # kdcore.runs, per seed
    ctx.finish()                                     # results/<profile>/<notebook>.json (atomic)

Model selection uses the validation split (fit keeps the best-by-validation weights); every run is
evaluated on the test split once, at the end. Identical runs (same data, models, settings and seed)
come from the run store, so e.g. the baseline student is trained once for all notebooks.
"""
from __future__ import annotations

import copy
import datetime as _dt
import inspect
import json
import math
import os
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from . import conclusions
from . import profiles as _profiles
from . import stats
from .atomic import atomic_write_text
from .data import DataBundle, default_root, load_dataset
from .distill import make_distiller
from .errors import PretrainedUnavailableError
from .evaluate import latency_ms, size_mb
from .models import count_parameters, create_model
from .provenance import run_info, started_commit
from .runs import SeedRuns, run_seeds, summarize_runs
from .store import config_hash as _hash, jsonable as _jsonable
from .teachers import TeacherResult, get_teacher

REPO_ROOT = _profiles.REPO_ROOT  # relative paths in parameters are taken from here, wherever the kernel runs
CONVERGENCE_LABEL = "baseline, {epochs} epochs (convergence)"  # a run's label is part of its store key
TRAIN_KEYS = ("epochs", "batch_size", "lr", "optimizer", "pad", "augment", "weight_decay", "max_steps_per_epoch",
              "device", "progress", "schedule", "teacher_cache", "precision")


# --------------------------------------------------------------------------- small helpers


def project_path(path: str | os.PathLike) -> Path:
    """A relative path is taken from the repository root, not the working directory: Jupyter starts kernels in
    notebooks/, papermill wherever it is called, and all of them must share results/ and checkpoints/."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(os.path.normpath(REPO_ROOT / p))


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: `root` when given, else $KDCORE_DATA, else ../shared/data beside the repository."""
    return project_path(root) if root else default_root()


def model_size(model: nn.Module) -> dict:
    """Parameters (all, frozen included) and size in MB; latency is measured per notebook (Context.latencies)."""
    return {"params": count_parameters(model, trainable_only=False), "size_mb": size_mb(model)}


def show_code(*objects) -> None:
    """Display the source of each object (a loss term, its loss function, the training step) in the notebook,
    so a reader sees the exact code a method runs, not a paraphrase of it."""
    from IPython.display import Code, display

    for obj in objects:
        display(Code(inspect.getsource(obj), language="python"))


YES_NO = {True: "yes", False: "no"}  # a verdict; None (no test) shows as "–"


def _fmt_p(p: float) -> str:
    return "–" if p != p else f"{p:.3f}"


def _fmt_ms(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def try_pretrained(name: str, pretrained="auto", **kwargs) -> bool:
    """True when published weights for `name` can be loaded here; prints which way the model is initialised."""
    if pretrained is False or pretrained in ("false", "no", None):
        print(f"{name}: from scratch (pretrained=False)")
        return False
    try:
        create_model(name, pretrained=True, **kwargs)
        print(f"{name}: pretrained ImageNet weights loaded")
        return True
    except PretrainedUnavailableError as err:
        if pretrained is True:
            raise
        print(f"{name}: pretrained weights unavailable here, training from scratch ({str(err).splitlines()[0][:160]})")
        return False


# --------------------------------------------------------------------------- results


def write_results(profile: str, notebook: str, payload: dict, results_dir: str | os.PathLike = "results") -> Path:
    """Write results/<profile>/<notebook>.json atomically.

    payload: runs (DataFrame or records: method, seed, test_acc, test_f1, ...), baseline (method name),
    teacher (dict: name, test_acc, test_f1, params, size_mb, latency_ms, seconds), efficiency
    ({method: {params, size_mb, latency_ms}}), run_info (dict), and any extra keys (kept as they are).
    The JSON gets `metrics`: one entry per method with mean ± std (n) and the paired gain over the baseline
    (delta_acc, delta_ci_low, delta_ci_high, significant, n_pairs, delta_f1; see summarize_runs).
    """
    payload = dict(payload)
    runs = pd.DataFrame(payload.pop("runs"))
    baseline = payload.pop("baseline", "baseline")
    eff = payload.pop("efficiency", {}) or {}
    summary = summarize_runs(runs, baseline)
    metrics = []
    for _, r in summary.iterrows():
        m = {"method": r["method"], "n": int(r["n"])}
        for k in ("test_acc", "test_f1", "precision", "recall", "val_acc"):
            m[f"{k}_mean"], m[f"{k}_std"] = float(r[f"{k}_mean"]), float(r[f"{k}_std"])
        m["test_acc"] = stats.fmt_mean_std(r["test_acc_mean"], r["test_acc_std"], int(r["n"]))
        m["test_f1"] = stats.fmt_mean_std(r["test_f1_mean"], r["test_f1_std"], int(r["n"]))
        for k in ("delta_acc", "delta_ci_low", "delta_ci_high", "delta_f1"):
            m[k] = float(r[k])
        m["significant"], m["n_pairs"] = r["significant"], int(r["n_pairs"])
        m["significant_raw"], m["p_value"], m["p_holm"] = r["significant_raw"], float(r["p_value"]), float(r["p_holm"])
        m["is_baseline"] = r["method"] == baseline
        m["seconds_per_run"] = float(r["seconds_mean"])
        m.update({k: eff.get(r["method"], {}).get(k) for k in ("params", "size_mb", "latency_ms", "threads")})
        metrics.append(m)
    out = {"notebook": notebook, "profile": profile, "baseline": baseline, "metrics": metrics,
           "runs": runs, **payload}
    path = Path(results_dir) / profile / f"{notebook}.json"
    atomic_write_text(json.dumps(_jsonable(out), indent=2, default=str), path)
    print(f"wrote {path}")
    return path


# --------------------------------------------------------------------------- notebook context
class Context:
    """What one notebook run holds: its parameters, data, teacher, runs and extra results."""

    def __init__(self, notebook: str, params: dict, data: DataBundle):
        self.notebook, self.params, self.data = notebook, params, data
        self.started = time.perf_counter()
        self.teacher_result: TeacherResult | None = None
        self.results: dict[str, SeedRuns] = {}
        self.extra: dict = {}
        self._architecture: dict[str, tuple[str, nn.Module]] = {}  # label -> (architecture key, a model)
        self._latency: dict[str, dict] = {}  # architecture key -> {"latency_ms", "threads"}

    def __getattr__(self, name):
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(name)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.data.in_channels, *self.data.image_size)

    def _train(self, **overrides) -> dict:
        p = {**self.params, **overrides}
        return {k: p[k] for k in TRAIN_KEYS if k in p and p[k] is not None}

    def teacher(self, name: str | None = None, pretrained=None, **model_kwargs) -> TeacherResult:
        name = name or self.params["teacher"]
        pretrained = self.params.get("teacher_pretrained", False) if pretrained is None else pretrained
        if pretrained not in (True, False):
            pretrained = try_pretrained(name, pretrained, num_classes=self.data.num_classes,
                                        in_channels=self.data.in_channels)
        kw = {**(self.params.get("teacher_kwargs") or {}), **model_kwargs}
        train = self._train(epochs=self.params["teacher_epochs"], lr=self.params["teacher_lr"])
        self.teacher_result = get_teacher(self.data, name, model_kwargs=kw, pretrained=pretrained,
                                          checkpoint_dir=self.params.get("checkpoint_dir", "checkpoints"),
                                          store_dir=self.params.get("store_dir"), **train)
        return self.teacher_result

    def run(self, method, label: str | None = None, *, student: str | None = None, student_kwargs=None,
            pretrained: bool = False, seeds=None, **distill_and_train) -> SeedRuns:
        """run_seeds with this notebook's parameters; `label` names it in tables (default: the method).

        `method` is a name as make_distiller reads it ("kd+at"; "at:shifted": teacher block N -> student block
        N-1; "kd:ls": logit standardization) or a Term object defined in the notebook. Other keywords go to
        make_distiller or fit.
        """
        label = label or (method if isinstance(method, str) else method.name)
        train_keys = {k for k in distill_and_train if k in TRAIN_KEYS}
        train = self._train(**{k: distill_and_train.pop(k) for k in train_keys})
        student = student or self.params["student"]
        kw = self.params.get("student_kwargs") or {} if student_kwargs is None else student_kwargs
        teacher = self.teacher_result.model if self.teacher_result is not None else None
        if method != "baseline" and teacher is None:
            teacher = self.teacher().model
        runs = run_seeds(method, self.data, student=student, seeds=seeds if seeds is not None else self.params["seeds"],
                         teacher=teacher, label=label, student_kwargs=kw, pretrained=pretrained,
                         distill=distill_and_train, checkpoint_dir=self.params.get("checkpoint_dir", "checkpoints"),
                         store_dir=self.params.get("store_dir"), cache=self.params.get("cache", True), **train)
        runs.efficiency = model_size(runs.model)
        self._architecture[label] = (f"{student} {_hash(kw)}", runs.model)
        self.results[label] = runs
        return runs

    def pairs_table(self, method, student: str | None = None, **distill) -> pd.DataFrame:
        """Which student layer learns from which teacher layer, with both shapes and each pair's weight.

        Built exactly as run() builds it (same make_distiller call) on a few training images; runs nothing else.
        """
        teacher = (self.teacher_result or self.teacher()).model
        model = create_model(student or self.params["student"], self.data.num_classes, self.data.in_channels,
                             **(self.params.get("student_kwargs") or {}))
        distiller = make_distiller(copy.deepcopy(method) if not isinstance(method, str) else method, model, teacher,
                                   **distill)
        distiller.prepare(self.data.normalize(self.data.train.images[:4]))
        table = pd.DataFrame(distiller.pairs_table())
        if not table.empty:
            table["weight"] = table["weight"].map(lambda w: f"{w:g}")
            table = table.set_index("term")
        return table

    def sweep_kd(self, alphas, temperatures, seeds=None, epochs=None) -> pd.DataFrame:
        """Small α × T grid of KD runs, kept out of the main table. Returns VALIDATION accuracy as a T × α pivot:
        a choice of α and T made on this table must not peek at the test split."""
        rows = []
        for a in alphas or []:
            for t in temperatures or []:
                label = f"kd a={a} T={t}"
                r = self.run("kd", label, alpha=a, temperature=t, seeds=seeds, **({"epochs": epochs} if epochs else {}))
                self.results.pop(label)
                self._architecture.pop(label)
                rows.append({"alpha": a, "temperature": t, "val_acc": r.runs["val_acc"].mean(),
                             "test_acc": r.runs["test_acc"].mean(), "n": len(r.runs)})
        table = pd.DataFrame(rows)
        self.extra["sweep"] = table
        if table.empty:
            return table
        return table.pivot(index="temperature", columns="alpha", values="val_acc").round(4)

    def convergence(self, epochs: int, tolerance: float, seed: int | None = None) -> int:
        """How many epochs this data needs: the baseline over `epochs` at one seed (kept out of the tables), its
        validation curve plotted with the epoch from which it stays within `tolerance` of its best; returns it."""
        from . import plots

        seed = self.params["seeds"][0] if seed is None else seed
        if epochs == self.params["epochs"]:  # the baseline itself trains that long: its own curve, no other run
            history = (self.results["baseline"] if "baseline" in self.results else self.run("baseline")).histories[seed]
        else:
            label = CONVERGENCE_LABEL.format(epochs=epochs)
            history = self.run("baseline", label, epochs=epochs, seeds=[seed]).histories[seed]
            self.results.pop(label)
            self._architecture.pop(label)
        plateau = stats.plateau_epoch(history["val_acc"], tolerance)
        plots.convergence(history, plateau, tolerance, title=f"baseline, seed {seed}: validation accuracy")
        self.extra["convergence"] = {"epochs": epochs, "seed": seed, "tolerance": tolerance, "plateau_epoch": plateau,
                                     "val_acc": history["val_acc"].tolist()}
        return plateau

    def gains(self, pairs) -> pd.DataFrame:
        """Each (alone, distilled) pair of labels run here: test accuracy of both and the paired gain with its 95 %
        interval, Holm over these pairs (stats.paired_gains). Kept for the JSON (`gains`) and the conclusion."""
        runs = pd.concat([r.runs for r in self.results.values()], ignore_index=True)
        table = stats.paired_gains(runs, pairs)
        self.extra["gains"] = table
        return pd.DataFrame({
            "alone": table["alone"], "distilled": table["distilled"], "n": table["n_pairs"],
            "alone acc": table["alone_test_acc"].map("{:.4f}".format),
            "distilled acc": table["distilled_test_acc"].map("{:.4f}".format),
            "Δ acc [95 % CI]": [stats.fmt_gain(d, lo, hi) for d, lo, hi in
                                zip(table["delta"], table["ci_low"], table["ci_high"])],
            "p (Holm)": table["p_holm"].map(_fmt_p),
            "significant": table["significant"].map(lambda v: YES_NO.get(v, "–"))}
        ).set_index("distilled")

    def conclusion(self, baseline: str = "baseline"):
        """This run's closing paragraph, written from its own table (kdcore.conclusions), as Markdown; the text
        also goes into the results JSON (`conclusion`)."""
        from IPython.display import Markdown

        runs = pd.concat([r.runs for r in self.results.values()], ignore_index=True)
        t = self.teacher_result
        text = conclusions.conclude(summarize_runs(runs, baseline if baseline in self.results else None), baseline,
                                    (t.name, t.test_acc) if t is not None else None)
        if "gains" in self.extra and not self.extra["gains"].empty:
            text += " " + conclusions.conclude_pairs(self.extra["gains"])
        self.extra["conclusion"] = text
        return Markdown(text)

    def best_and_worst(self, labels) -> tuple[str, str]:
        """Labels of the runs with the highest and the lowest mean VALIDATION accuracy among `labels`."""
        acc = {lab: self.results[lab].runs["val_acc"].mean() for lab in labels}
        return max(acc, key=acc.get), min(acc, key=acc.get)

    def histories(self, *labels: str, seed: int | None = None) -> dict[str, pd.DataFrame]:
        """{label: history of one seed (default: the first)} for plotting, plus the teacher's when trained here."""
        out = {}
        if self.teacher_result is not None and not labels:
            out[f"teacher ({self.teacher_result.name})"] = self.teacher_result.history
        for lab in labels or self.results:
            r = self.results[lab]
            out[lab] = r.histories[seed if seed is not None else next(iter(r.histories))]
        return out

    def latencies(self) -> dict[str, dict]:
        """CPU latency (batch 1) of each distinct architecture run here, measured once per notebook with the models
        interleaved (median of repeats), so rows of the same architecture show the same number."""
        models = dict(self._architecture)
        if self.teacher_result is not None:
            models["teacher"] = (f"teacher {self.teacher_result.key}", self.teacher_result.model)
        todo = {key: model for key, model in models.values() if key not in self._latency}
        if todo and self.params.get("latency_min_run_time"):
            self._latency.update(latency_ms(todo, self.input_shape, min_run_time=self.params["latency_min_run_time"]))
        return {label: self._latency.get(key, {}) for label, (key, _) in models.items()}

    def summary(self, baseline: str = "baseline") -> pd.DataFrame:
        """This notebook's methods, formatted for reading: mean ± std (n) on test, mean validation accuracy, the
        paired gain over the baseline with its 95 % interval, significance, size, latency, time, reuse."""
        runs = pd.concat([r.runs for r in self.results.values()], ignore_index=True)
        s = summarize_runs(runs, baseline if baseline in self.results else None)
        latency = self.latencies()
        reused = runs.groupby("method", sort=False)["reused"].agg(lambda r: f"{int(r.sum())}/{len(r)}")
        return pd.DataFrame({
            "method": s["method"], "n": s["n"],
            "test acc": [stats.fmt_mean_std(m, sd, n) for m, sd, n in zip(s["test_acc_mean"], s["test_acc_std"], s["n"])],
            "macro-F1": [stats.fmt_mean_std(m, sd, n) for m, sd, n in zip(s["test_f1_mean"], s["test_f1_std"], s["n"])],
            "val acc": s["val_acc_mean"].map("{:.4f}".format),
            "Δ acc vs baseline [95 % CI]": [stats.fmt_gain(d, lo, hi) for d, lo, hi in
                                            zip(s["delta_acc"], s["delta_ci_low"], s["delta_ci_high"])],
            "p (Holm)": s["p_holm"].map(_fmt_p),
            "significant": s["significant"].map(lambda v: YES_NO.get(v, "–")),
            "params": [f"{self.results[m].efficiency['params']:,}" for m in s["method"]],
            "MB": [f"{self.results[m].efficiency['size_mb']:.3f}" for m in s["method"]],
            "latency ms": [_fmt_ms(latency.get(m, {}).get("latency_ms")) for m in s["method"]],
            "s/run": s["seconds_mean"].map("{:.1f}".format),
            "reused runs": [reused.get(m, "0/0") for m in s["method"]]}).set_index("method")

    def compare_models(self, models: dict[str, nn.Module], accuracy: dict[str, float] | None = None) -> pd.DataFrame:
        """Size MB, latency (measured together, interleaved) and (given) accuracy side by side, plus first/each ratios."""
        lat = latency_ms(models, self.input_shape, min_run_time=self.params.get("latency_min_run_time") or 0.01)
        rows = [{"model": name, "params": count_parameters(m, trainable_only=False), "size_mb": size_mb(m),
                 "latency_ms": lat[name]["latency_ms"], "test_acc": (accuracy or {}).get(name)}
                for name, m in models.items()]
        df = pd.DataFrame(rows)
        first = df.iloc[0]
        for k in ("params", "size_mb", "latency_ms"):
            df[f"{k} ratio (first/this)"] = (first[k] / df[k]).round(2)
        df.attrs["threads"] = next(iter(lat.values()))["threads"]
        return df

    def finish(self, baseline: str = "baseline", **extra) -> None:
        """Write results/<profile>/<notebook>.json with every run, the summary, teacher and run info."""
        t = self.teacher_result
        latency = self.latencies()
        teacher = None
        if t is not None:
            teacher = {"name": t.name, "test_acc": t.test_acc, "test_acc_tta": t.test_acc_tta, "test_f1": t.test_f1,
                       "trained_here": t.trained, "pretrained": t.pretrained, "seconds": t.seconds, "checkpoint": str(t.path),
                       "trained_with": t.trained_with,
                       **model_size(t.model), **latency.get("teacher", {})}
        runs = pd.concat([r.runs for r in self.results.values()], ignore_index=True)
        payload = {"runs": runs, "baseline": baseline if baseline in self.results else None, "teacher": teacher,
                   "efficiency": {k: {**r.efficiency, **latency.get(k, {})} for k, r in self.results.items()},
                   "run_info": {**run_info(self.params, self.data, self.notebook), "seconds": time.perf_counter() - self.started},
                   "params": {k: v for k, v in self.params.items()}, **self.extra, **extra}
        write_results(self.params["profile"], self.notebook, payload, self.params.get("results_dir", "results"))


# --------------------------------------------------------------------------- notebook set-up
def _shown_path(path) -> str:
    """A path as a reader of the page can use it: relative to the repository when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def setup(notebook: str, namespace: dict | None = None, **overrides) -> Context:
    """Resolve the parameters (profiles.notebook_params), load the data and print which run this is: commit, profile, its
    scaling for this notebook, the data, where outputs go, and every parameter with who set it.

    In a notebook: `ctx = setup("02_logits", globals())`; from Python: `setup("02_logits", profile="smoke")`.
    """
    params, set_by = _profiles.notebook_params(notebook, namespace, **overrides)
    profile = params["profile"]
    lines = _profiles.param_lines(params, set_by, _profiles.params_for(profile, notebook), _profiles.notebook_defaults(notebook),
                         profile)
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    root = None if params["dataset"] == "synthetic" else resolve_data_root(params["data_root"])
    data = load_dataset(params["dataset"], root, seed=0, image_size=params.get("image_size"),
                        train_limit=params.get("train_limit"), val_limit=params.get("val_limit"),
                        test_limit=params.get("test_limit"), synthetic=params.get("synthetic"))
    params.update(data_root=str(root) if root else None, results_dir=str(project_path(params["results_dir"])),
                  checkpoint_dir=str(project_path(params["checkpoint_dir"])),
                  store_dir=str(project_path(_profiles.store_for(profile) or Path(params["checkpoint_dir"]) / "store")))
    scaling = _profiles.scaling_for(profile, notebook)
    print(f"{notebook} · profile {profile} · commit {started_commit()} · {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"scaling ({profile}): {scaling}")
    print(f"data: {data.describe()}")
    results = Path(os.environ.get("KDCORE_PUBLISHED_DIR") or params["results_dir"])
    print(f"writes {_shown_path(results / profile / notebook)}.json; run store {_shown_path(params['store_dir'])}; "
          f"checkpoints in {_shown_path(params['checkpoint_dir'])}")
    print(f"parameters that differ from the notebook's (explicit: papermill -p, --param or edited here; profile "
          f"{profile}: profiles/{profile}.yaml):")
    print(lines)
    ctx = Context(notebook, params, data)
    ctx.extra["provenance"] = {"scaling": scaling, "set_by": {k: v for k, v in set_by.items() if v != "notebook"}}
    return ctx
