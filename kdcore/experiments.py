"""Shared logic of the notebooks: set-up, teacher reuse, multi-seed runs, efficiency, results JSON.

A notebook is parameters + a few calls into this module (and kdcore.plots):

    ctx = setup("02_logits", globals())             # notebook defaults, the profile's values, -p overrides; data
    teacher = ctx.teacher()                          # trained once, cached under checkpoints/teachers/<key>.pt
    base = ctx.run("baseline"); kd = ctx.run("kd", alpha=..., temperature=...)
    ctx.finish()                                     # results/<profile>/<notebook>.json (atomic)

Model selection uses the validation split (fit keeps the best-by-validation weights); every run is
evaluated on the test split once, at the end. Identical runs (same data, models, settings and seed)
are cached under checkpoints/runs/ so that e.g. the baseline student is trained once for all notebooks.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import datetime as _dt
import functools
import hashlib
import inspect
import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from . import airbench
from . import conclusions, pending, plan
from . import profiles as _profiles
from . import stats
from .data import DataBundle, atomic_save, atomic_write_text, default_root, load_dataset
from .distill import make_distiller
from .errors import ConfigError, PretrainedUnavailableError, unknown_name
from .evaluate import classification_metrics, evaluate, latency_ms, size_mb
from .models import count_parameters, create_model
from .plan import planning
from .store import config_hash as _hash, jsonable as _jsonable
from .store import STUDENT_WEIGHTS_MB, TEACHER_WEIGHTS_MB, RunStore, small_weights, store_key, weights_hash
from .runtime import cpu_features, resolve_device, seed_everything
from .train import TrainConfig, fit

REPO_ROOT = _profiles.REPO_ROOT  # relative paths in parameters are taken from here, wherever the kernel runs
TEACHER_TRAININGS = 0  # how many teachers this process trained (tests check reuse with it)
TRAIN_KEYS = ("epochs", "batch_size", "lr", "optimizer", "pad", "augment", "weight_decay", "max_steps_per_epoch",
              "device", "progress", "schedule", "teacher_cache", "precision")


# --------------------------------------------------------------------------- small helpers
def data_fingerprint(data: DataBundle) -> str:
    """Identifies a dataset split by content (labels + a sample of pixels), independent of how it was loaded."""
    h = hashlib.sha1()
    h.update(f"{data.name}|{data.classes}|{len(data.train)}|{len(data.val)}|{len(data.test)}|{data.image_size}".encode())
    for s in (data.train, data.val, data.test):
        h.update(s.labels.numpy().tobytes())
        h.update(s.images[:64].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def project_path(path: str | os.PathLike) -> Path:
    """A relative path is taken from the repository root, not the working directory: Jupyter starts kernels in
    notebooks/, papermill wherever it is called, and all of them must share results/ and checkpoints/."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(os.path.normpath(REPO_ROOT / p))


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: `root` when given, else $KDCORE_DATA, else ../shared/data beside the repository."""
    return project_path(root) if root else default_root()


def train_overrides(**kw) -> dict:
    """Only the TrainConfig fields among kw (None means: TrainConfig's default)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in kw.items() if k in fields and v is not None}


def model_size(model: nn.Module) -> dict:
    """Parameters (all, frozen included) and size in MB; latency is measured per notebook (Context.latencies)."""
    return {"params": count_parameters(model, trainable_only=False), "size_mb": size_mb(model)}


def show_code(*objects) -> None:
    """Display the source of each object (a loss term, its loss function, the training step) in the notebook,
    so a reader sees the exact code a method runs, not a paraphrase of it."""
    from IPython.display import Code, display

    for obj in objects:
        display(Code(inspect.getsource(obj), language="python"))


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
    test_acc_tta: float | None = None  # airbench only: with its test-time augmentation (KD uses plain logits)
    trained_with: dict = field(default_factory=dict)  # device, precision, channels_last, threads ({}: older file)


def teacher_key(data: DataBundle, name: str, *, epochs: int, lr: float, batch_size: int, seed: int = 0,
                model_kwargs: dict | None = None, pretrained: bool = False, train: dict | None = None) -> str:
    """The teacher's store key: what it is trained on and how (store.RECIPE_VERSION stands for the code)."""
    cfg = dict(data=data_fingerprint(data), model=name, kwargs=model_kwargs or {}, epochs=epochs, lr=lr,
               batch_size=batch_size, seed=seed, pretrained=bool(pretrained),
               train={k: v for k, v in (train or {}).items() if k not in ("progress", "device", "teacher_cache")})
    return store_key(f"{data.name}-{name}", cfg)


def _train_teacher(model: nn.Module, data: DataBundle, name: str, partial: Path, *, epochs, lr, batch_size, seed,
                   device, progress, train: dict) -> tuple[pd.DataFrame, float, float | None, dict]:
    """(history, seconds, TTA test accuracy or None, how it trained). `airbench` trains with its own recipe
    (its lr and batch size are the recipe's; an interrupted run resumes from `partial`), other teachers with fit."""
    if name == "airbench":
        batch = min(airbench.BATCH_SIZE, len(data.train))  # the recipe's batch, unless the split is smaller
        run = airbench.train(model, data, epochs=epochs, batch_size=batch, seed=seed, device=device,
                             precision=train.get("precision", "auto"), progress=True,  # one line per epoch
                             checkpoint=partial)
        trained_with = {k: run[k] for k in ("device", "precision", "channels_last", "threads", "resumed_from")}
        return pd.DataFrame(run["history"]), run["train_seconds"], run["test_acc_tta"], trained_with
    result = fit(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                 progress=progress, **train)
    trained_with = {"device": result.device, "precision": result.precision,
                    "channels_last": result.channels_last.get("student", False), "threads": torch.get_num_threads()}
    return result.history, result.seconds, None, trained_with


def _probe_teacher(model: nn.Module, data: DataBundle, name: str, partial: Path, *, epochs, lr, batch_size, seed,
                   device, progress, train: dict) -> tuple[pd.DataFrame, float, float | None, dict]:
    """Plan mode: train a few steps and project the teacher's seconds (see kdcore.plan); returns what
    _train_teacher does, with the projection as its seconds."""
    if name != "airbench":
        probe, result = plan.probe_fit(fit, model, data, f"teacher|{name}|{_hash([lr, batch_size, train])}",
                                       epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device, **train)
        return result.history, plan.project(probe, epochs), None, {"device": result.device, "probe": True}
    batch = min(airbench.BATCH_SIZE, len(data.train))
    fraction = plan.PROBE_STEPS[1] * batch / len(data.train)
    run = airbench.train(model, data, epochs=fraction, batch_size=batch, seed=seed, device=device,
                         precision=train.get("precision", "auto"), progress=False)
    seconds = run["train_seconds"] / fraction * epochs + (run["seconds"] - run["train_seconds"])
    return pd.DataFrame(run["history"]), seconds, run["test_acc_tta"], {"device": run["device"], "probe": True}


def _store_teacher(store: RunStore, key: str, model: nn.Module, local: Path, ev: dict, data: DataBundle,
                   **record) -> None:
    """Into the store, with its weights when they are small enough for git; larger weights stay in `local`."""
    weights = small_weights(model, TEACHER_WEIGHTS_MB)
    if weights is None:
        atomic_save({k: v.cpu() for k, v in model.state_dict().items()}, local)
    record.update(history=record["history"].to_dict("records"), test_acc=ev["accuracy"], weights=weights_hash(model),
                  weights_in_store=weights is not None, **provenance(data))
    store.save("teachers", key, record, {"test_logits": ev["logits"], "test_labels": ev["labels"],
                                         **({"model": weights} if weights is not None else {})})


def get_teacher(data: DataBundle, name: str = "tiny_resnet", *, epochs: int = 10, lr: float = 0.05,
                batch_size: int = 128, seed: int = 0, model_kwargs: dict | None = None, pretrained: bool = False,
                checkpoint_dir: str | os.PathLike = "checkpoints", store_dir: str | os.PathLike | None = None,
                device: str = "auto", progress: bool = False, **train) -> TeacherResult:
    """Train the teacher once and keep it in the run store (<store_dir>, default <checkpoint_dir>/store); later
    calls, in any notebook or on a fresh clone of a committed store, load it.

    The key (teacher_key) covers the data content, model + kwargs, epochs, lr, batch size, seed, pretrained and
    the other training settings. Weights over store.TEACHER_WEIGHTS_MB are kept beside the store in
    <checkpoint_dir>/teachers/ instead, so only small teachers enter git.
    """
    global TEACHER_TRAININGS
    train = train_overrides(**train)
    key = teacher_key(data, name, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, model_kwargs=model_kwargs,
                      pretrained=pretrained, train=train)
    store = RunStore(store_dir or Path(checkpoint_dir) / "store")
    local = Path(checkpoint_dir) / "teachers" / f"{key}.pt"  # large weights, and the per-epoch state until done
    model_kwargs = dict(model_kwargs or {})
    entry = store.load("teachers", key)
    if entry is not None and ("model" in entry[1] or local.exists()):
        record, tensors = entry
        model = create_model(name, data.num_classes, data.in_channels, **model_kwargs)
        model.load_state_dict(tensors["model"] if "model" in tensors else
                              torch.load(local, map_location="cpu", weights_only=True))
        trained, history, seconds, tta = False, pd.DataFrame(record["history"]), record["seconds"], record["test_acc_tta"]
        logits, labels, trained_with = tensors["test_logits"], tensors["test_labels"], record["trained_with"]
        print(f"teacher {name}: loaded {store.path('teachers', key)} (trained in {seconds:.0f}s at {record['commit']})")
    else:
        _require_training(f"teacher {name}", key)
        seed_everything(seed)
        model = create_model(name, data.num_classes, data.in_channels, pretrained=bool(pretrained), **model_kwargs)
        print(f"teacher {name}: training {epochs} epochs (not in the store: {key})")
        partial = local.with_name(f"{key}.partial.pt")
        teach = _probe_teacher if planning() else _train_teacher  # kdcore report --plan: time it, store nothing
        history, seconds, tta, trained_with = teach(model, data, name, partial, epochs=epochs, lr=lr,
                                                    batch_size=batch_size, seed=seed, device=device,
                                                    progress=progress, train=train)
        TEACHER_TRAININGS += 1
        ev = evaluate(model, data, "test", device=device)
        logits, labels, trained = ev["logits"], ev["labels"], True
        if not planning():
            _store_teacher(store, key, model, local, ev, data, name=name, model_kwargs=model_kwargs, history=history,
                           seconds=seconds, test_acc_tta=tta, trained_with=trained_with)
            partial.unlink(missing_ok=True)
    if planning():
        plan.record({"kind": "teacher", "label": name, "key": key, "stored": not trained,
                     "seconds": seconds if trained else 0.0})
    model.eval()
    ev = classification_metrics(labels, logits.argmax(1), data.classes)
    ev["logits"], ev["labels"] = logits, labels
    model.kd_teacher_key, model.kd_teacher_hash = key, weights_hash(model)
    with_tta = f" (with TTA {tta:.4f}; KD uses the plain logits)" if tta is not None else ""
    print(f"teacher {name}: test accuracy {ev['accuracy']:.4f}{with_tta}, macro-F1 {ev['f1_macro']:.4f}")
    return TeacherResult(model, name, key, store.path("teachers", key), trained, ev["accuracy"], ev["f1_macro"],
                         history, seconds, ev, bool(pretrained), tta, trained_with)


# --------------------------------------------------------------------------- multi-seed runs
@dataclass
class SeedRuns:
    label: str
    runs: pd.DataFrame  # one row per seed
    histories: dict[int, pd.DataFrame]  # seed -> per-epoch history
    model: nn.Module  # the first seed's student (best-by-validation weights)
    eval: dict  # the first seed's test evaluation (confusion, per-class, logits)
    efficiency: dict = field(default_factory=dict)


def run_key(method: str, data: DataBundle, *, student: str, student_kwargs: dict, pretrained: bool, distill: dict,
            teacher: nn.Module | None, epochs, lr, batch_size, seed: int, train: dict, label: str) -> str:
    """A run's store key: data, student, method and its options, the teacher's weights, schedule and seed."""
    uses_teacher = teacher is not None
    cfg = dict(data=data_fingerprint(data), method=method, student=student, kwargs=student_kwargs,
               pretrained=bool(pretrained), distill=distill if uses_teacher else {},
               teacher=(getattr(teacher, "kd_teacher_hash", None) or weights_hash(teacher)) if uses_teacher else "none",
               epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
               train={k: v for k, v in train.items() if k not in ("progress", "device")
                      and (uses_teacher or k != "teacher_cache")})  # no teacher: its cache is moot
    return store_key(f"{data.name}-{student}-{label}", cfg)


def _stored_run(entry: tuple[dict, dict], model: nn.Module, data: DataBundle, device: str, evaluate_it: bool):
    """(row, history, test evaluation or None) of a stored run; `model` gets its weights when the store has them."""
    record, tensors = entry
    if "model" in tensors:
        model.load_state_dict(tensors["model"])
        ev = evaluate(model, data, "test", device=device) if evaluate_it else None
    else:  # a student too large for git: its predictions were kept instead (the model stays as built)
        labels, logits = tensors["test_labels"], tensors["test_logits"].float()
        ev = {**classification_metrics(labels, logits.argmax(1), data.classes), "logits": logits, "labels": labels}
    return record["row"], pd.DataFrame(record["history"]), ev


def _store_run(store: RunStore, key: str, model: nn.Module, row: dict, history: pd.DataFrame, ev: dict,
               data: DataBundle, cfg: dict) -> None:
    weights = small_weights(model, STUDENT_WEIGHTS_MB)
    tensors = ({"model": weights} if weights is not None else
               {"test_logits": ev["logits"].half(), "test_labels": ev["labels"]})
    store.save("runs", key, {"row": row, "history": history.to_dict("records"), "config": cfg, **provenance(data)},
               tensors)


def _require_training(what: str, key: str) -> None:
    """With KDCORE_STORE_ONLY=1 (kdcore report --from-store) a missing entry is an error, never a silent training."""
    if os.environ.get("KDCORE_STORE_ONLY") == "1":
        raise ConfigError(f"{what} is not in the run store ({key}) and --from-store forbids training it; run the "
                          f"report without --from-store to train it, or check that the store was committed.")


def _result_row(result, ev: dict, model: nn.Module, label: str, seed: int) -> dict:
    """A run's row: test metrics (once, after selection on val), its best epoch, time and how it trained."""
    before = result.history["seconds"].iloc[:result.resumed_from or 0].sum()  # epochs of earlier processes
    return {"method": label, "seed": seed, "test_acc": ev["accuracy"], "test_f1": ev["f1_macro"],
            "precision": ev["precision_macro"], "recall": ev["recall_macro"], "val_acc": result.best_val_acc,
            "best_epoch": result.best_epoch, "seconds": result.seconds + float(before),
            "resumed_from": result.resumed_from, "params": count_parameters(model), "device": result.device,
            "compute_dtype": result.precision,
            "nhwc": "+".join(k for k, on in result.channels_last.items() if on) or "none"}


def _finish_run(store: RunStore | None, key: str | None, model: nn.Module, data: DataBundle, label: str, seed: int,
                device: str, stored_as: dict, partial: Path | None, result) -> dict:
    """After a run trained (alone or in a group): its one test evaluation, and its store entry when storable."""
    ev = evaluate(model, data, "test", device=device)  # the test split, once, after selection on val
    if store is not None:
        _store_run(store, key, model, _result_row(result, ev, model, label, seed), result.history, ev, data, stored_as)
        shutil.rmtree(partial, ignore_errors=True)
    return ev


def _probe_run(kd, data: DataBundle, fit_kw: dict, *, label: str, key: str | None, teacher: nn.Module | None,
               probe_key: str):
    """Plan mode: time this run's real step (plan.probe_fit), record its projection; the probe stands in for it."""
    probe, result = plan.probe_fit(fit, kd, data, probe_key, **{**fit_kw, "teacher_cache": False})
    forward = (plan.teacher_forward_seconds(teacher, data, fit_kw["batch_size"], bf16=result.precision == "bf16",
                                            channels_last=bool(result.channels_last.get("teacher")))
               if teacher is not None else None)
    steps = fit_kw["epochs"] * probe["steps_per_epoch"]
    group = _hash({"teacher": weights_hash(teacher) if teacher is not None else None, "data": data_fingerprint(data),
                   **{k: fit_kw.get(k) for k in ("seed", "batch_size", "epochs", "augment", "pad", "max_steps_per_epoch")}})
    plan.record({"kind": "run", "label": label, "seed": fit_kw["seed"], "key": key, "stored": False,
                 "seconds": plan.project(probe, fit_kw["epochs"]), "steps": steps, "teacher_forward_s": forward,
                 "group": group, "step_s": probe["step"], "fixed_s": probe["fixed"]})
    return result


def run_seeds(method, data: DataBundle, *, student: str = "student_light", seeds=(0,), teacher: nn.Module | None = None,
              label: str | None = None, student_kwargs: dict | None = None, pretrained: bool = False,
              distill: dict | None = None, epochs: int = 5, lr: float = 0.05, batch_size: int = 128,
              device: str = "auto", progress: bool = False, checkpoint_dir: str | os.PathLike | None = None,
              store_dir: str | os.PathLike | None = None, cache: bool = True, **train) -> SeedRuns:
    """Train `method` once per seed (seed_everything(seed) before building the student), select on validation
    (fit does), evaluate on test once at the end. Returns one row per seed plus the histories.

    `method` is a name such as "kd+at", or a Term built in a notebook (a fresh copy is used for every seed).
    With `checkpoint_dir` and `cache`, a finished run goes into the run store (<store_dir>, default
    <checkpoint_dir>/store; see kdcore.store) and an identical later call reuses it. Until it finishes, its
    epochs are checkpointed in <checkpoint_dir>/runs/<key>.partial/, so an interrupted run (Ctrl-C, a killed
    kernel, a deadline) resumes from its last epoch when the same call runs again. Runs of a Term defined
    outside kdcore are never stored (their code is unknown to the key).
    With `checkpoint_dir` and `teacher_cache`, the teacher's logits per view are also kept under
    <checkpoint_dir>/logit-cache, so logit methods in other notebooks (processes) skip the teacher as well.
    """
    custom = not isinstance(method, str)
    label = label or (method.name if custom else method)
    distill = dict(distill or {})
    student_kwargs = dict(student_kwargs or {})
    train = train_overrides(**train)
    uses_teacher = custom or method.strip().lower() != "baseline"
    if not uses_teacher:
        teacher = None
    storable = cache and checkpoint_dir is not None and not custom
    store = RunStore(store_dir or Path(checkpoint_dir) / "store") if storable else None
    rows, histories, first_model, first_eval = [], {}, None, None
    for seed in seeds:
        key = run_key(method, data, student=student, student_kwargs=student_kwargs, pretrained=pretrained,
                      distill=distill, teacher=teacher, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      train=train, label=label) if storable else None
        seed_everything(seed)
        model = create_model(student, data.num_classes, data.in_channels, pretrained=bool(pretrained), **student_kwargs)
        entry = store.load("runs", key) if store is not None else None
        reused = entry is not None
        if reused:
            row, history, ev = _stored_run(entry, model, data, device, evaluate_it=first_eval is None)
            print(f"{label} seed {seed}: from the store ({key})")
            if planning():
                plan.record({"kind": "run", "label": label, "seed": seed, "key": key, "stored": True, "seconds": 0.0})
        else:
            if key is not None:
                _require_training(f"{label} seed {seed}", key)
            kd = (make_distiller(copy.deepcopy(method) if custom else method, model, teacher, **distill)
                  if uses_teacher else model)
            fit_kw = dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device, progress=progress,
                          **train)
            if planning():  # kdcore report --plan: time the step, train nothing, store nothing
                result = _probe_run(kd, data, fit_kw, label=label, key=key, teacher=teacher if uses_teacher else None,
                                    probe_key=f"{label}|{student}|{_hash([student_kwargs, distill, {**fit_kw, 'seed': None}])}")
            else:
                on_disk = ({"teacher_cache_dir": str(Path(checkpoint_dir) / "logit-cache")}
                           if train.get("teacher_cache") and checkpoint_dir is not None else {})  # other notebooks
                partial = Path(checkpoint_dir) / "runs" / f"{key}.partial" if key is not None else None  # resumes here
                stored_as = {"method": method, "label": label, "student": student, "student_kwargs": student_kwargs,
                             "distill": distill, "train": train, "teacher": getattr(teacher, "kd_teacher_key", None),
                             **{k: fit_kw[k] for k in ("epochs", "lr", "batch_size", "seed")}}
                finish = functools.partial(_finish_run, store, key, model, data, label, seed, device, stored_as, partial)
                if pending.collecting() and store is not None:  # kdcore.cotrain: trained later, in a group
                    pending.add(pending.PendingRun(label, key, kd, data, {**fit_kw, **on_disk}, partial,
                                                   data_fingerprint(data), finish))
                    first_model = first_model or model
                    continue
                result = fit(kd, data, out_dir=partial, **fit_kw, **on_disk)
            ev = finish(result) if not planning() else evaluate(model, data, "test", device=device)
            row, history = _result_row(result, ev, model, label, seed), result.history
        row = {**row, "method": label, "student": student, "reused": reused}
        print(f"{label} seed {seed}: test_acc={row['test_acc']:.4f} test_f1={row['test_f1']:.4f} "
              f"(best val epoch {row['best_epoch']}, {row['seconds']:.0f}s)")
        rows.append(row)
        histories[seed] = history
        if first_model is None:
            first_model, first_eval = model.eval(), ev
    return SeedRuns(label, pd.DataFrame(rows), histories, first_model, first_eval)


# --------------------------------------------------------------------------- results
def summarize_runs(runs: pd.DataFrame, baseline: str | None = "baseline") -> pd.DataFrame:
    """Per method: n, mean/std of test acc/F1, P/R and val acc, and the paired gain over the baseline student.

    The gain is paired over the seeds both ran (stats.paired_gain): delta_acc with its 95 % interval
    (delta_ci_low, delta_ci_high), its paired t-test p_value, and delta_f1. `significant_raw`: the row's own
    interval excludes 0; `significant`: its Holm-adjusted p-value over the table's rows (p_holm) is below 0.05,
    so a table of many methods keeps a 5 % chance of any false "significant". It is only a
    KD gain against the same student architecture trained alone; other rows get NaN / None.
    """
    summary = stats.summarize(runs, by="method", metrics=("test_acc", "test_f1", "precision", "recall", "val_acc",
                                                          "seconds"))
    student_of = runs.groupby("method", sort=False)["student"].first() if "student" in runs else None
    cols = {k: [] for k in ("delta_acc", "delta_ci_low", "delta_ci_high", "significant", "n_pairs", "delta_f1",
                            "p_value")}
    for method in summary["method"]:
        comparable = (baseline is not None and baseline in set(runs["method"]) and method != baseline and
                      (student_of is None or student_of[method] == student_of[baseline]))
        acc = stats.paired_gain(runs, method, baseline, "test_acc") if comparable else None
        f1 = stats.paired_gain(runs, method, baseline, "test_f1") if comparable else None
        is_base = method == baseline
        cols["delta_acc"].append(acc["delta"] if acc else 0.0 if is_base else float("nan"))
        cols["delta_ci_low"].append(acc["ci_low"] if acc else float("nan"))
        cols["delta_ci_high"].append(acc["ci_high"] if acc else float("nan"))
        cols["significant"].append(acc["significant"] if acc else None)
        cols["p_value"].append(acc["p_value"] if acc else float("nan"))
        cols["n_pairs"].append(acc["n"] if acc else 0)
        cols["delta_f1"].append(f1["delta"] if f1 else 0.0 if is_base else float("nan"))
    cols["significant_raw"] = cols.pop("significant")  # this row's interval alone excludes 0
    cols["p_holm"] = stats.holm(cols["p_value"])  # over this board's rows: family-wise error 5 %
    cols["significant"] = stats.holm_significant(cols["p_value"])
    for k, v in cols.items():
        summary[k] = pd.Series(v, index=summary.index, dtype=object if k.startswith("significant") else None)
    return summary


def git_commit() -> str:
    """Short hash of the checkout the code runs from, "+dirty" when tracked files differ from it, "unknown" outside
    git. $KDCORE_COMMIT, when set, wins: a copied tree (e.g. on a GPU machine without network) may carry no .git or a stale
    one. --no-optional-locks: never take the index lock from under a git command running beside us."""
    if os.environ.get("KDCORE_COMMIT"):
        return os.environ["KDCORE_COMMIT"]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "unknown" if head.returncode else head.stdout.strip() + ("+dirty" if dirty else "")


def run_info(params: dict | None = None, data: DataBundle | None = None, notebook: str | None = None) -> dict:
    params = params or {}
    dev = resolve_device(params.get("device", "auto"))
    info = {"timestamp": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                                  f" ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"),
            "cpu": cpu_features(), "commit": git_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "profile": params.get("profile"),
            "scaling": (_profiles.scaling_for(params["profile"], notebook) if notebook and params.get("profile") in
                        _profiles.PROFILES else _profiles.SCALING.get(params.get("profile"), "custom")),
            "epochs": params.get("epochs"), "teacher_epochs": params.get("teacher_epochs"), "seeds": params.get("seeds"),
            "limits": {k: params.get(k) for k in ("train_limit", "val_limit", "test_limit", "max_steps_per_epoch")}}
    if data is not None:
        info["dataset"] = {"name": data.name, "source": data.source, "train": len(data.train), "val": len(data.val),
                           "test": len(data.test), "image_size": list(data.image_size), "classes": len(data.classes)}
    return info


def provenance(data: DataBundle | None = None) -> dict:
    """Where and how a store entry was made: commit, time, device, CPU, torch, and the data it saw."""
    info = {k: v for k, v in run_info().items() if k in ("timestamp", "device", "cpu", "commit", "torch")}
    if data is not None:
        info["data"] = {"name": data.name, "source": data.source, "fingerprint": data_fingerprint(data),
                        "splits": [len(data.train), len(data.val), len(data.test)], "image_size": list(data.image_size)}
    return info


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

    def conclusion(self, baseline: str = "baseline"):
        """This run's closing paragraph, written from its own table (kdcore.conclusions), as Markdown; the text
        also goes into the results JSON (`conclusion`)."""
        from IPython.display import Markdown

        runs = pd.concat([r.runs for r in self.results.values()], ignore_index=True)
        t = self.teacher_result
        text = conclusions.conclude(summarize_runs(runs, baseline if baseline in self.results else None), baseline,
                                    (t.name, t.test_acc) if t is not None else None)
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
        yes_no = {True: "yes", False: "no"}
        return pd.DataFrame({
            "method": s["method"], "n": s["n"],
            "test acc": [stats.fmt_mean_std(m, sd, n) for m, sd, n in zip(s["test_acc_mean"], s["test_acc_std"], s["n"])],
            "macro-F1": [stats.fmt_mean_std(m, sd, n) for m, sd, n in zip(s["test_f1_mean"], s["test_f1_std"], s["n"])],
            "val acc": s["val_acc_mean"].map("{:.4f}".format),
            "Δ acc vs baseline [95 % CI]": [stats.fmt_gain(d, lo, hi) for d, lo, hi in
                                            zip(s["delta_acc"], s["delta_ci_low"], s["delta_ci_high"])],
            "p (Holm)": s["p_holm"].map(lambda p: "–" if p != p else f"{p:.3f}"),
            "significant": s["significant"].map(lambda v: yes_no.get(v, "–")),
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
def _injected_by_papermill(namespace: dict) -> set[str]:
    """Names passed with papermill -p: it adds a cell starting "# Parameters", which IPython's input history keeps."""
    cells = [source for source in namespace.get("In", []) if source.startswith("# Parameters\n")]
    return {node.targets[0].id for node in ast.parse(cells[-1]).body} if cells else set()


def notebook_params(notebook: str, namespace: dict | None = None, **overrides) -> tuple[dict, dict]:
    """The parameters of one notebook run, and who set each: "notebook", "profile <name>" or "explicit".

    The profile named by `profile` is loaded over the notebook's defaults (profiles.params_for). Explicit values
    win over both: names papermill injected (-p), values in `namespace` (the notebook's globals()) that differ
    from the notebook's saved defaults (edited in Jupyter), and `overrides`.
    """
    defaults = _profiles.notebook_defaults(notebook)
    namespace = namespace or {}
    injected = _injected_by_papermill(namespace)
    unknown = sorted((injected | set(overrides)) - set(defaults))
    if unknown:
        raise unknown_name("parameter", unknown[0], defaults)
    explicit = {k: namespace[k] for k in defaults if k in namespace and (k in injected or namespace[k] != defaults[k])}
    explicit.update(overrides)
    profile = explicit.get("profile", defaults["profile"])
    from_profile = _profiles.params_for(profile, notebook)
    params = {**from_profile, **explicit}
    set_by = {k: "explicit" if v != from_profile[k] or (k == "profile" and k in explicit) else
              f"profile {profile}" if v != defaults[k] else "notebook" for k, v in params.items()}
    return params, set_by


def _shown_path(path) -> str:
    """A path as a reader of the page can use it: relative to the repository when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _param_lines(params: dict, set_by: dict, from_profile: dict, defaults: dict, profile: str) -> str:
    """`name = value  # who set it, and the values it replaced`, explicit first: exact, and pastes into a cell."""
    rows = []
    for kind in ("explicit", f"profile {profile}"):
        for k, v in params.items():
            if set_by[k] != kind or (k == "results_dir" and os.environ.get("KDCORE_PUBLISHED_DIR")):
                continue  # the report's stage folder is no parameter a reader set
            note = [kind]
            if kind == "explicit" and from_profile[k] not in (v, defaults[k]):
                note.append(f"profile {profile}: {from_profile[k]!r}")
            if defaults[k] != v:
                note.append(f"notebook: {defaults[k]!r}")
            rows.append((f"{k} = {v!r}", "; ".join(note)))
    width = min(48, max((len(code) for code, _ in rows), default=0))
    at_defaults = sum(kind == "notebook" for kind in set_by.values())
    return "\n".join([f"{code:<{width}}  # {note}" for code, note in rows] +
                     [f"# and {at_defaults} parameters at the notebook's defaults (its parameters cell)"])


def setup(notebook: str, namespace: dict | None = None, **overrides) -> Context:
    """Resolve the parameters (notebook_params), load the data and print which run this is: commit, profile, its
    scaling for this notebook, the data, where outputs go, and every parameter with who set it.

    In a notebook: `ctx = setup("02_logits", globals())`; from Python: `setup("02_logits", profile="smoke")`.
    """
    params, set_by = notebook_params(notebook, namespace, **overrides)
    profile = params["profile"]
    lines = _param_lines(params, set_by, _profiles.params_for(profile, notebook), _profiles.notebook_defaults(notebook),
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
    print(f"{notebook} · profile {profile} · commit {git_commit()} · {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
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
