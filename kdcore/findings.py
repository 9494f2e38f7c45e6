"""The index's findings table: each claim of the reports kdcore grew from, its number there, our number from the
published results JSON (with the paired interval where there is one), and whether our goal is met.

Every "ours" cell is computed from the notebooks' JSON files; a notebook that has not run gives "not run".
"""
from __future__ import annotations

import math

LEARNING = 0.5  # "clearly learning" on a 10-class task: at least this test accuracy (chance is 0.1)


def _metrics(results: dict, nb: str) -> dict[str, dict]:
    return {m["method"]: m for m in (results.get(nb) or {}).get("metrics", [])}


def _interval(m: dict) -> str:
    lo, hi = m.get("delta_ci_low"), m.get("delta_ci_high")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{m.get('delta_acc', float('nan')):+.4f} (one seed: no interval)"
    return f"{m['delta_acc']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _smallmynet(results):
    m = _metrics(results, "07_eurosat")
    if "baseline" not in m or "kd" not in m:
        return None, None
    base, kd = m["baseline"], m["kd"]
    ours = f"{base['test_acc_mean']:.4f} → {kd['test_acc_mean']:.4f}, gain {_interval(kd)}"
    return ours, kd["test_acc_mean"] >= 0.95 and kd.get("significant") is True


def _best_of_five(results):
    m = _metrics(results, "07_eurosat")
    students = [r for name, r in m.items() if name.endswith(")") and name != "kd"]
    if not students:
        return None, None
    best = max(students, key=lambda r: r.get("val_acc_mean", -1.0))  # chosen on validation
    return f"{best['test_acc_mean']:.4f} (`{best['method']}`, best on validation)", best["test_acc_mean"] >= 0.93


def _cifar_f1(results):
    rows = [r for nb in ("02_logits", "03_hidden_state", "04_regressor", "05_bonus")
            for r in _metrics(results, nb).values()
            if not r.get("is_baseline") and (r.get("params") or math.inf) <= 100_000]
    if not rows:
        return None, None
    best = max(rows, key=lambda r: r.get("val_acc_mean", -1.0))
    if "test_f1_mean" not in best:
        return None, None
    return (f"{best['test_f1_mean']:.4f} (`{best['method']}`, {best['params']:,} params, best on validation; "
            f"accuracy gain {_interval(best)})", best["test_f1_mean"] >= 0.85)


def _efficientvit(results):
    r = results.get("06_efficientvit") or {}
    m, table = _metrics(results, "06_efficientvit"), r.get("size_latency") or []
    if "kd" not in m or len(table) < 2:
        return None, None
    teacher, student = table[0], table[-1]
    ratios = (f"{student['size_mb ratio (first/this)']:.2f}× smaller, {student['latency_ms ratio (first/this)']:.2f}× "
              f"faster, teacher {teacher['test_acc']:.4f} / student {student['test_acc']:.4f}")
    learning = teacher["test_acc"] >= LEARNING and m["kd"]["test_acc_mean"] >= LEARNING
    return f"{ratios}; KD gain {_interval(m['kd'])}", learning and m["kd"].get("delta_ci_low") is not None


FINDINGS = [  # claim, the seed report's number, our goal, how ours is computed
    ("EuroSAT SmallMyNet (89,397 params), alone → distilled", "0.908 → 0.928", "distilled ≥ 0.95, gain significant",
     _smallmynet),
    ("EuroSAT, best of the five CV_project students", "0.8833", "≥ 0.93", _best_of_five),
    ("CIFAR-10 student ≤ 100 k params, macro-F1 with distillation", "0.797", "≥ 0.85", _cifar_f1),
    ("EfficientViT b1 distilled vs alone; size and latency ratios", "5.34× smaller, 1.92× faster, −3.65 points "
     "(pretrained)", f"both models ≥ {LEARNING} test accuracy, KD's effect with its interval", _efficientvit),
]


def findings(results: dict) -> list[dict]:
    """One row per claim: claim, seed, goal, ours ("not run" when its notebook has no results), status."""
    rows = []
    for claim, seed, goal, compute in FINDINGS:
        ours, met = compute(results)
        rows.append({"claim": claim, "seed": seed, "goal": goal, "ours": ours or "not run",
                     "status": "not run" if ours is None else "met" if met else "missed"})
    return rows
