"""Shared logic of the notebooks: set-up, teacher reuse, multi-seed runs, efficiency, results JSON.

A notebook is parameters + a few calls into this module (and kdcore.plots):

    ctx = setup("02_logits", **parameters)          # profile defaults + overrides, data loaded
    teacher = ctx.teacher()                          # trained once, cached under checkpoints/teachers/<key>.pt
    base = ctx.run("baseline"); kd = ctx.run("kd", alpha=..., temperature=...)
    ctx.finish()                                     # results/<profile>/<notebook>.json (atomic)

Model selection uses the validation split (fit keeps the best-by-validation weights); every run is
evaluated on the test split once, at the end. Identical runs (same data, models, settings and seed)
are cached under checkpoints/runs/ so that e.g. the baseline student is trained once for all notebooks.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from . import profiles as _profiles
from . import stats
from .data import DataBundle, atomic_save, atomic_write_text, load_dataset
from .distill import make_distiller
from .errors import PretrainedUnavailableError
from .evaluate import classification_metrics, cpu_latency_ms, evaluate, size_mb
from .models import count_parameters, create_model
from .train import TrainConfig, fit, resolve_device, seed_everything

REPO_ROOT = Path(__file__).resolve().parents[1]
TEACHER_TRAININGS = 0  # how many teachers this process trained (tests check reuse with it)
TRAIN_KEYS = ("epochs", "batch_size", "lr", "optimizer", "pad", "augment", "weight_decay", "max_steps_per_epoch",
              "device", "progress", "schedule")


# --------------------------------------------------------------------------- small helpers
def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, pd.DataFrame):
        return _jsonable(obj.to_dict(orient="records"))
    return obj


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(_jsonable(obj), sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(data: DataBundle) -> str:
    """Identifies a dataset split by content (labels + a sample of pixels), independent of how it was loaded."""
    h = hashlib.sha1()
    h.update(f"{data.name}|{data.classes}|{len(data.train)}|{len(data.val)}|{len(data.test)}|{data.image_size}".encode())
    for s in (data.train, data.val, data.test):
        h.update(s.labels.numpy().tobytes())
        h.update(s.images[:64].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def resolve_data_root(root):
    """A relative data root is taken from the repository root when it exists there (notebooks run anywhere)."""
    if root is None:
        return None
    p = Path(root).expanduser()
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p


def train_overrides(**kw) -> dict:
    """Only the TrainConfig fields among kw (None means: TrainConfig's default)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in kw.items() if k in fields and v is not None}


def efficiency(model: nn.Module, input_shape, min_run_time: float | None = 0.2) -> dict:
    """params, size MB and CPU latency (batch 1, ms); latency is None when min_run_time is falsy."""
    out = {"params": count_parameters(model, trainable_only=False), "size_mb": size_mb(model), "latency_ms": None}
    if min_run_time:
        out["latency_ms"] = cpu_latency_ms(model, input_shape, min_run_time=min_run_time)["cpu_latency_ms"]
    return out


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


# --------------------------------------------------------------------------- teacher reuse
@dataclass
class TeacherResult:
    model: nn.Module
    name: str
    key: str
    path: Path
    trained: bool  # False when loaded from the cache
    test_acc: float
    test_f1: float
    history: pd.DataFrame
    seconds: float
    eval: dict
    pretrained: bool = False


def teacher_key(data: DataBundle, name: str, *, epochs: int, lr: float, batch_size: int, seed: int = 0,
                model_kwargs: dict | None = None, pretrained: bool = False, train: dict | None = None) -> str:
    cfg = dict(data=data_fingerprint(data), model=name, kwargs=model_kwargs or {}, epochs=epochs, lr=lr,
               batch_size=batch_size, seed=seed, pretrained=bool(pretrained),
               train={k: v for k, v in (train or {}).items() if k not in ("progress", "device")})
    return f"{data.name}-{name}-{_hash(cfg)}"


def get_teacher(data: DataBundle, name: str = "tiny_resnet", *, epochs: int = 10, lr: float = 0.05,
                batch_size: int = 128, seed: int = 0, model_kwargs: dict | None = None, pretrained: bool = False,
                checkpoint_dir: str | os.PathLike = "checkpoints", device: str = "auto", progress: bool = False,
                **train) -> TeacherResult:
    """Train the teacher once and cache it under <checkpoint_dir>/teachers/<key>.pt; later calls load it.

    The key hashes everything that changes the teacher (data content, model + kwargs, epochs, lr, batch size,
    seed, pretrained, other training settings), so a notebook run alone trains it and the others reuse it.
    """
    global TEACHER_TRAININGS
    train = train_overrides(**train)
    key = teacher_key(data, name, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, model_kwargs=model_kwargs,
                      pretrained=pretrained, train=train)
    path = Path(checkpoint_dir) / "teachers" / f"{key}.pt"
    model_kwargs = dict(model_kwargs or {})
    if path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = create_model(name, data.num_classes, data.in_channels, **model_kwargs)
        model.load_state_dict(ckpt["model"])
        trained, history, seconds = False, pd.DataFrame(ckpt["history"]), ckpt["seconds"]
        logits, labels = ckpt["test_logits"], ckpt["test_labels"]
        print(f"teacher {name}: loaded {path} (trained earlier in {seconds:.0f}s)")
    else:
        seed_everything(seed)
        model = create_model(name, data.num_classes, data.in_channels, pretrained=bool(pretrained), **model_kwargs)
        print(f"teacher {name}: training {epochs} epochs (no cached {path.name})")
        result = fit(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                     progress=progress, **train)
        TEACHER_TRAININGS += 1
        ev = evaluate(model, data, "test", device=device)
        logits, labels, history, seconds, trained = ev["logits"], ev["labels"], result.history, result.seconds, True
        atomic_save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history.to_dict("records"),
                     "seconds": seconds, "test_logits": logits, "test_labels": labels, "key": key, "name": name,
                     "model_kwargs": model_kwargs}, path)
    model.eval()
    ev = classification_metrics(labels, logits.argmax(1), data.classes)
    ev["logits"], ev["labels"] = logits, labels
    model.kd_teacher_key = key
    print(f"teacher {name}: test accuracy {ev['accuracy']:.4f}, macro-F1 {ev['f1_macro']:.4f}")
    return TeacherResult(model, name, key, path, trained, ev["accuracy"], ev["f1_macro"], history, seconds, ev,
                         bool(pretrained))


# --------------------------------------------------------------------------- multi-seed runs
@dataclass
class SeedRuns:
    label: str
    runs: pd.DataFrame  # one row per seed
    histories: dict[int, pd.DataFrame]  # seed -> per-epoch history
    model: nn.Module  # the first seed's student (best-by-validation weights)
    eval: dict  # the first seed's test evaluation (confusion, per-class, logits)
    efficiency: dict = field(default_factory=dict)


def run_seeds(method: str, data: DataBundle, *, student: str = "student_light", seeds=(0,), teacher: nn.Module | None = None,
              label: str | None = None, student_kwargs: dict | None = None, pretrained: bool = False,
              distill: dict | None = None, epochs: int = 5, lr: float = 0.05, batch_size: int = 128,
              device: str = "auto", progress: bool = False, checkpoint_dir: str | os.PathLike | None = None,
              **train) -> SeedRuns:
    """Train `method` once per seed (seed_everything(seed) before building the student), select on validation
    (fit does), evaluate on test once at the end. Returns one row per seed plus the histories.

    With `checkpoint_dir`, a finished run is cached under <checkpoint_dir>/runs/<key>.pt and reused by an
    identical later call (teacher identified by its cache key; runs with an uncached teacher are not cached).
    """
    label = label or method
    distill = dict(distill or {})
    student_kwargs = dict(student_kwargs or {})
    train = train_overrides(**train)
    uses_teacher = method.strip().lower() != "baseline"
    if not uses_teacher:
        teacher = None
    t_key = getattr(teacher, "kd_teacher_key", None) if teacher is not None else "none"
    rows, histories, first_model, first_eval = [], {}, None, None
    for seed in seeds:
        key_cfg = dict(data=data_fingerprint(data), method=method, student=student, kwargs=student_kwargs,
                       pretrained=bool(pretrained), distill=distill if uses_teacher else {}, teacher=t_key,
                       epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                       train={k: v for k, v in train.items() if k not in ("progress", "device")})
        cache = (Path(checkpoint_dir) / "runs" / f"{student}-{method.replace(':', '_')}-{_hash(key_cfg)}.pt"
                 if checkpoint_dir is not None and t_key is not None else None)
        seed_everything(seed)
        model = create_model(student, data.num_classes, data.in_channels, pretrained=bool(pretrained), **student_kwargs)
        if cache is not None and cache.exists():
            ckpt = torch.load(cache, map_location="cpu", weights_only=False)
            model.load_state_dict(ckpt["model"])
            row, history = ckpt["row"], pd.DataFrame(ckpt["history"])
            print(f"{label} seed {seed}: reused {cache.name}")
            ev = evaluate(model, data, "test", device=device) if first_eval is None else None
        else:
            kd = make_distiller(method, model, teacher, **distill) if uses_teacher else model
            result = fit(kd, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                         progress=progress, **train)
            ev = evaluate(model, data, "test", device=device)  # the test split, once, after selection on val
            history = result.history
            row = {"method": label, "seed": seed, "test_acc": ev["accuracy"], "test_f1": ev["f1_macro"],
                   "precision": ev["precision_macro"], "recall": ev["recall_macro"], "val_acc": result.best_val_acc,
                   "best_epoch": result.best_epoch, "seconds": result.seconds, "params": count_parameters(model),
                   "device": result.device}
            if cache is not None:
                atomic_save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "row": row,
                             "history": history.to_dict("records")}, cache)
        row = {**row, "method": label, "student": student}
        print(f"{label} seed {seed}: test_acc={row['test_acc']:.4f} test_f1={row['test_f1']:.4f} "
              f"(best val epoch {row['best_epoch']}, {row['seconds']:.0f}s)")
        rows.append(row)
        histories[seed] = history
        if first_model is None:
            first_model, first_eval = model.eval(), ev
    return SeedRuns(label, pd.DataFrame(rows), histories, first_model, first_eval)


# --------------------------------------------------------------------------- results
def summarize_runs(runs: pd.DataFrame, baseline: str | None = "baseline") -> pd.DataFrame:
    """Per method: n, mean/std of test acc/F1 and P/R, Δ acc vs baseline and whether it beats the seed spread."""
    summary = stats.summarize(runs, by="method", metrics=("test_acc", "test_f1", "precision", "recall", "val_acc",
                                                          "seconds"))
    if baseline is not None and baseline in set(runs["method"]):
        summary = stats.gain_vs_baseline(summary, baseline, "test_acc")
        f1 = stats.gain_vs_baseline(summary, baseline, "test_f1")
        summary["delta_f1"] = f1["delta"]
        if "student" in runs:  # a gain is only a KD gain against the same architecture trained alone
            student_of = runs.groupby("method", sort=False)["student"].first()
            other = summary["method"].map(student_of) != student_of.get(baseline)
            summary.loc[other, ["delta", "delta_f1"]] = float("nan")
            summary.loc[other, "clear_gain"] = False
    else:
        summary["delta"], summary["clear_gain"], summary["delta_f1"] = float("nan"), False, float("nan")
    return summary.rename(columns={"delta": "delta_acc"})


def run_info(params: dict | None = None, data: DataBundle | None = None) -> dict:
    params = params or {}
    dev = resolve_device(params.get("device", "auto"))
    info = {"timestamp": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                                  f" ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"),
            "torch": torch.__version__, "python": platform.python_version(), "profile": params.get("profile"),
            "scaling": _profiles.SCALING.get(params.get("profile"), "custom"),
            "epochs": params.get("epochs"), "teacher_epochs": params.get("teacher_epochs"), "seeds": params.get("seeds"),
            "limits": {k: params.get(k) for k in ("train_limit", "val_limit", "test_limit", "max_steps_per_epoch")}}
    if data is not None:
        info["dataset"] = {"name": data.name, "source": data.source, "train": len(data.train), "val": len(data.val),
                           "test": len(data.test), "image_size": list(data.image_size), "classes": len(data.classes)}
    return info


def write_results(profile: str, notebook: str, payload: dict, results_dir: str | os.PathLike = "results") -> Path:
    """Write results/<profile>/<notebook>.json atomically.

    payload: runs (DataFrame or records: method, seed, test_acc, test_f1, ...), baseline (method name),
    teacher (dict: name, test_acc, test_f1, params, size_mb, latency_ms, seconds), efficiency
    ({method: {params, size_mb, latency_ms}}), run_info (dict), and any extra keys (kept as they are).
    The JSON gets `metrics`: one entry per method with mean ± std (n), Δ vs baseline and clear_gain.
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
        m["delta_acc"], m["delta_f1"] = float(r["delta_acc"]), float(r["delta_f1"])
        m["clear_gain"] = bool(r["clear_gain"])
        m["is_baseline"] = r["method"] == baseline
        m["seconds_per_run"] = float(r["seconds_mean"])
        m.update({k: eff.get(r["method"], {}).get(k) for k in ("params", "size_mb", "latency_ms")})
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
                                          checkpoint_dir=self.params.get("checkpoint_dir", "checkpoints"), **train)
        return self.teacher_result

    def run(self, method: str, label: str | None = None, *, student: str | None = None, student_kwargs=None,
            pretrained: bool = False, seeds=None, **distill_and_train) -> SeedRuns:
        """run_seeds with this notebook's parameters; `label` names it in tables (default: the method).

        A method written "at:shifted" uses pairing="shifted" (teacher block N -> student block N-1).
        """
        label = label or method
        if ":" in method:
            method, pairing = method.split(":", 1)
            distill_and_train.setdefault("pairing", pairing)
        if "dkd" in method.split("+"):  # DKD starts ~10x the CE loss; ramp it in (mdistiller: 20 of 240 epochs)
            distill_and_train.setdefault("dkd_warmup", 2)
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
                         **train)
        runs.efficiency = efficiency(runs.model, self.input_shape, self.params.get("latency_min_run_time"))
        self.results[label] = runs
        return runs

    def sweep_kd(self, alphas, temperatures, seeds=None, epochs=None) -> pd.DataFrame:
        """Small α × T grid of KD runs (kept out of the main table); returns test accuracy as a T × α pivot."""
        rows = []
        for a in alphas or []:
            for t in temperatures or []:
                label = f"kd a={a} T={t}"
                r = self.run("kd", label, alpha=a, temperature=t, seeds=seeds, **({"epochs": epochs} if epochs else {}))
                self.results.pop(label)
                rows.append({"alpha": a, "temperature": t, "test_acc": r.runs["test_acc"].mean(),
                             "test_f1": r.runs["test_f1"].mean(), "n": len(r.runs)})
        table = pd.DataFrame(rows)
        self.extra["sweep"] = table
        if table.empty:
            return table
        return table.pivot(index="temperature", columns="alpha", values="test_acc")

    def best_and_worst(self, labels) -> tuple[str, str]:
        """Labels of the runs with the highest and the lowest mean test accuracy among `labels`."""
        acc = {lab: self.results[lab].runs["test_acc"].mean() for lab in labels}
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

    def summary(self, baseline: str = "baseline") -> pd.DataFrame:
        """Table of this notebook's methods: mean ± std (n), Δ vs baseline, clear gain, params, MB, latency."""
        runs = pd.concat([r.runs for r in self.results.values()], ignore_index=True)
        s = summarize_runs(runs, baseline if baseline in self.results else None)
        table = pd.DataFrame({
            "method": s["method"], "n": s["n"],
            "test acc": [stats.fmt_mean_std(m, sd, n) for m, sd, n in zip(s["test_acc_mean"], s["test_acc_std"], s["n"])],
            "macro-F1": [stats.fmt_mean_std(m, sd, n) for m, sd, n in zip(s["test_f1_mean"], s["test_f1_std"], s["n"])],
            "precision": s["precision_mean"].round(4), "recall": s["recall_mean"].round(4),
            "Δ acc": s["delta_acc"].round(4), "gain > seed spread": s["clear_gain"],
            "params": [self.results[m].efficiency.get("params") for m in s["method"]],
            "MB": [round(self.results[m].efficiency.get("size_mb"), 3) for m in s["method"]],
            "latency ms": [self.results[m].efficiency.get("latency_ms") for m in s["method"]],
            "s/run": s["seconds_mean"].round(1)})
        return table

    def compare_models(self, models: dict[str, nn.Module], accuracy: dict[str, float] | None = None) -> pd.DataFrame:
        """Size MB, latency and (given) accuracy of models side by side, plus ratios first / each."""
        rows = []
        for name, m in models.items():
            e = efficiency(m, self.input_shape, self.params.get("latency_min_run_time") or 0.01)
            rows.append({"model": name, "params": e["params"], "size_mb": e["size_mb"], "latency_ms": e["latency_ms"],
                         "test_acc": (accuracy or {}).get(name)})
        df = pd.DataFrame(rows)
        first = df.iloc[0]
        for k in ("params", "size_mb", "latency_ms"):
            df[f"{k} ratio (first/this)"] = (first[k] / df[k]).round(2)
        return df

    def finish(self, baseline: str = "baseline", **extra) -> Path:
        """Write results/<profile>/<notebook>.json with every run, the summary, teacher and run info."""
        t = self.teacher_result
        teacher = None
        if t is not None:
            e = efficiency(t.model, self.input_shape, self.params.get("latency_min_run_time"))
            teacher = {"name": t.name, "test_acc": t.test_acc, "test_f1": t.test_f1, "trained_here": t.trained,
                       "pretrained": t.pretrained, "seconds": t.seconds, "checkpoint": str(t.path), **e}
        runs = pd.concat([r.runs for r in self.results.values()], ignore_index=True)
        payload = {"runs": runs, "baseline": baseline if baseline in self.results else None, "teacher": teacher,
                   "efficiency": {k: r.efficiency for k, r in self.results.items()},
                   "run_info": {**run_info(self.params, self.data), "seconds": time.perf_counter() - self.started},
                   "params": {k: v for k, v in self.params.items()}, **self.extra, **extra}
        return write_results(self.params["profile"], self.notebook, payload, self.params.get("results_dir", "results"))


def setup(notebook: str, profile: str | None = None, **params) -> Context:
    """Resolve the parameters (profile defaults, then every non-None argument), load the data, print both."""
    profile = profile or _profiles.default_profile()
    merged = _profiles.params_for(profile, notebook)
    merged.update({k: v for k, v in params.items() if v is not None})
    merged["profile"] = profile
    if merged.get("threads"):
        torch.set_num_threads(int(merged["threads"]))
    root = resolve_data_root(merged.get("data_root"))
    if merged["dataset"] == "synthetic":
        root = None
    data = load_dataset(merged["dataset"], root, seed=0, image_size=merged.get("image_size"),
                        train_limit=merged.get("train_limit"), val_limit=merged.get("val_limit"),
                        test_limit=merged.get("test_limit"), synthetic=merged.get("synthetic"))
    print(f"{notebook} | profile {profile}: {_profiles.SCALING.get(profile, '')}")
    print(data.describe())
    print("parameters:", json.dumps(_jsonable({k: v for k, v in merged.items()}), default=str))
    return Context(notebook, merged, data)
