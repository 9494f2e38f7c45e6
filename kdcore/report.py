"""`python -m kdcore report`: run the notebooks with papermill, render HTML pages and a leaderboard.

    python -m kdcore report [--profile smoke|cpu|gpu] [--notebooks 01 02 ...] [--show-code] [--out results]
                            [--param key=value ...]

Writes results/<profile>/<nb>.ipynb (executed), <nb>.html (code hidden unless --show-code), <nb>.json
(written by the notebook), index.html, leaderboard.csv and leaderboard.md. A failing notebook does not
stop the others; it is marked failed in the index and the exit code is 1. Bad arguments (unknown
profile, notebook or parameter name) raise ConfigError before anything runs.
"""
from __future__ import annotations

import argparse
import ast
import html
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import profiles as _profiles
from .errors import ConfigError, unknown_name
from .data import atomic_write_text
from .experiments import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


@dataclass
class Plan:
    profile: str
    notebooks: list[str]
    out: Path
    show_code: bool
    parameters: dict[str, dict] = field(default_factory=dict)  # notebook -> papermill parameters


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


def notebook_parameters(nb: str) -> list[str]:
    """Names in the notebook's `parameters` cell (papermill.inspect_notebook)."""
    import papermill

    return list(papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{nb}.ipynb")))


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
    if profile is None:
        profile = _profiles.default_profile()
    _profiles.check_profile(profile)
    chosen = select_notebooks(notebooks)
    overrides = {}
    for item in params or []:
        if "=" not in item:
            raise ConfigError(f"--param expects key=value, got {item!r}.")
        k, v = item.split("=", 1)
        overrides[k.strip()] = parse_value(v)
    valid = {nb: notebook_parameters(nb) for nb in chosen}
    all_valid = sorted(set().union(*valid.values()))
    for k in overrides:
        if k not in all_valid:
            raise unknown_name("parameter", k, all_valid)
    out = Path(out).resolve()
    plan = Plan(profile, chosen, out, show_code)
    for nb in chosen:
        p = {k: v for k, v in _profiles.params_for(profile, nb).items() if k in valid[nb]}
        p.update({k: v for k, v in overrides.items() if k in valid[nb]})
        p.update(profile=profile, results_dir=str(out), progress=False)
        plan.parameters[nb] = p
    return plan


def ensure_kernelspec(name: str = "python3") -> None:
    """Make sure a `python3` kernel exists; install one for this interpreter into sys.prefix if not."""
    from jupyter_client.kernelspec import KernelSpecManager

    if name in KernelSpecManager().find_kernel_specs():
        return
    print(f"installing kernelspec {name!r} for {sys.executable} (--sys-prefix)")
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", name], check=True)


def _last_line(err: BaseException) -> str:
    text = str(getattr(err, "evalue", "") or err).strip()
    ename = getattr(err, "ename", type(err).__name__)
    line = (text.splitlines() or [""])[-1]
    return f"{ename}: {line}"[:400]


def render_html(ipynb: Path, html_path: Path, show_code: bool) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(ipynb, as_version=4))
    atomic_write_text(body, html_path)


def run_notebook(nb: str, params: dict, out_dir: Path, show_code: bool) -> dict:
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = out_dir / f"{nb}.ipynb", out_dir / f".tmp-{nb}-{os.getpid()}.ipynb"
    (out_dir / f"{nb}.json").unlink(missing_ok=True)  # a stale JSON must not pass for this run's result
    status = {"notebook": nb, "status": "ok", "error": "", "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{nb}.ipynb"), str(tmp), parameters=params, kernel_name="python3",
                                   cwd=str(REPO_ROOT), progress_bar=False, log_output=False)
    except Exception as err:  # keep going: the next notebooks still run
        status.update(status="failed", error=_last_line(err))
    status["seconds"] = round(time.perf_counter() - t0, 1)
    if tmp.exists():
        os.replace(tmp, final)
        try:
            render_html(final, out_dir / f"{nb}.html", show_code)
        except Exception as err:
            status.update(status="failed", error=status["error"] or f"HTML rendering: {_last_line(err)}")
    elif status["status"] == "ok":
        status.update(status="failed", error="papermill wrote no output notebook")
    if status["status"] == "ok" and not (out_dir / f"{nb}.json").exists():
        status.update(status="failed", error=f"the notebook wrote no {nb}.json")
    return status


# --------------------------------------------------------------------------- index + leaderboard
def leaderboard(out_dir: Path, notebooks: list[str]) -> tuple[pd.DataFrame, dict]:
    rows, infos = [], {}
    for nb in notebooks:
        path = out_dir / f"{nb}.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        infos[nb] = res.get("run_info", {})
        t = res.get("teacher") or {}
        for m in res.get("metrics", []):
            rows.append({"notebook": nb, "method": m["method"], "test_acc": m["test_acc"], "macro_f1": m["test_f1"],
                         "acc_mean": m["test_acc_mean"], "acc_std": m["test_acc_std"], "f1_mean": m["test_f1_mean"],
                         "n": m["n"], "delta_acc": m.get("delta_acc"), "gain_beyond_seed_spread": m.get("clear_gain"),
                         "teacher": t.get("name"), "teacher_acc": t.get("test_acc"), "params": m.get("params"),
                         "size_mb": m.get("size_mb"), "latency_ms": m.get("latency_ms"),
                         "seconds_per_run": m.get("seconds_per_run"), "page": f"{nb}.html"})
    return pd.DataFrame(rows), infos


def _fmt(v, digits=4):
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:+.{digits}f}" if digits == -1 else f"{v:.{digits}f}"
    return str(v)


def _display_rows(board: pd.DataFrame) -> list[dict]:
    out = []
    for _, r in board.iterrows():
        out.append({"notebook": r["notebook"], "method": r["method"], "test acc": r["test_acc"], "macro-F1": r["macro_f1"],
                    "Δ acc vs baseline": "–" if pd.isna(r["delta_acc"]) else f"{r['delta_acc']:+.4f}",
                    "gain > seed spread": _fmt(bool(r["gain_beyond_seed_spread"])) if r["delta_acc"] == r["delta_acc"] else "–",
                    "teacher acc": _fmt(r["teacher_acc"]), "params": _fmt(r["params"]),
                    "MB": _fmt(r["size_mb"], 3), "latency ms": _fmt(r["latency_ms"], 2),
                    "s/run": _fmt(r["seconds_per_run"], 1)})
    return out


def write_markdown(board: pd.DataFrame, path: Path) -> None:
    rows = _display_rows(board)
    if not rows:
        atomic_write_text("(no results)\n", path)
        return
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    atomic_write_text("\n".join(lines) + "\n", path)


def write_index(plan: Plan, statuses: list[dict], board: pd.DataFrame, infos: dict, started: str, seconds: float) -> Path:
    out_dir = plan.out / plan.profile
    e = html.escape
    any_info = next(iter(infos.values()), {})
    data_lines = "".join(
        f"<li><b>{e(nb)}</b>: {e(str((i.get('dataset') or {}).get('name')))} from {e(str((i.get('dataset') or {}).get('source')))} "
        f"— {e(json.dumps({k: (i.get('dataset') or {}).get(k) for k in ('train', 'val', 'test', 'image_size')}))}, "
        f"epochs {e(str(i.get('epochs')))}, teacher epochs {e(str(i.get('teacher_epochs')))}, seeds {e(str(i.get('seeds')))}</li>"
        for nb, i in infos.items())
    status_rows = "".join(
        f"<tr class='{s['status']}'><td><a href='{e(s['notebook'])}.html'>{e(s['notebook'])}</a></td>"
        f"<td>{e(s['status'])}</td><td>{s['seconds']:.0f}</td><td>{e(s['error'])}</td></tr>" for s in statuses)
    board_rows = ""
    for r, raw in zip(_display_rows(board), board.to_dict("records")):
        cells = "".join(f"<td>{e(str(v))}</td>" for k, v in r.items() if k != "notebook")
        board_rows += f"<tr><td><a href='{e(raw['page'])}'>{e(r['notebook'])}</a></td>{cells}</tr>"
    header = "".join(f"<th>{e(c)}</th>" for c in (_display_rows(board)[0] if len(board) else {"notebook": 0}))
    failed = [s["notebook"] for s in statuses if s["status"] != "ok"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>kdcore report · {e(plan.profile)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:left}} tr.failed td{{background:#fdd}} th{{background:#eee}}</style>
</head><body>
<h1>kdcore report — profile <code>{e(plan.profile)}</code></h1>
<p><b>{'All notebooks ran.' if not failed else 'FAILED: ' + e(', '.join(failed))}</b></p>
<p>Started {e(started)}, {seconds:.0f} s in all, on {e(str(any_info.get('host', '')))}: device {e(str(any_info.get('device', '')))},
torch {e(str(any_info.get('torch', '')))}, Python {e(str(any_info.get('python', '')))}.</p>
<p>Scaling of this profile: {e(_profiles.SCALING.get(plan.profile, ''))}</p>
<h2>Notebooks</h2><table><tr><th>notebook</th><th>status</th><th>seconds</th><th>error (last line)</th></tr>{status_rows}</table>
<h2>Leaderboard</h2>
<p>Student test accuracy and macro-F1 as mean ± std over seeds (n); Δ is against the notebook's baseline student;
"gain &gt; seed spread" means Δ exceeds std(method) + std(baseline) with n ≥ 2 each. Checkpoints were chosen on the
validation split; the test split was used once per run.</p>
<table><tr>{header}</tr>{board_rows}</table>
<h2>Data</h2><ul>{data_lines}</ul>
<p>Also: <a href="leaderboard.csv">leaderboard.csv</a>, <a href="leaderboard.md">leaderboard.md</a>.</p>
</body></html>"""
    return atomic_write_text(page, out_dir / "index.html")


def export_figures(results: Path, images: Path, notebooks: list[str] | None = None) -> list[Path]:
    """Copy every figure of the executed notebooks to images/<notebook>-<k>.png (README figures from a real run)."""
    import base64

    import nbformat

    images.mkdir(parents=True, exist_ok=True)
    written = []
    for nb in notebooks or _profiles.NOTEBOOKS:
        path = results / f"{nb}.ipynb"
        if not path.exists():
            continue
        pngs = [o["data"]["image/png"] for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"
                for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        for k, png in enumerate(pngs, 1):
            target = images / f"{nb}-{k}.png"
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(base64.b64decode(png))
            os.replace(tmp, target)
            written.append(target)
    return written


def run(plan: Plan) -> int:
    import datetime as _dt

    ensure_kernelspec()
    out_dir = plan.out / plan.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    started, t0 = _dt.datetime.now().astimezone().isoformat(timespec="seconds"), time.perf_counter()
    print(f"kdcore report: profile {plan.profile} -> {out_dir} ({_profiles.SCALING.get(plan.profile, '')})", flush=True)
    statuses = []
    for i, nb in enumerate(plan.notebooks, 1):
        print(f"[{i}/{len(plan.notebooks)}] {nb} ...", end=" ", flush=True)
        s = run_notebook(nb, plan.parameters[nb], out_dir, plan.show_code)
        statuses.append(s)
        print(f"{s['status']} ({s['seconds']:.0f}s){' ' + s['error'] if s['error'] else ''}", flush=True)
    board, infos = leaderboard(out_dir, [s["notebook"] for s in statuses if s["status"] == "ok"])
    atomic_write_text(board.to_csv(index=False), out_dir / "leaderboard.csv")
    write_markdown(board, out_dir / "leaderboard.md")
    index = write_index(plan, statuses, board, infos, started, time.perf_counter() - t0)
    failed = [s["notebook"] for s in statuses if s["status"] != "ok"]
    print(f"wrote {index} ({time.perf_counter() - t0:.0f}s){'; FAILED: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m kdcore report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=None, help=f"one of {', '.join(_profiles.PROFILES)} (default: gpu if CUDA else cpu)")
    ap.add_argument("--notebooks", nargs="+", default=None, help="e.g. 01 02 or 07_eurosat (default: all)")
    ap.add_argument("--show-code", action="store_true", help="show code cells in the HTML pages")
    ap.add_argument("--out", default="results", help="output root; pages go to <out>/<profile>/")
    ap.add_argument("--figures", default=None, metavar="DIR",
                    help="also copy every figure of the executed notebooks to DIR/<notebook>-<k>.png")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a notebook parameter (repeatable), e.g. --param epochs=2 --param seeds=[0]")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args.profile, args.notebooks, args.out, args.show_code, args.param)
    except ConfigError as err:
        print(f"ConfigError: {err}", file=sys.stderr)
        return 2
    status = run(plan)
    if args.figures:
        written = export_figures(plan.out / plan.profile, Path(args.figures), plan.notebooks)
        print(f"copied {len(written)} figures to {args.figures}")
    return status


if __name__ == "__main__":
    sys.exit(main())
