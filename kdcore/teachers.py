"""Teachers trained once and kept in the run store: the airbench recipe for `airbench`, fit() for the others.

A teacher's key names its data, model, schedule and seed (not its code), so a refactor keeps it; its weights
hash goes into every run that learns from it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from . import airbench, plan
from .atomic import atomic_save
from .data import DataBundle
from .evaluate import classification_metrics, evaluate
from .models import create_model
from .plan import planning
from .provenance import data_fingerprint, provenance
from .runs import _require_training, train_overrides
from .runtime import seed_everything
from .store import TEACHER_WEIGHTS_MB, RunStore, small_weights, store_key, weights_hash
from .store import config_hash as _hash
from .train import fit


TEACHER_TRAININGS = 0  # how many teachers this process trained (tests check reuse with it)


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
