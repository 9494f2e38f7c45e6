"""`kdcore report`: run the notebooks with papermill, render HTML pages and a leaderboard.

    kdcore report [--profile smoke|cpu|full|gpu] [--notebooks 01 02 ...] [--show-code] [--out results]
                  [--param key=value ...]

A run never writes into the published folder <out>/<profile>/ while notebooks run: they run in a fresh
hidden folder next to it (<out>/.<profile>.partial-XXXX/), and only when all have run are their pages moved
into the published folder. A notebook that ran replaces its own <nb>.ipynb, .html and .json; one that failed
keeps its last good pages and gets <nb>.failed.html (+ .ipynb) beside them. The index and leaderboard are
rebuilt from every JSON in the published folder, so a partial run (--notebooks 02) keeps the other rows.
Ctrl-C interrupts the running kernel, removes the hidden folder and leaves the published one as it was.
Bad arguments (unknown profile, notebook or parameter name, a value of the wrong type) are refused with one
`error:` line before anything runs. Exit status: 0 all ran, 1 a notebook failed, 2 bad arguments, 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


from . import profiles as _profiles
from .atomic import atomic_write_text
from .errors import ConfigError, unknown_name
from .runner import _store_counts, ensure_kernelspec, publish, run_notebook, sigint_ignored
from .site import export_figures, load_results, write_index

NOTEBOOK_DIR = _profiles.NOTEBOOK_DIR
SET_BY_REPORT = {"profile": "--profile", "results_dir": "--out"}  # parameters the report sets itself
PUBLISHED_ENV = "KDCORE_PUBLISHED_DIR"  # the report's --out, for the kernels (they write into a stage folder)


@dataclass
class Plan:
    profile: str
    notebooks: list[str]
    out: Path
    show_code: bool
    parameters: dict[str, dict] = field(default_factory=dict)  # notebook -> papermill parameters


# --------------------------------------------------------------------------- arguments
def parse_value(text: str):
    """'3' -> 3, '[0, 1]' -> [0, 1], 'true' -> True, 'none' -> None, anything else -> the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except Exception:
            pass
    return text


def notebook_parameters(nb: str) -> dict[str, dict]:
    """The notebook's `parameters` cell: {name: {default (source text), inferred_type_name, help}}."""
    import papermill

    return dict(papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{nb}.ipynb")))


TYPE_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "None": type(None)}


def allowed_types(nb: str, name: str, info: dict) -> set[type]:
    """Types `name` may take in `nb`: its annotation's, its default's, and its value's in every profile.

    An empty set means anything goes (no default or profile fixes a type). NoneType is in the set when a
    default or a profile leaves the parameter None.
    """
    annotation = info.get("inferred_type_name") or "None"  # papermill's "None" means: not annotated
    types = set() if annotation == "None" else {TYPE_NAMES[t.strip()] for t in annotation.split("|") if t.strip() in TYPE_NAMES}
    with contextlib.suppress(ValueError, SyntaxError):
        types.add(type(ast.literal_eval(info.get("default", ""))))
    for profile in _profiles.PROFILES:
        params = _profiles.params_for(profile, nb)
        if name in params:
            types.add(type(params[name]))
    return set() if types <= {type(None)} else types


def check_type(name: str, raw: str, value, types: set[type]):
    """`value` (parsed from --param name=raw) as one of `types`, or ConfigError; an int is a valid float."""
    if not types or type(value) in types:
        return value
    if type(value) is int and float in types:
        return float(value)
    if str in types and value is not None:
        return raw  # e.g. a model name that happens to look like a number
    kinds = " or ".join(sorted(t.__name__ for t in types if t is not type(None)) + ["None"] * (type(None) in types))
    fix = list in types and isinstance(value, tuple)
    raise ConfigError(f"--param {name}={raw}: {name} takes {kinds}, not {type(value).__name__} {value!r}."
                      + (f" Write it as a list: --param {name}=[{','.join(map(repr, value))}]." if fix else ""))


_positive = lambda v: v > 0  # noqa: E731
_count_or_none = lambda v: v is None or v >= 1  # noqa: E731
RANGES = {  # parameter: (check of its value, what the value must be)
    "alpha": (lambda v: 0 <= v <= 1, "in [0, 1] (the KD term's share; 1 - alpha weighs the labels)"),
    "temperature": (_positive, "> 0"), "lr": (_positive, "> 0"), "teacher_lr": (_positive, "> 0"),
    "epochs": (lambda v: v >= 1, ">= 1"), "teacher_epochs": (_positive, "> 0"),
    "sweep_epochs": (_count_or_none, ">= 1, or None"), "batch_size": (lambda v: v >= 1, ">= 1"),
    "seeds": (lambda v: len(v) >= 1 and all(isinstance(s, int) and s >= 0 for s in v),
              "a non-empty list of seeds >= 0, e.g. [0, 1, 2]"),
    "sweep_seeds": (lambda v: all(isinstance(s, int) and s >= 0 for s in v), "a list of seeds >= 0, e.g. [0]"),
    "train_limit": (_count_or_none, ">= 1, or None for the whole split"),
    "val_limit": (_count_or_none, ">= 1, or None for the whole split"),
    "test_limit": (_count_or_none, ">= 1, or None for the whole split"),
    "max_steps_per_epoch": (_count_or_none, ">= 1, or None for whole epochs"),
    "threads": (_count_or_none, ">= 1, or None for torch's default"),
    "n_examples": (lambda v: v >= 0, ">= 0"), "latency_min_run_time": (_positive, "> 0 seconds"),
    "sweep_alphas": (lambda v: v is None or all(0 <= a <= 1 for a in v), "a list of values in [0, 1]"),
    "sweep_temperatures": (lambda v: v is None or all(t > 0 for t in v), "a list of values > 0"),
    "at_weights": (lambda v: all(w >= 0 for w in v), "a list of weights >= 0"),
}


def check_range(name: str, value, origin: str) -> None:
    """ConfigError naming the parameter, who set it and the range it must be in, before anything trains."""
    check, what = RANGES.get(name, (None, None))
    try:
        ok = check is None or bool(check(value))
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"{origin}: {name} must be {what}; got {value!r}.")


def select_notebooks(names: list[str] | None) -> list[str]:
    if not names:
        return list(_profiles.NOTEBOOKS)
    chosen = []
    for n in names:
        match = [nb for nb in _profiles.NOTEBOOKS if nb == n or nb.split("_")[0] == n.zfill(2) or nb.startswith(n)]
        if len(match) != 1:
            raise unknown_name("notebook", n, _profiles.NOTEBOOKS)
        chosen.append(match[0])
    return chosen


def make_plan(profile: str | None, notebooks: list[str] | None, out: str | os.PathLike, show_code: bool = False,
              params: list[str] | None = None) -> Plan:
    """Validate everything and build each notebook's parameters; raises ConfigError, runs nothing."""
    profile = profile or _profiles.default_profile()  # says which, and how to choose (shell syntax)
    _profiles.check_profile(profile)
    chosen = select_notebooks(notebooks)
    raw = {}
    for item in params or []:
        if "=" not in item:
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}.")
        k, v = item.split("=", 1)
        raw[k.strip()] = v
    valid = {nb: notebook_parameters(nb) for nb in chosen}
    for nb, names in valid.items():
        if missing := sorted(set(SET_BY_REPORT) - set(names)):
            raise ConfigError(f"notebooks/{nb}.ipynb has no {' or '.join(missing)} parameter; the report needs it.")
    all_valid = sorted(set().union(*valid.values()) - set(SET_BY_REPORT))
    for k in raw:
        if k in SET_BY_REPORT:
            raise ConfigError(f"--param {k}=... is set by the report; use {SET_BY_REPORT[k]} instead.")
        if k not in all_valid:
            raise unknown_name("parameter", k, all_valid)
    plan = Plan(profile, chosen, Path(out).resolve(), show_code)
    for nb in chosen:
        p = {k: v for k, v in _profiles.params_for(profile, nb).items() if k in valid[nb]}
        for k, text in raw.items():
            if k in valid[nb]:
                p[k] = check_type(k, text, parse_value(text), allowed_types(nb, k, valid[nb][k]))
        for k, v in p.items():
            check_range(k, v, f"--param {k}={raw[k]}" if k in raw else f"{nb} under profile {profile}")
        p["profile"] = profile
        if "progress" in valid[nb]:
            p["progress"] = False  # tqdm bars do not belong in a log or an HTML page
        plan.parameters[nb] = p
    return plan



# --------------------------------------------------------------------------- the whole run
def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _shown(path: Path) -> str:
    """`path` relative to the current folder when it is inside it (what a shell user typed)."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def run(plan: Plan) -> int:
    """Run the plan's notebooks into a hidden stage folder, then publish (see the module docstring)."""
    published = plan.out / plan.profile
    previous = {nb: r["run_info"]["seconds"] for nb, r in load_results(published).items()
                if (r.get("run_info") or {}).get("seconds")}
    plan.out.mkdir(parents=True, exist_ok=True)
    stage_root = Path(tempfile.mkdtemp(prefix=f".{plan.profile}.partial-", dir=plan.out))
    stage, n, t0 = stage_root / plan.profile, len(plan.notebooks), time.perf_counter()
    total = sum(previous.get(nb, 0) for nb in plan.notebooks) if set(plan.notebooks) <= set(previous) else None
    statuses = []
    os.environ[PUBLISHED_ENV] = str(plan.out)  # what the pages name as their folder, not the stage they run in
    try:
        ensure_kernelspec()
        print(f"kdcore report: profile {plan.profile}, {n} notebook{'s' * (n > 1)} -> {_shown(published)}/ "
              f"(published when all have run{f'; last time they took {_clock(total)}' if total else ''})", flush=True)
        for i, nb in enumerate(plan.notebooks, 1):
            last = f" (last run: {_clock(previous[nb])})" if nb in previous else ""
            print(f"[{i}/{n}] {nb}: started{last}", flush=True)
            s = run_notebook(nb, {**plan.parameters[nb], "results_dir": str(stage_root)}, stage, plan.show_code)
            statuses.append(s)
            mean = sum(x["seconds"] for x in statuses) / len(statuses)
            left = sum(previous.get(rest, mean) for rest in plan.notebooks[i:])
            eta = f", about {_clock(left)} left" if i < n else ""
            print(f"[{i}/{n}] {nb}: {s['status']} in {_clock(s['seconds'])}, {_store_counts([s])} "
                  f"({_clock(time.perf_counter() - t0)} elapsed{eta}){': ' + s['error'] if s['error'] else ''}",
                  flush=True)
        with sigint_ignored():
            publish(stage, published, statuses)
            index = write_index(published, plan.profile, statuses, time.perf_counter() - t0)
    except KeyboardInterrupt:
        print(f"interrupted: {_shown(published)} left unchanged", file=sys.stderr, flush=True)
        return 130
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
        os.environ.pop(PUBLISHED_ENV, None)
    failed = [s["notebook"] for s in statuses if s["status"] != "ok"]
    print(f"published {_shown(index)} ({_clock(time.perf_counter() - t0)}; {_store_counts(statuses)})", flush=True)
    if failed:
        again = " ".join(nb.split("_")[0] for nb in failed)
        print(f"FAILED: {', '.join(failed)} (their last good pages were kept); after a fix, rerun just them with "
              f'make report PROFILE={plan.profile} NOTEBOOKS="{again}"', flush=True)
    return 1 if failed else 0


def published_notebooks(out: str | os.PathLike, profile: str | None) -> list[str] | None:
    """The notebooks with a published results JSON under <out>/<profile>/ (None: no profile named, or none)."""
    if profile is None:
        return None
    names = [nb for nb in _profiles.NOTEBOOKS if (Path(out) / profile / f"{nb}.json").exists()]
    return names or None


def run_plan(plan: Plan) -> int:
    """`--plan`: execute the notebooks in plan mode (kdcore.plan: stored runs load, missing ones are probed, nothing
    trains or is stored), then write <out>/<profile>/plan.json with every run and the projected totals."""
    import torch

    from . import plan as cost
    from .provenance import git_commit
    from .runtime import cpu_features, resolve_precision

    plan.out.mkdir(parents=True, exist_ok=True)
    stage_root = Path(tempfile.mkdtemp(prefix=f".{plan.profile}.plan-", dir=plan.out))
    entries, failed = [], []
    try:
        ensure_kernelspec()
        for i, nb in enumerate(plan.notebooks, 1):
            lines = stage_root / f"{nb}.plan.jsonl"
            os.environ[cost.PLAN_ENV] = str(lines)  # inherited by the notebook's kernel
            print(f"[{i}/{len(plan.notebooks)}] {nb}: probing", flush=True)
            s = run_notebook(nb, {**plan.parameters[nb], "results_dir": str(stage_root)}, stage_root / plan.profile,
                             False)
            if s["status"] != "ok":
                failed.append(f"{nb}: {s['error']}")
            entries += [{"notebook": nb, **e} for e in cost.read_entries(lines)]
    except KeyboardInterrupt:
        print("interrupted: no plan written", file=sys.stderr, flush=True)
        return 130
    finally:
        os.environ.pop(cost.PLAN_ENV, None)
        shutil.rmtree(stage_root, ignore_errors=True)
    entries = cost.unique(entries)
    totals = cost.summarize(entries)
    out = {"profile": plan.profile, "notebooks": plan.notebooks, "cpu": cpu_features(),
           "threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
           "precision": resolve_precision("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu")),
           "commit": git_commit(), "probe_steps": list(cost.PROBE_STEPS), "failed": failed, "totals": totals,
           "entries": entries}
    path = atomic_write_text(json.dumps(out, indent=1, default=str) + "\n", plan.out / plan.profile / "plan.json")
    print(f"{totals['runs']} runs: {totals['stored']} in the store, {totals['to_train']} to train in "
          f"{totals['groups']} groups, {totals['teachers_to_train']} teacher(s) to train; projected "
          f"{_clock(totals['seed_style_seconds'])} run by run, {_clock(totals['shared_pass_seconds'])} with one "
          f"teacher pass per group on {out['cpu']['model name']} ({out['precision']}); wrote {_shown(path)}", flush=True)
    for line in failed:
        print(f"FAILED {line}", flush=True)
    return 1 if failed else 0


def _co_train(plan: Plan, params: list[str], group_size: int | None) -> int:
    """kdcore.cotrain before the notebooks: 0 when done, 130 when interrupted (finished runs stay stored, the
    others keep their epochs for the next try), 2 on a configuration error."""
    from . import cotrain

    try:
        given = {k: parse_value(v) for k, v in (item.split("=", 1) for item in params)}
        cotrain.co_train(plan.profile, plan.notebooks, given, group_size=group_size)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted while co-training: finished runs are in the run store", file=sys.stderr)
        return 130
    return 0


def build_parser():
    from .cli import HelpFormatter, Parser

    ap = Parser(prog="kdcore report", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                formatter_class=HelpFormatter)
    ap.add_argument("--profile", default=None, help=f"one of {', '.join(_profiles.PROFILES)} "
                    "(default: gpu when CUDA is available, else cpu)")
    ap.add_argument("--notebooks", nargs="+", default=None, metavar="NB", help="e.g. 01 02 or 07_eurosat (default: all)")
    ap.add_argument("--show-code", action="store_true", help="show code cells in the HTML pages")
    ap.add_argument("--out", default="results", help="output root; pages go to OUT/PROFILE/")
    ap.add_argument("--figures", default=None, metavar="DIR",
                    help="also copy every figure of the notebooks that ran to DIR/<notebook>-<k>.png")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a notebook parameter (repeatable), e.g. --param epochs=2 --param seeds=[0]")
    ap.add_argument("--from-store", action="store_true",
                    help="re-render pages from the run store only: a run or teacher missing from it is an error, never "
                         "trained (default notebooks: those with published pages)")
    ap.add_argument("--plan", action="store_true",
                    help="train nothing: list every run (stored, or to train with its projected seconds from a short "
                         "probe of its real step) and write OUT/PROFILE/plan.json")
    ap.add_argument("--co-train", action=argparse.BooleanOptionalAction, default=None,
                    help="first train the notebooks' runs together by seed, one teacher forward per batch for all of "
                         "them, into the run store (default: the profile's co_train, on for full)")
    ap.add_argument("--group-size", type=int, default=None, metavar="N",
                    help="co-train at most N runs at once: each part lands in the run store when it ends, and logit "
                         "methods reuse the teacher logits earlier parts cached (default: a seed's runs in one group)")
    ap.add_argument("--no-cache", action="store_true",
                    help="train every run again instead of reusing identical finished runs (same as --param cache=false)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.from_store and args.no_cache:
            raise ConfigError("--from-store reads the run store and --no-cache ignores it: choose one.")
        if args.group_size is not None and args.group_size < 1:
            raise ConfigError(f"--group-size {args.group_size}: a group holds at least 1 run; leave it out for whole groups.")
        notebooks = args.notebooks or (published_notebooks(args.out, args.profile) if args.from_store else None)
        plan = make_plan(args.profile, notebooks, args.out, args.show_code,
                         args.param + (["cache=false"] if args.no_cache else []))

    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was run", file=sys.stderr)
        return 130
    if args.plan:
        return run_plan(plan)
    if not args.from_store and (args.co_train if args.co_train is not None else _profiles.co_trains(plan.profile)):
        status = _co_train(plan, args.param, args.group_size)
        if status:
            return status
    previous = os.environ.get("KDCORE_STORE_ONLY")
    os.environ["KDCORE_STORE_ONLY"] = "1" if args.from_store else "0"  # read in the kernels, which inherit it
    try:
        status = run(plan)
    finally:
        os.environ.pop("KDCORE_STORE_ONLY") if previous is None else os.environ.update(KDCORE_STORE_ONLY=previous)
    if args.figures and status != 130:
        ok = [nb for nb in plan.notebooks if (plan.out / plan.profile / f"{nb}.json").exists()]
        written = export_figures(plan.out / plan.profile, Path(args.figures), ok)
        print(f"copied {len(written)} figures to {args.figures}")
    return status


if __name__ == "__main__":
    sys.exit(main())
