"""Running one notebook for the report: papermill in a worker thread with progress lines, the HTML page
(formulas typeset by a local MathJax), a failure page when rendering fails, and publishing a run's pages from
its stage folder into the published one.
"""
from __future__ import annotations

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
import threading
import time
from pathlib import Path

from . import profiles as _profiles
from .atomic import atomic_write_text

REPO_ROOT = _profiles.REPO_ROOT
NOTEBOOK_DIR = _profiles.NOTEBOOK_DIR

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


def execute(nb: str, output: Path, params: dict) -> None:
    """papermill.execute_notebook in a worker thread, streaming progress lines.

    Why a thread: in the main thread nbclient replaces Python's SIGINT handler with its own, which shuts the
    kernel down and lets the report go on as if the notebook had crashed. Here Ctrl-C raises KeyboardInterrupt
    in the main thread; the kernel is interrupted like Jupyter's stop button does (so its `finally` blocks
    remove temporary files), nbclient shuts it down, and KeyboardInterrupt propagates.
    """
    import papermill

    logging.getLogger("tornado.general").addFilter(_drop_closed_socket_callbacks)  # once: a filter is kept once

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
