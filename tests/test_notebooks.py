"""The notebooks are sources people edit in Jupyter: clean, linted, with concrete defaults. They run the same from
notebooks/ as from the repository root; profiles load over their defaults, explicit values win, every page says
which run produced it, and the Colab cell never fails."""
import ast
import functools
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import papermill
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from pyflakes.checker import Checker

from kdcore import experiments as ex
from kdcore import provenance
from kdcore import profiles
from kdcore.errors import ConfigError
from kdcore.runner import ensure_kernelspec

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = profiles.NOTEBOOKS


def read(nb: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{nb}.ipynb", as_version=4)


def parameters_cell(nb: str) -> str:
    [cell] = [c for c in read(nb).cells if "parameters" in c.metadata.get("tags", [])]
    return cell.source


def papermill_cell(**params) -> str:
    """The cell papermill injects for `-p name value` (what IPython's input history then holds)."""
    return "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())


def test_the_notebooks_are_the_only_sources():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == list(NOTEBOOKS)
    assert not list(NOTEBOOK_DIR.glob("*.py"))  # no generator whose next run would overwrite edits made in Jupyter


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_notebook_is_clean_and_lints(nb):
    notebook = read(nb)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in notebook.cells) == 1
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    source = "\n".join(TransformerManager().transform_cell(c.source) for c in code)  # magics -> get_ipython()
    messages = Checker(ast.parse(source), filename=nb, builtins={"display", "get_ipython"}).messages
    assert not messages, [str(m) for m in messages]


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_parameters_are_concrete_literals(nb):
    source = parameters_cell(nb)
    body = ast.parse(source).body
    assert all(isinstance(s, ast.Assign) and len(s.targets) == 1 for s in body)
    defaults = profiles.notebook_defaults(nb)  # raises when a value is not a literal
    assert list(papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{nb}.ipynb"))) == list(defaults)  # same names
    for name in ("profile", "dataset", "teacher", "student", "epochs", "teacher_epochs", "lr", "batch_size", "seeds"):
        assert defaults[name] is not None, name
    assert defaults["profile"] == "cpu" and defaults["seeds"] == [0, 1, 2]
    for line in source.splitlines():  # a None default says on its own line what None means
        if line.split("#")[0].strip().endswith("= None"):
            assert "#" in line, line


def test_setup_call_is_short_and_names_its_notebook():
    for nb in NOTEBOOKS:
        code = [c.source for c in read(nb).cells if c.cell_type == "code"]
        assert sum(f'ctx = ex.setup("{nb}", globals())' in s for s in code) == 1, nb


def test_colab_cell_skips_with_one_line_or_clones(monkeypatch, capsys):
    cells = {[c for c in read(nb).cells if c.cell_type == "code"][0].source for nb in NOTEBOOKS}
    assert len(cells) == 1  # the same first code cell everywhere
    [cell] = cells
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("KDCORE_REPO", raising=False)

    exec(cell, {})  # not on Colab: nothing happens
    assert calls == [] and capsys.readouterr().out == ""

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(cell, {})  # on Colab without a repository URL: one line saying what to set, nothing run
    out = capsys.readouterr().out
    assert calls == [] and len(out.strip().splitlines()) == 1 and "KDCORE_REPO" in out

    monkeypatch.setenv("KDCORE_REPO", "https://example.org/kdcore.git")
    exec(cell, {})
    assert calls[0][:2] == ["git", "clone"] and "https://example.org/kdcore.git" in calls[0]
    assert calls[1][1:5] == ["-m", "pip", "install", "-q"] and sys.path[0] == calls[0][-1]


def test_profile_loads_over_the_defaults_and_explicit_values_win():
    cpu, smoke = profiles.params_for("cpu", "02_logits"), profiles.params_for("smoke", "02_logits")
    assert cpu["epochs"] == 5 and smoke["epochs"] == 1 and smoke["dataset"] == "synthetic"
    defaults = profiles.notebook_defaults("02_logits")

    params, set_by = profiles.notebook_params("02_logits", dict(defaults))  # a plain run in Jupyter
    assert params == cpu and set(set_by.values()) == {"notebook"}

    injected = papermill_cell(profile="smoke", epochs=5, temperature=2.0)  # epochs == the notebook default
    namespace = {**defaults, "profile": "smoke", "epochs": 5, "temperature": 2.0, "In": ["", injected]}
    params, set_by = profiles.notebook_params("02_logits", namespace)
    assert params == {**smoke, "epochs": 5, "temperature": 2.0}  # -p wins over the profile, even at the default
    assert set_by["epochs"] == set_by["temperature"] == "explicit" and set_by["dataset"] == "profile smoke"
    assert set_by["alpha"] == "notebook"

    edited = {**defaults, "profile": "smoke", "lr": 0.1}  # changed in the parameters cell, no papermill
    params, set_by = profiles.notebook_params("02_logits", edited, seeds=[0, 1, 2])
    assert params == {**smoke, "lr": 0.1, "seeds": [0, 1, 2]} and set_by["lr"] == set_by["seeds"] == "explicit"

    with pytest.raises(ConfigError, match="epochz.*epochs"):
        profiles.notebook_params("02_logits", {"In": [papermill_cell(epochz=3)], "epochz": 3})
    with pytest.raises(ConfigError, match="nope"):
        profiles.notebook_params("02_logits", profile="nope")


def test_relative_paths_resolve_to_the_repository_root(monkeypatch, tmp_path):
    monkeypatch.chdir(NOTEBOOK_DIR)  # where Jupyter starts the kernel
    assert ex.project_path("results") == REPO / "results"
    assert ex.project_path("../shared/data") == REPO.parent / "shared" / "data"
    assert ex.project_path(tmp_path) == tmp_path
    before = set(NOTEBOOK_DIR.rglob("*"))
    ctx = ex.setup("01_baseline", profile="smoke", threads=None)  # default results_dir, checkpoint_dir
    assert ctx.params["results_dir"] == str(REPO / "results")
    assert ctx.params["checkpoint_dir"] == str(REPO / "checkpoints")
    assert set(NOTEBOOK_DIR.rglob("*")) == before


def test_data_root_parameter_then_kdcore_data_then_shared(monkeypatch, tmp_path):
    monkeypatch.chdir(NOTEBOOK_DIR)
    monkeypatch.delenv("KDCORE_DATA", raising=False)
    assert ex.resolve_data_root(None) == REPO.parent / "shared" / "data"
    monkeypatch.setenv("KDCORE_DATA", str(tmp_path))
    assert ex.resolve_data_root(None) == tmp_path
    assert ex.resolve_data_root("data") == REPO / "data"  # an explicit parameter wins, relative to the repo root
    assert profiles.params_for("gpu", "07_eurosat")["data_root"] is None  # so every profile honours KDCORE_DATA


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_short_hash_dirty_flag_or_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    assert provenance.git_commit() == "unknown"  # not a git checkout

    git = functools.partial(_git, tmp_path)
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-qm", "first")
    (tmp_path / "untracked.txt").write_text("x")
    assert provenance.git_commit() == git("rev-parse", "--short", "HEAD")
    (tmp_path / "a.txt").write_text("2")
    assert provenance.git_commit() == git("rev-parse", "--short", "HEAD") + "+dirty"
    assert provenance.run_info({"profile": "smoke"})["commit"] == provenance.git_commit()
    monkeypatch.setenv("KDCORE_COMMIT", "abc1234")
    assert provenance.git_commit() == "abc1234"  # a copied tree says which commit it was made from, even with a stale .git


def test_setup_prints_which_run_this_is(capsys):
    namespace = {"In": [papermill_cell(profile="smoke", epochs=2)], "profile": "smoke", "epochs": 2}
    ctx = ex.setup("07_eurosat", namespace, threads=None)  # threads=None: leave this process's torch threads alone
    out = capsys.readouterr().out
    assert f"commit {provenance.git_commit()}" in out and "profile smoke" in out
    assert f"scaling (smoke): {profiles.scaling_for('smoke', '07_eurosat')}" in out
    assert "64 px" in profiles.scaling_for("smoke", "07_eurosat")  # this notebook's data, not notebook 01's
    lines = [" ".join(line.split()) for line in out.splitlines()]  # `name = value  # who set it; replaced values`
    assert "epochs = 2 # explicit; profile smoke: 1; notebook: 4" in lines
    assert "dataset = 'synthetic' # profile smoke; notebook: 'eurosat'" in lines
    assert not any(line.startswith("alpha = ") for line in lines)  # at the notebook's default: not listed
    at_defaults = [line for line in lines if line.endswith("parameters at the notebook's defaults (its parameters cell)")]
    assert len(at_defaults) == 1 and lines.index("epochs = 2 # explicit; profile smoke: 1; notebook: 4") < lines.index(at_defaults[0])
    assert ctx.extra["provenance"]["set_by"]["epochs"] == "explicit"


def test_papermill_runs_inside_notebooks_and_leaves_nothing_there(tmp_path):
    """`papermill 02_logits.ipynb out.ipynb -p profile smoke` from notebooks/. Outputs go to tmp_path through paths
    relative to the repository root (taken from notebooks/ they would land elsewhere, and the test would fail)."""
    ensure_kernelspec()
    rel = os.path.relpath(tmp_path, REPO)
    before = set(NOTEBOOK_DIR.rglob("*"))
    out = tmp_path / "out.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", "02_logits.ipynb", str(out), "--no-progress-bar",
                           "-p", "profile", "smoke", "-p", "n_examples", "8",
                           "-p", "results_dir", f"{rel}/results", "-p", "checkpoint_dir", f"{rel}/checkpoints"],
                          cwd=NOTEBOOK_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(NOTEBOOK_DIR.rglob("*")) == before
    result = json.loads((tmp_path / "results" / "smoke" / "02_logits.json").read_text())
    assert result["params"]["epochs"] == 1 and result["params"]["dataset"] == "synthetic"  # the smoke profile
    assert result["params"]["n_examples"] == 8  # -p wins over smoke's 6, though 8 is the notebook default
    assert result["run_info"]["commit"] == provenance.git_commit() and list((tmp_path / "checkpoints").glob("store/teachers/*.pt"))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_run_records_the_commit_it_started_from(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(provenance, "_AT_START", {})

    git = functools.partial(_git, tmp_path)
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-qm", "first")
    first = git("rev-parse", "--short", "HEAD")
    assert provenance.started_commit() == first
    (tmp_path / "a.txt").write_text("2")
    git("commit", "-qam", "second, made while the run trained")
    assert provenance.git_commit() != first and provenance.provenance()["commit"] == first
