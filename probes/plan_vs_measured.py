"""How far the committed cost plan was from the runs that then trained: for each co-trained set of methods at a
seed, the plan's projection for that set (kdcore.plan.summarize's rule: one teacher forward per batch) against the
seconds its store entries recorded, in total and from each run's median epoch (which leaves out epochs slowed by
other work on the machine).

    python probes/plan_vs_measured.py --group hidden,fitnet --seeds 0 1 2 --group at,at:shifted,sp --seeds 0
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from kdcore.store import RunStore

REPO = Path(__file__).resolve().parents[1]


def stored_runs(store: Path) -> dict[tuple[str, int], dict]:
    return {(r["row"]["method"], r["row"]["seed"]): r for r in RunStore(store).records("runs")}


def compare(methods: list[str], seed: int, plan: dict, runs: dict) -> dict:
    planned = [plan[m, seed] for m in methods]
    paid = [min((e["teacher_forward_s"] or 0.0) * e["steps"], e["seconds"]) for e in planned]
    projected = sum(e["seconds"] for e in planned) - sum(paid) + max(paid)
    records = [runs[m, seed] for m in methods]
    measured = sum(r["row"]["seconds"] for r in records)
    median = sum(len(r["history"]) * statistics.median(h["seconds"] for h in r["history"] if h["seconds"] > 0)
                 for r in records)
    return {"methods": "+".join(methods), "seed": seed, "planned_s": projected, "measured_s": measured,
            "median_epoch_s": median, "ratio_measured": measured / projected, "ratio_median": median / projected,
            "cpu": records[0].get("cpu", {}).get("model name"), "precision": records[0]["row"].get("compute_dtype"),
            "commit": ",".join(sorted({r["commit"] for r in records}))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default=str(REPO / "results/full/plan.json"))
    ap.add_argument("--store", default=str(REPO / "results/full/store"))
    ap.add_argument("--group", action="append", required=True, help="methods co-trained together, comma-separated")
    ap.add_argument("--seeds", action="append", nargs="+", type=int, required=True, help="the seeds of each --group")
    args = ap.parse_args(argv)
    if len(args.group) != len(args.seeds):
        ap.error("give one --seeds after each --group")
    committed = json.loads(Path(args.plan).read_text())
    entries = committed["entries"]
    print(f"plan: {args.plan} at {committed['commit']}, {committed['cpu']['model name']}, {committed['precision']}, "
          f"{committed['threads']} threads, probe steps {committed['probe_steps']}; store: {args.store}")
    plan = {(e["label"], e["seed"]): e for e in entries if e["kind"] == "run" and not e["stored"]}
    runs = stored_runs(Path(args.store))
    print(f"{'methods':<22} seed  planned s  measured s  median-epoch s  measured/plan  median/plan  cpu, precision, commit")
    for group, seeds in zip(args.group, args.seeds):
        for seed in seeds:
            missing = [m for m in group.split(",") if (m, seed) not in runs or (m, seed) not in plan]
            if missing:
                print(f"error: {missing} at seed {seed} is not both in the plan (to train) and in the store",
                      file=sys.stderr)
                return 2
            r = compare(group.split(","), seed, plan, runs)
            print(f"{r['methods']:<22} {seed:>4} {r['planned_s']:>10.0f} {r['measured_s']:>11.0f} "
                  f"{r['median_epoch_s']:>15.0f} {r['ratio_measured']:>14.2f} {r['ratio_median']:>12.2f}  "
                  f"{r['cpu']}, {r['precision']}, run at {r['commit']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
