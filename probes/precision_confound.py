"""How much of a gain over the full profile's bf16 baseline could be precision: each stored CIFAR-10 method that
trained in fp32, paired by seed with the bf16 baseline in the run store and with an fp32 baseline of the same
notebook, seeds and split (an executed 01's JSON), and the two baselines paired with each other.

    python probes/precision_confound.py --fp32-baseline results/probes/airbench_small-baseline-fp32-88bd125/01_baseline.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from kdcore import stats
from kdcore.store import RunStore

REPO = Path(__file__).resolve().parents[1]


def store_rows(store: Path, prefix: str) -> pd.DataFrame:
    return pd.DataFrame([{**r["row"], "cpu": r["cpu"]["model name"], "commit": r["commit"]}
                         for r in RunStore(store).records("runs")
                         if r["key"].startswith(prefix) and r["config"].get("epochs") == 30])  # not 02's 10-epoch sweep


def gain(runs: pd.DataFrame, method: str, baseline: str) -> dict:
    g = stats.paired_gain(runs, method, baseline)
    return {"delta": g["delta"], "ci_low": g["ci_low"], "ci_high": g["ci_high"], "p_value": g["p_value"], "n": g["n"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32-baseline", required=True, help="an executed 01_baseline JSON whose runs are fp32")
    ap.add_argument("--store", default=str(REPO / "results/full/store"))
    ap.add_argument("--out", help="write the table as JSON here")
    args = ap.parse_args(argv)
    old = json.loads(Path(args.fp32_baseline).read_text())
    fp32_base = pd.DataFrame(old["runs"]).assign(method="baseline fp32")
    if set(fp32_base["compute_dtype"]) != {"fp32"}:
        raise SystemExit(f"error: {args.fp32_baseline} is not an fp32 baseline ({set(fp32_base['compute_dtype'])})")
    stored = store_rows(Path(args.store), "cifar10-airbench_small-")
    runs = pd.concat([stored, fp32_base], ignore_index=True)
    fp32_methods = [m for m in stored["method"].unique()
                    if set(stored.loc[stored["method"] == m, "compute_dtype"]) == {"fp32"}]
    table = [{"method": "baseline (bf16)", "vs": "baseline fp32", **gain(runs, "baseline", "baseline fp32")}]
    for m in fp32_methods:
        for base, name in (("baseline", "baseline (bf16)"), ("baseline fp32", "baseline fp32")):
            table.append({"method": m, "vs": name, **gain(runs, m, base)})
    print(f"fp32 baseline: {args.fp32_baseline} (commit {old['run_info']['commit']}, {old['run_info']['cpu']['model name']})")
    print(f"{'method':<16} {'vs':<16} {'Δ test acc':>10} {'95 % interval':>20} {'p':>6} {'n':>2}")
    for r in table:
        print(f"{r['method']:<16} {r['vs']:<16} {r['delta']:>+10.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
              f"{r['p_value']:>6.3f} {r['n']:>2}")
    if args.out:
        Path(args.out).write_text(json.dumps({"fp32_baseline": args.fp32_baseline, "fp32_commit": old["run_info"]["commit"],
                                              "store": args.store, "rows": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
