"""The report's site: the index (findings, notebooks, leaderboard, scaling), leaderboard.csv/.md, figures.

Built from every results JSON in the published folder, so a partial report keeps the other notebooks' rows.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import profiles as _profiles
from .atomic import atomic_write_text
from .findings import findings

def load_results(folder: Path) -> dict[str, dict]:
    """{notebook: its results JSON} for every notebook with a JSON in `folder`, in notebook order."""
    return {nb: json.loads((folder / f"{nb}.json").read_text()) for nb in _profiles.NOTEBOOKS
            if (folder / f"{nb}.json").exists()}


def leaderboard(results: dict[str, dict]) -> pd.DataFrame:
    """One row per (notebook, method): the raw numbers (also written as leaderboard.csv)."""
    rows = []
    for nb, res in results.items():
        t = res.get("teacher") or {}
        for m in res.get("metrics", []):
            rows.append({"notebook": nb, "method": m["method"], "is_baseline": m.get("is_baseline", False),
                         "test_acc": m["test_acc"], "macro_f1": m["test_f1"], "acc_mean": m["test_acc_mean"],
                         "acc_std": m["test_acc_std"], "f1_mean": m["test_f1_mean"], "n": m["n"],
                         "delta_acc": m.get("delta_acc"), "delta_ci_low": m.get("delta_ci_low"),
                         "delta_ci_high": m.get("delta_ci_high"), "significant": m.get("significant"),
                         "p_holm": m.get("p_holm"), "clear_gain": m.get("clear_gain"),  # results written before the paired comparison
                         "teacher": t.get("name"), "teacher_acc": t.get("test_acc"), "params": m.get("params"),
                         "size_mb": m.get("size_mb"), "latency_ms": m.get("latency_ms"), "threads": m.get("threads"),
                         "seconds_per_run": m.get("seconds_per_run"), "page": f"{nb}.html"})
    return pd.DataFrame(rows)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def cell(v, spec: str = "") -> str:
    """A table cell for reading: '–' when missing, yes/no for booleans, numbers by `spec` ('.4f', ',', ...)."""
    if _missing(v):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _gain(r: dict) -> str:
    """'+0.0123 [+0.0040, +0.0206]' (the paired 95 % interval), just the mean without one, 'baseline', or '–'."""
    if r["is_baseline"]:
        return "baseline"
    if _missing(r["delta_acc"]):
        return "–"
    if _missing(r["delta_ci_low"]):
        return f"{r['delta_acc']:+.4f}"
    return f"{r['delta_acc']:+.4f} [{r['delta_ci_low']:+.4f}, {r['delta_ci_high']:+.4f}]"


def _teacher_cell(r: dict) -> str:
    """The teacher's test accuracy, flagged when it is below the student it taught (nothing to distil then)."""
    text = cell(r["teacher_acc"], ".4f")
    weaker = not _missing(r["teacher_acc"]) and not _missing(r["acc_mean"]) and r["teacher_acc"] < r["acc_mean"]
    return f"{text} (below the student)" if weaker else text


def display_rows(board: pd.DataFrame) -> list[dict[str, str]]:
    """The leaderboard as strings: 4-digit accuracies, yes/no, '–' for what is missing."""
    return [{"notebook": r["notebook"], "method": r["method"], "test acc": r["test_acc"], "macro-F1": r["macro_f1"],
             "Δ acc vs baseline [95 % CI]": _gain(r), "p (Holm)": cell(r.get("p_holm"), ".3f"),
             "significant": "–" if r["is_baseline"] else cell(r["significant"]),
             "teacher acc": _teacher_cell(r), "params": cell(r["params"], ",.0f"),
             "MB": cell(r["size_mb"], ".3f"), "latency ms": cell(r["latency_ms"], ".2f"),
             "threads": cell(r["threads"], ".0f"), "s/run": cell(r["seconds_per_run"], ".1f")}
            for r in board.astype(object).to_dict("records")]


def write_markdown(board: pd.DataFrame, path: Path) -> None:
    rows = display_rows(board)
    if not rows:
        atomic_write_text("(no results)\n", path)
        return
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    atomic_write_text("\n".join(lines) + "\n", path)


def failure_line(ipynb: Path) -> str:
    """'ename: last line of evalue' of the first error output in an executed notebook ('' if none)."""
    import nbformat

    with contextlib.suppress(Exception):
        for c in nbformat.read(ipynb, as_version=4).cells:
            for o in c.get("outputs", []):
                if o.get("output_type") == "error":
                    return f"{o['ename']}: {(o['evalue'].strip().splitlines() or [''])[-1]}"[:400]
    return ""


def notebook_rows(folder: Path, results: dict[str, dict], this_run: list[dict]) -> list[dict]:
    """Status of every notebook of the profile as the published folder shows it, this run's notes on top."""
    ran = {s["notebook"]: s for s in this_run}
    rows = []
    for nb in _profiles.NOTEBOOKS:
        info = results.get(nb, {}).get("run_info", {})
        s = ran.get(nb, {})
        failed = (folder / f"{nb}.failed.html").exists() or s.get("status") == "failed"
        rows.append({"notebook": nb, "page": f"{nb}.html" if (folder / f"{nb}.html").exists() else None,
                     "status": "failed" if failed else "ok" if nb in results else "not run",
                     "failed_page": f"{nb}.failed.html" if (folder / f"{nb}.failed.html").exists() else None, "this_run": nb in ran,
                     "results_from": (info.get("timestamp") or "")[:16].replace("T", " ") or None,
                     "seconds": info.get("seconds"),
                     "device": info.get("device"), "scaling": info.get("scaling"),
                     "error": s.get("error") or failure_line(folder / f"{nb}.failed.ipynb")})
    return rows


def write_index(folder: Path, profile: str, this_run: list[dict], seconds: float) -> Path:
    """index.html (templates/index.html.j2), leaderboard.csv and leaderboard.md from every JSON in the folder."""
    results = load_results(folder)
    board = leaderboard(results)
    atomic_write_text(board.to_csv(index=False), folder / "leaderboard.csv")
    write_markdown(board, folder / "leaderboard.md")
    nb_rows = notebook_rows(folder, results, this_run)
    shown = display_rows(board)
    same_scaling: dict[str, list[str]] = {}  # text -> notebooks, each text once
    for r in nb_rows:
        if r["scaling"]:
            same_scaling.setdefault(r["scaling"], []).append(r["notebook"])
    page = _template("index.html.j2").render(
        profile=profile, seconds=seconds, ran=", ".join(s["notebook"] for s in this_run), findings=findings(results),
        failed=[r["notebook"] for r in nb_rows if r["status"] == "failed"],
        notebooks=[{**r, "this_run": cell(r["this_run"]), "results_from": cell(r["results_from"]),
                    "seconds": cell(r["seconds"], ".0f"), "device": cell(r["device"])} for r in nb_rows],
        columns=list(shown[0]) if shown else ["notebook"],
        board=[{"page": raw["page"], "notebook": r["notebook"], "cells": [v for k, v in r.items() if k != "notebook"]}
               for r, raw in zip(shown, board.to_dict("records"))],
        scaling=same_scaling)
    return atomic_write_text(page, folder / "index.html")


def _template(name: str):
    """A page template of kdcore/templates, HTML-escaping every value it is given."""
    import jinja2
    env = jinja2.Environment(loader=jinja2.PackageLoader("kdcore", "templates"), autoescape=True,
                             keep_trailing_newline=True)
    return env.get_template(name)


def export_figures(results: Path, images: Path, notebooks: list[str] | None = None) -> list[Path]:
    """Copy every figure of the executed notebooks to images/<notebook>-<k>.png (figures for documents, from a real run)."""
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
