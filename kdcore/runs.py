"""Runs over seeds, kept in the run store: one key per run (data, student, method and options, teacher weights,
schedule, seed, recipe version), trained alone, probed by the plan, or collected for co-training.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch.nn as nn

from . import pending, plan, stats
from .data import DataBundle
from .distill import make_distiller
from .errors import ConfigError
from .evaluate import classification_metrics, evaluate
from .models import count_parameters, create_model
from .plan import planning
from .provenance import data_fingerprint, provenance
from .runtime import seed_everything
from .store import STUDENT_WEIGHTS_MB, RunStore, small_weights, store_key, weights_hash
from .store import config_hash as _hash
from .terms import term_identity
from .train import TrainConfig, fit


def train_overrides(**kw) -> dict:
    """Only the TrainConfig fields among kw (None means: TrainConfig's default)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in kw.items() if k in fields and v is not None}


@dataclass
class SeedRuns:
    label: str
    runs: pd.DataFrame  # one row per seed
    histories: dict[int, pd.DataFrame]  # seed -> per-epoch history
    model: nn.Module  # the first seed's student (best-by-validation weights)
    eval: dict  # the first seed's test evaluation (confusion, per-class, logits)
    efficiency: dict = field(default_factory=dict)


def run_key(method: str | dict, data: DataBundle, *, student: str, student_kwargs: dict, pretrained: bool, distill: dict,
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


@dataclass
class _Job:
    """What every seed of one run_seeds call shares."""
    method: object  # a registered name, or a Term built in a notebook
    method_id: str | dict | None  # the method as the store records it (terms.term_identity for a Term)
    label: str
    data: DataBundle
    student: str
    student_kwargs: dict
    distill: dict
    uses_teacher: bool  # False for the baseline
    teacher: nn.Module | None
    fit_kw: dict  # fit()'s arguments but the seed
    train: dict  # the TrainConfig overrides among them, as the key sees them
    checkpoint_dir: Path | None
    store: RunStore | None

    def train_seed(self, seed: int, key: str | None, model: nn.Module) -> tuple[object, dict] | None:
        """(fit's result, test evaluation) of a run that trains now; None when kdcore.cotrain collects it for later."""
        fresh = self.method if isinstance(self.method, str) else copy.deepcopy(self.method)  # a Term: a copy per seed
        kd = (make_distiller(fresh, model, self.teacher, **self.distill)
              if self.uses_teacher else model)
        fit_kw = {**self.fit_kw, "seed": seed}
        if planning():  # kdcore report --plan: time the step, train nothing, store nothing
            probe_key = f"{self.label}|{self.student}|{_hash([self.student_kwargs, self.distill, {**fit_kw, 'seed': None}])}"
            result = _probe_run(kd, self.data, fit_kw, label=self.label, key=key, teacher=self.teacher, probe_key=probe_key)
            return result, evaluate(model, self.data, "test", device=fit_kw["device"])
        on_disk = ({"teacher_cache_dir": str(self.checkpoint_dir / "logit-cache")}
                   if self.train.get("teacher_cache") and self.checkpoint_dir is not None else {})  # other notebooks
        partial = self.checkpoint_dir / "runs" / f"{key}.partial" if key is not None else None  # resumes here
        stored_as = {"method": self.method_id, "label": self.label, "student": self.student,
                     "student_kwargs": self.student_kwargs, "distill": self.distill, "train": self.train,
                     "teacher": getattr(self.teacher, "kd_teacher_key", None),
                     **{k: fit_kw[k] for k in ("epochs", "lr", "batch_size", "seed")}}
        finish = functools.partial(_finish_run, self.store, key, model, self.data, self.label, seed, fit_kw["device"],
                                   stored_as, partial)
        if pending.collecting() and self.store is not None:  # kdcore.cotrain: trained later, in a group
            pending.add(pending.PendingRun(self.label, key, kd, self.data, {**fit_kw, **on_disk}, partial,
                                           data_fingerprint(self.data), finish))
            return None
        result = fit(kd, self.data, out_dir=partial, **fit_kw, **on_disk)
        return result, finish(result)


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
    outside kdcore are stored under a hash of their code (terms.term_identity), unless that code cannot be read.
    With `checkpoint_dir` and `teacher_cache`, the teacher's logits per view are also kept under
    <checkpoint_dir>/logit-cache, so logit methods in other notebooks (processes) skip the teacher as well.
    """
    custom = not isinstance(method, str)
    label = label or (method.name if custom else method)
    distill, student_kwargs, train = dict(distill or {}), dict(student_kwargs or {}), train_overrides(**train)
    uses_teacher = custom or method.strip().lower() != "baseline"
    if not uses_teacher:
        teacher = None
    method_id = term_identity(method) if custom else method  # what the key knows of the method
    if custom and method_id is None:
        print(f"{label}: its code cannot be read (defined by exec?), so its runs are trained and not stored")
    storable = cache and checkpoint_dir is not None and method_id is not None
    store = RunStore(store_dir or Path(checkpoint_dir) / "store") if storable else None
    job = _Job(method, method_id, label, data, student, student_kwargs, distill, uses_teacher, teacher,
               dict(epochs=epochs, lr=lr, batch_size=batch_size, device=device, progress=progress, **train), train,
               Path(checkpoint_dir) if checkpoint_dir is not None else None, store)
    rows, histories, first_model, first_eval = [], {}, None, None
    for seed in seeds:
        key = run_key(method_id, data, student=student, student_kwargs=student_kwargs, pretrained=pretrained,
                      distill=distill, teacher=teacher, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      train=train, label=label) if storable else None
        seed_everything(seed)
        model = create_model(student, data.num_classes, data.in_channels, pretrained=bool(pretrained), **student_kwargs)
        entry = store.load("runs", key) if store is not None else None
        if entry is not None:
            row, history, ev = _stored_run(entry, model, data, device, evaluate_it=first_eval is None)
            print(f"{label} seed {seed}: from the store ({key})")
            if planning():
                plan.record({"kind": "run", "label": label, "seed": seed, "key": key, "stored": True, "seconds": 0.0})
        else:
            if key is not None:
                _require_training(f"{label} seed {seed}", key)
            trained = job.train_seed(seed, key, model)
            if trained is None:
                first_model = first_model or model
                continue
            result, ev = trained
            row, history = _result_row(result, ev, model, label, seed), result.history
        row = {**row, "method": label, "student": student, "reused": entry is not None}
        print(f"{label} seed {seed}: test_acc={row['test_acc']:.4f} test_f1={row['test_f1']:.4f} "
              f"(best val epoch {row['best_epoch']}, {row['seconds']:.0f}s)")
        rows.append(row)
        histories[seed] = history
        if first_model is None:
            first_model, first_eval = model.eval(), ev
    return SeedRuns(label, pd.DataFrame(rows), histories, first_model, first_eval)


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
