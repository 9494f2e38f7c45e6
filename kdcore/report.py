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
import errno
import html
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import profiles as _profiles
from .data import atomic_write_text
from .errors import ConfigError, unknown_name
from .findings import findings

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SET_BY_REPORT = {"profile": "--profile", "results_dir": "--out"}  # parameters the report sets itself
PUBLISHED_ENV = "KDCORE_PUBLISHED_DIR"  # the report's --out, for the kernels (they write into a stage folder)
# Lines of the kernel's stdout shown while a notebook runs (what kdcore.train and kdcore.experiments print).
PROGRESS_LINE = re.compile(r"^(epoch +\d+/\d+ |teacher \S+: (training|test accuracy)|.+ seed \d+: test_acc=)")
MATHJAX = "tex-svg-full.js"  # MathJax 3, one self-contained file (SVG glyphs, no web fonts), from django-static-mathjax
MATHJAX_CDN = f"https://cdn.jsdelivr.net/npm/mathjax@3/es5/{MATHJAX}"
# The lab template, offline: MathJax 3 from ./_static instead of nbconvert's MathJax 2 from a CDN, and without
# require.js and mermaid (loaded from CDNs, used by nothing here).
PAGE_TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\(', '\\)']], processEscapes: true}};</script>
<script defer src="{{ resources.mathjax_url }}"></script>
{%- endblock html_head_js_mathjax -%}
"""


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


# --------------------------------------------------------------------------- running one notebook
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


class ProgressLines:
    """papermill's stdout_file: prints the kernel's progress lines (PROGRESS_LINE), indented, as they arrive."""

    def __init__(self, indent: str = "      "):
        self.indent, self.pending = indent, ""

    def write(self, text: str) -> None:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if PROGRESS_LINE.match(line.strip()):
                print(self.indent + line.strip(), flush=True)

    def flush(self) -> None:
        pass


def _kernel_manager_class():
    from jupyter_client.manager import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        """nbclient's kernel manager, remembered so that the main thread can interrupt its kernel on Ctrl-C."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            KernelManager.current = self

    KernelManager.current = None
    return KernelManager


def _signal_kernel(km, signum: int) -> None:
    """Send `signum` to the kernel's process group (it runs in its own session: a terminal's Ctrl-C misses it)."""
    pgid = getattr(getattr(km, "provisioner", None), "pgid", None)
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def _drop_closed_socket_callbacks(record: logging.LogRecord) -> bool:
    """Logging filter for tornado: drop the one known-benign shutdown race, a ZMQ stream callback that fires after
    jupyter_client closed the kernel's socket ("Socket operation on non-socket"); every other record passes."""
    err = record.exc_info[1] if record.exc_info else None
    return not (type(err).__name__ == "ZMQError" and getattr(err, "errno", None) == errno.ENOTSOCK)


logging.getLogger("tornado.general").addFilter(_drop_closed_socket_callbacks)


def execute(nb: str, output: Path, params: dict) -> None:
    """papermill.execute_notebook in a worker thread, streaming progress lines.

    Why a thread: in the main thread nbclient replaces Python's SIGINT handler with its own, which shuts the
    kernel down and lets the report go on as if the notebook had crashed. Here Ctrl-C raises KeyboardInterrupt
    in the main thread; the kernel is interrupted like Jupyter's stop button does (so its `finally` blocks
    remove temporary files), nbclient shuts it down, and KeyboardInterrupt propagates.
    """
    import papermill

    manager, failure = _kernel_manager_class(), []

    def work():
        try:
            papermill.execute_notebook(
                str(NOTEBOOK_DIR / f"{nb}.ipynb"), str(output), parameters=params, kernel_name="python3",
                cwd=str(REPO_ROOT), progress_bar=False, stdout_file=ProgressLines(), kernel_manager_class=manager,
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"])  # its log is noise here (TCP warning, ...)
        except BaseException as err:  # handed to the main thread
            failure.append(err)

    worker = threading.Thread(target=work, name=f"papermill {nb}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        deadline, sent = time.monotonic() + 60, 0.0
        while worker.is_alive():
            if time.monotonic() > deadline:
                _signal_kernel(manager.current, signal.SIGKILL)
            elif time.monotonic() - sent > 5:  # again if it was between cells or not yet started
                _signal_kernel(manager.current, signal.SIGINT)
                sent = time.monotonic()
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C does not skip the clean-up
                worker.join(0.5)
        raise
    if failure:
        raise failure[0]


def render_html(ipynb: Path, html_path: Path, show_code: bool) -> None:
    """HTML page of an executed notebook, formulas typeset by the MathJax copy in ../_static/ (works offline)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_loaders=[DictLoader({"kdcore.html.j2": PAGE_TEMPLATE})], template_file="kdcore.html.j2",
                            mathjax_url=f"_static/{MATHJAX}" if mathjax_source() else MATHJAX_CDN,
                            exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(ipynb, as_version=4))
    atomic_write_text(body, html_path)


def write_failure_page(html_path: Path, nb: str, err: BaseException) -> None:
    """A plain page with the rendering error and its traceback, where the notebook's page could not be made."""
    import traceback

    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    atomic_write_text(f"<!doctype html><meta charset='utf-8'><title>{html.escape(nb)}: page failed</title>"
                      f"<h1>{html.escape(nb)}: the notebook ran, its page failed to render</h1>"
                      f"<p>Its results are in {html.escape(nb)}.ipynb and {html.escape(nb)}.json.</p>"
                      f"<pre>{html.escape(trace)}</pre>\n", html_path)


def mathjax_source() -> Path | None:
    """MathJax as shipped by the django-static-mathjax wheel (plain static files, no Django needed), if installed."""
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    path = Path(spec.origin).parent / "static" / "mathjax" / "es5" / MATHJAX if spec and spec.origin else None
    return path if path and path.is_file() else None


def run_notebook(nb: str, params: dict, out_dir: Path, show_code: bool) -> dict:
    """Execute `nb` into out_dir (<nb>.ipynb, .html and, written by the notebook, .json); returns its status."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ipynb = out_dir / f"{nb}.ipynb"
    status = {"notebook": nb, "status": "ok", "error": "", "seconds": 0.0, "executed": False}
    t0 = time.perf_counter()
    try:
        execute(nb, ipynb, params)
        status["executed"] = True
    except Exception as err:  # keep going: the next notebooks still run
        status.update(status="failed", error=_last_line(err))
    status["seconds"] = round(time.perf_counter() - t0, 1)
    if ipynb.exists():
        try:
            render_html(ipynb, out_dir / f"{nb}.html", show_code)
        except Exception as err:  # the page says why, and is published as <nb>.failed.html
            first = (str(err).strip().splitlines() or [""])[0]
            status.update(status="failed", error=status["error"] or f"HTML rendering: {type(err).__name__}: {first}"[:400])
            write_failure_page(out_dir / f"{nb}.html", nb, err)
    elif status["status"] == "ok":
        status.update(status="failed", error="papermill wrote no output notebook")
    if status["status"] == "ok" and not (out_dir / f"{nb}.json").exists():
        status.update(status="failed", error=f"the notebook wrote no {nb}.json")
    if (out_dir / f"{nb}.json").exists():
        runs = json.loads((out_dir / f"{nb}.json").read_text(encoding="utf-8")).get("runs", [])
        status["from_store"] = sum(bool(r.get("reused")) for r in runs)
        status["trained"] = len(runs) - status["from_store"]
    return status


def _store_counts(statuses: list[dict]) -> str:
    stored, trained = (sum(s.get(k, 0) for s in statuses) for k in ("from_store", "trained"))
    return f"{stored} run{'s' * (stored != 1)} from the run store, {trained} trained"


# --------------------------------------------------------------------------- publishing
@contextlib.contextmanager
def sigint_ignored():
    """Ctrl-C is ignored while the published folder is updated (a few renames): it is never left half-updated."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def publish(stage: Path, published: Path, statuses: list[dict]) -> None:
    """Move this run's pages from the stage folder into the published one (same file system: renames).

    A notebook that ran replaces its .ipynb/.html/.json and loses an old .failed page; one that failed keeps its
    last good pages and gets <nb>.failed.ipynb/.html. One that ran to the end but whose page failed to render
    still publishes its results (.ipynb and .json), and loses its old page, which would no longer match them.
    """
    published.mkdir(parents=True, exist_ok=True)
    for s in statuses:
        nb, ok = s["notebook"], s["status"] == "ok"
        results_ok = s.get("executed") and (stage / f"{nb}.json").exists()
        if results_ok and not ok:
            (published / f"{nb}.html").unlink(missing_ok=True)
        for ext in ("ipynb", "html", "json"):
            src = stage / f"{nb}.{ext}"
            if (ok or (results_ok and ext != "html")) and src.exists():
                os.replace(src, published / f"{nb}.{ext}")
                (published / f"{nb}.failed.{ext}").unlink(missing_ok=True)
            elif not ok and src.exists() and ext != "json":
                os.replace(src, published / f"{nb}.failed.{ext}")
    source = mathjax_source()
    target = published / "_static" / MATHJAX
    if source and (not target.exists() or target.read_bytes() != source.read_bytes()):
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(f".{MATHJAX}.{os.getpid()}.tmp")  # reports publishing at once each use their own
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)


# --------------------------------------------------------------------------- index + leaderboard
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
    """index.html, leaderboard.csv and leaderboard.md from every JSON in the published folder."""
    e = html.escape
    results = load_results(folder)
    board = leaderboard(results)
    atomic_write_text(board.to_csv(index=False), folder / "leaderboard.csv")
    write_markdown(board, folder / "leaderboard.md")

    def link(href, text):
        return f"<a href='{e(href)}'>{e(text)}</a>" if href else e(text)

    nb_rows = notebook_rows(folder, results, this_run)
    status_html = "".join(
        f"<tr class='{r['status'].replace(' ', '-')}'><td>{link(r['page'], r['notebook'])}</td>"
        f"<td>{link(r['failed_page'], r['status'])}</td><td>{cell(r['this_run'])}</td><td>{e(cell(r['results_from']))}</td>"
        f"<td>{cell(r['seconds'], '.0f')}</td><td>{e(cell(r['device']))}</td><td>{e(r['error'])}</td></tr>"
        for r in nb_rows)
    findings_html = "".join(f"<tr class='{e(f['status'].replace(' ', '-'))}'>" + "".join(
        f"<td>{e(f[k])}</td>" for k in ("claim", "seed", "goal", "ours", "status")) + "</tr>" for f in findings(results))
    shown = display_rows(board)
    header = "".join(f"<th>{e(c)}</th>" for c in (shown[0] if shown else ["notebook"]))
    board_html = "".join(
        f"<tr><td>{link(raw['page'], r['notebook'])}</td>" + "".join(f"<td>{e(v)}</td>" for k, v in r.items() if k != "notebook")
        + "</tr>" for r, raw in zip(shown, board.to_dict("records")))
    same_scaling: dict[str, list[str]] = {}  # text -> notebooks, each text once
    for r in nb_rows:
        if r["scaling"]:
            same_scaling.setdefault(r["scaling"], []).append(r["notebook"])
    scaling = "".join(f"<li><b>{e(', '.join(nbs))}</b>: {e(text)}</li>" for text, nbs in same_scaling.items())
    failed = [r["notebook"] for r in nb_rows if r["status"] == "failed"]
    ran = ", ".join(s["notebook"] for s in this_run)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>kdcore report · {e(profile)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1500px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:left}} tr.failed td{{background:#fdd}} th{{background:#eee}}
tr.not-run td{{color:#888}}</style>
</head><body>
<h1>kdcore report — profile <code>{e(profile)}</code></h1>
<p><b>{'FAILED in their latest run: ' + e(', '.join(failed)) if failed else 'Every notebook with results ran successfully.'}</b></p>
<p>This run: {e(ran)} ({seconds:.0f} s). Other rows are from earlier runs, as their “results from” column says.</p>
<h2>Findings</h2>
<p>The claims of the reports kdcore grew from, at this profile's scale (see Scaling below): their number, ours from
the notebooks' results (paired 95 % interval of a gain over the student alone), and whether our goal is met.</p>
<table><tr><th>claim</th><th>seed report</th><th>goal</th><th>ours</th><th>status</th></tr>{findings_html}</table>
<h2>Notebooks</h2>
<table><tr><th>notebook</th><th>latest run</th><th>in this run</th><th>results from</th><th>seconds</th><th>device</th>
<th>error (last line)</th></tr>{status_html}</table>
<h2>Leaderboard</h2>
<p>Student test accuracy and macro-F1 as mean ± std over seeds (n). Δ is the mean gain over the notebook's baseline
student (same architecture, same seeds) with its paired 95 % t interval; “significant” means the paired t-test's
p-value, Holm-adjusted over the rows of the notebook's table (p (Holm)), is below 0.05, which keeps the chance of any
false “significant” in that table at 5 % (– with one seed, or for another architecture). Checkpoints were chosen on the
validation split; the test split was
used once per run. Latency: CPU, batch 1, median of interleaved repeats, with the thread count used.</p>
<table><tr>{header}</tr>{board_html}</table>
<h2>Scaling</h2><ul>{scaling}</ul>
<p>Also: <a href="leaderboard.csv">leaderboard.csv</a>, <a href="leaderboard.md">leaderboard.md</a>.</p>
</body></html>"""
    return atomic_write_text(page, folder / "index.html")


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


def _co_train(plan: Plan, params: list[str]) -> int:
    """kdcore.cotrain before the notebooks: 0 when done, 130 when interrupted (finished runs stay stored, the
    others keep their epochs for the next try), 2 on a configuration error."""
    from . import cotrain

    try:
        given = {k: parse_value(v) for k, v in (item.split("=", 1) for item in params)}
        cotrain.co_train(plan.profile, [nb for nb in plan.notebooks if nb in cotrain.MIRRORED], given)
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
    ap.add_argument("--no-cache", action="store_true",
                    help="train every run again instead of reusing identical finished runs (same as --param cache=false)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.from_store and args.no_cache:
            raise ConfigError("--from-store reads the run store and --no-cache ignores it: choose one.")
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
        status = _co_train(plan, args.param)
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
