"""The cost plan: every run a report would make, stored or to train, with its projected seconds on this machine.

`kdcore report --plan` executes the notebooks with $KDCORE_PLAN set to a JSON-lines file. In that mode
kdcore.teachers and kdcore.runs train nothing: a teacher or run found in the store is loaded as usual, and one that is not
is *probed*, timing the real training step on the real data:

    seconds ≈ epochs × (steps_per_epoch × step + fixed)

where `step` comes from the training loops (history's train_seconds, without the validation pass) of two
one-epoch runs capped at PROBE_STEPS[0] and PROBE_STEPS[1] steps, and `fixed` (validation pass, set-up) is the
rest of the shorter run's time; both after one untimed run that pays the process's one-time costs (kernel
warm-up, the layout and precision probes). Probes run once per configuration and serve every seed. The probed
model stands in for the trained one so the notebook runs to its end; nothing probed is ever stored.

The teacher's forward pass is timed on its own, so the plan also projects the shared pass: runs of one seed,
teacher, batch size and schedule form a group that pays the teacher's forward once per batch instead of once
per run.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

PLAN_ENV = "KDCORE_PLAN"
PROBE_STEPS = (2, 6)
_PROBES: dict[str, dict] = {}  # configuration without the seed -> probe timings


def planning() -> bool:
    return bool(os.environ.get(PLAN_ENV))


def record(entry: dict) -> None:
    """Append one entry to the plan file (one short line: appends of whole lines from one kernel)."""
    with open(os.environ[PLAN_ENV], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def probe_fit(fit, model, data, probe_key: str, **fit_kwargs) -> tuple[dict, object]:
    """Time `fit` at two step caps (once per probe_key); returns ({step, fixed, steps_per_epoch}, last FitResult)."""
    result = None
    if probe_key not in _PROBES:
        times, train_times = [], []
        for steps in (PROBE_STEPS[0], *PROBE_STEPS):  # the first run pays the process's one-time costs: not timed
            t0 = time.perf_counter()
            result = fit(model, data, **{**fit_kwargs, "epochs": 1, "max_steps_per_epoch": steps, "out_dir": None})
            times.append(time.perf_counter() - t0)
            train_times.append(float(result.history["train_seconds"].iloc[0]))
        # the step from the training loops alone: a difference of whole fits would carry the validation
        # pass's timing noise into a few steps' difference
        step = max(0.0, (train_times[2] - train_times[1]) / (PROBE_STEPS[1] - PROBE_STEPS[0]))
        batches = -(-len(data.train) // fit_kwargs["batch_size"])
        cap = fit_kwargs.get("max_steps_per_epoch")
        _PROBES[probe_key] = {"step": step, "fixed": max(0.0, times[1] - PROBE_STEPS[0] * step),
                              "steps_per_epoch": min(batches, cap) if cap else batches}
    if result is None:
        result = fit(model, data, **{**fit_kwargs, "epochs": 1, "max_steps_per_epoch": PROBE_STEPS[0], "out_dir": None})
    return _PROBES[probe_key], result


def project(probe: dict, epochs: float) -> float:
    return epochs * (probe["steps_per_epoch"] * probe["step"] + probe["fixed"])


@torch.no_grad()
def teacher_forward_seconds(teacher: torch.nn.Module, data, batch_size: int, batches: int = 3, *, bf16: bool = False,
                            channels_last: bool = False) -> float:
    """Seconds of one teacher forward on a training batch (median of `batches`, after one warm-up), in the
    precision and memory layout the probed run gave its teacher, so it is the forward that run's step pays."""
    device = next(teacher.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = data.normalize(data.train.images[:batch_size].to(device)).contiguous(memory_format=fmt)
    was = teacher.training
    teacher.eval().to(memory_format=fmt)
    times = []
    for i in range(batches + 1):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            teacher(x)
        if i:
            times.append(time.perf_counter() - t0)
    teacher.train(was).to(memory_format=torch.contiguous_format)
    return sorted(times)[len(times) // 2]


def unique(entries: list[dict]) -> list[dict]:
    """Each teacher and run once, at its first mention: a notebook that asks for a run twice (07's small student is
    also one of its students) or several notebooks that share one (01's baseline in 02-05) train it once. Runs
    without a key (a term the store cannot name) are all kept."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for e in entries:
        if e.get("key") is None or (e["kind"], e["key"]) not in seen:
            kept.append(e)
        seen.add((e["kind"], e.get("key")))
    return kept


def summarize(entries: list[dict]) -> dict:
    """Totals of a plan: seed-style (every run pays its teacher forward) and with one shared pass per group."""
    entries = unique(entries)
    runs = [e for e in entries if e["kind"] == "run"]
    teachers = [e for e in entries if e["kind"] == "teacher"]
    todo = [e for e in runs if not e["stored"]]
    groups: dict[str, list[dict]] = {}
    for e in todo:
        groups.setdefault(e["group"], []).append(e)
    shared = 0.0
    for members in groups.values():
        paid = [min((m.get("teacher_forward_s") or 0.0) * m["steps"], m["seconds"]) for m in members]  # by each run
        shared += sum(m["seconds"] for m in members) - sum(paid) + max(paid)  # the group pays one of them
    teacher_s = sum(t["seconds"] for t in teachers if not t["stored"])
    seed_style = sum(e["seconds"] for e in todo)
    return {"runs": len(runs), "stored": len(runs) - len(todo), "to_train": len(todo), "groups": len(groups),
            "teachers_to_train": sum(not t["stored"] for t in teachers), "teacher_seconds": teacher_s,
            "seed_style_seconds": seed_style + teacher_s, "shared_pass_seconds": shared + teacher_s,
            "shared_pass_speedup": (seed_style / shared) if shared else None}


def read_entries(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
