"""Mean ± std over seeds and the paired gain of one probe configuration over another, from the summary.json
lines that `kdcore train` printed (results/probes/<run>/summary.json), paired by seed (kdcore.stats).

    .venv/bin/python probes/probe_gain.py --baseline results/probes/A-seed* --method results/probes/B-seed* \
        --out results/probes/B-gain.json

Summaries written before `kdcore train` recorded its seed are refused, unless --seed-from-name says to read the
seed from the folder's `-seedN` suffix (the probes' naming); those rows then say `"seed_from": "folder name"`.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore import stats  # noqa: E402
from kdcore.atomic import atomic_write_text  # noqa: E402

METRICS = ("test_acc", "test_f1")
RUN_FIELDS = ("seed", "method", "student", "teacher", "epochs_run", "best_epoch", "best_val_acc", *METRICS, "seconds",
              "device", "precision", "channels_last", "cpu", "commit")


def load(folders: list[str], seed_from_name: bool = False) -> pd.DataFrame:
    """One row per run folder; each must hold the summary.json of one `kdcore train` run with its seed."""
    rows = []
    for folder in folders:
        path = Path(folder) / "summary.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found: pass folders that hold kdcore train's summary.json")
        summary = json.loads(path.read_text())
        row = {"run": Path(folder).name, **{k: summary.get(k) for k in RUN_FIELDS}}
        if "seed" not in summary:
            suffix = re.search(r"-seed(\d+)$", Path(folder).resolve().name)
            if not (seed_from_name and suffix):
                raise SystemExit(f"error: {path} names no seed (written before kdcore train recorded it); runs pair "
                                 "by seed: pass --seed-from-name to read it from a folder named ...-seedN")
            row.update(seed=int(suffix.group(1)), seed_from="folder name")
        rows.append(row)
    runs = pd.DataFrame(rows)
    if runs.seed.duplicated().any():
        raise SystemExit(f"error: two runs share a seed in {folders}: one run per seed and configuration")
    return runs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", nargs="+", required=True, help="run folders of the reference configuration")
    p.add_argument("--method", nargs="+", required=True, help="run folders of the configuration compared with it")
    p.add_argument("--out", default=None, help="write the result here as JSON (atomically)")
    p.add_argument("--seed-from-name", action="store_true",
                   help="for summaries without a seed, read it from the folder's -seedN suffix")
    a = p.parse_args(argv)
    base, method = load(a.baseline, a.seed_from_name), load(a.method, a.seed_from_name)
    seeds = sorted(set(base.seed) & set(method.seed))
    if not seeds:
        raise SystemExit(f"error: no seed in common (baseline {sorted(base.seed)}, method {sorted(method.seed)})")
    b, m = base.set_index("seed").loc[seeds], method.set_index("seed").loc[seeds]
    result = {"seeds": seeds, "baseline": base.to_dict("records"), "method": method.to_dict("records")}
    print(f"paired over seeds {seeds}")
    for metric in METRICS:
        gain = stats.paired_interval(m[metric] - b[metric])
        result[metric] = {"baseline_mean": b[metric].mean(), "baseline_std": b[metric].std(ddof=1),
                          "method_mean": m[metric].mean(), "method_std": m[metric].std(ddof=1), "gain": gain}
        n = len(seeds)
        print(f"{metric}: baseline {stats.fmt_mean_std(b[metric].mean(), b[metric].std(ddof=1), n)}, "
              f"method {stats.fmt_mean_std(m[metric].mean(), m[metric].std(ddof=1), n)}, "
              f"gain {stats.fmt_gain(gain['delta'], gain['ci_low'], gain['ci_high'])}"
              f"{' (significant)' if gain['significant'] else ''}")
    if a.out:
        atomic_write_text(json.dumps(result, indent=2, default=str) + "\n", Path(a.out))
        print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
