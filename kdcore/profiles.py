"""Run profiles: parameter sets loaded over the notebooks' own defaults.

Each notebook's `parameters` cell holds working defaults, the quick `cpu` profile's values (the notebook is
the source of truth). profiles/<name>.yaml holds what a profile changes, readable and diffable: a `common:`
block for every notebook, then one block per notebook, and `scaling:` (what was scaled down, per notebook).

smoke  synthetic data, tiny models, 1-2 epochs: the whole suite in a few minutes on 2 CPU cores (CI runs it).
cpu    real CIFAR-10 and EuroSAT scaled to 2 CPU cores: the notebooks' defaults, so its file changes nothing.
full   the seed reports' scale on CPU or GPU: full data, EuroSAT at 64 px, the airbench teacher, 30 epochs, 3 seeds.
gpu    seed-project scale: full data, resnet18_cifar / resnet101 teachers, 30+ epochs, 3 seeds.

`default_profile()` picks gpu when CUDA is available, else cpu.
"""
from __future__ import annotations

import ast
import copy
import json
import os
from pathlib import Path

import torch
import yaml

from .errors import unknown_name

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PROFILE_DIR = REPO_ROOT / "profiles"
NOTEBOOKS = ("01_baseline", "02_logits", "03_hidden_state", "04_regressor", "05_bonus", "06_efficientvit", "07_eurosat")
PROFILES = {path.stem: yaml.safe_load(path.read_text()) for path in sorted(PROFILE_DIR.glob("*.yaml"))}


def scaling_for(profile: str, notebook: str) -> str:
    """What the profile scaled down for this notebook's data and models."""
    scaling = PROFILES[check_profile(profile)]["scaling"]
    return scaling.get(notebook, scaling["common"])


SCALING = {name: " ".join(p["scaling"].values()) for name, p in PROFILES.items()}  # the whole profile, one text


def store_for(profile: str) -> str | None:
    """The run store a profile commits (its top-level `store:` path, relative to the repository), or None: then
    runs are kept under <checkpoint_dir>/store, outside git."""
    return PROFILES[check_profile(profile)].get("store")


def co_trains(profile: str) -> bool:
    """Whether `kdcore report` co-trains the profile's runs by seed before its notebooks run (top-level
    `co_train: true`, kdcore.cotrain): worth it where teacher forwards dominate, as on a CPU at full scale."""
    return bool(PROFILES[check_profile(profile)].get("co_train"))


def default_profile(verbose: bool = True) -> str:
    """gpu when CUDA is available, else cpu; says which and why."""
    name = "gpu" if torch.cuda.is_available() else "cpu"
    if verbose:
        why = "CUDA is available" if name == "gpu" else "no CUDA device found"
        print(f"profile: {name} (default, because {why}; choose with make report PROFILE=smoke|cpu|full|gpu, or --profile)")
    return name


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise unknown_name("profile", profile, PROFILES)
    return profile


def notebook_cell(notebook: str, tag: str) -> str:
    """The source of the notebook's one cell tagged `tag` (its parameters, or code that kdcore.cotrain mirrors)."""
    if notebook not in NOTEBOOKS:
        raise unknown_name("notebook", notebook, NOTEBOOKS)
    cells = json.loads((NOTEBOOK_DIR / f"{notebook}.ipynb").read_text(encoding="utf-8"))["cells"]
    [cell] = [c for c in cells if tag in c["metadata"].get("tags", [])]
    return "".join(cell["source"])


def notebook_defaults(notebook: str) -> dict:
    """The values assigned in the notebook's `parameters` cell (literals only, so they parse without running)."""
    return {node.targets[0].id: ast.literal_eval(node.value)
            for node in ast.parse(notebook_cell(notebook, "parameters")).body}


def params_for(profile: str, notebook: str) -> dict:
    """The full parameters of one notebook under one profile: its defaults, then the profile's `common`, then the
    profile's block for this notebook (a fresh dict: safe to modify)."""
    defaults = notebook_defaults(notebook)
    p = PROFILES[check_profile(profile)]
    return copy.deepcopy({**defaults, **p["common"], **(p.get(notebook) or {}), "profile": profile})


def _injected_by_papermill(namespace: dict) -> set[str]:
    """Names passed with papermill -p: it adds a cell starting "# Parameters", which IPython's input history keeps."""
    cells = [source for source in namespace.get("In", []) if source.startswith("# Parameters\n")]
    return {node.targets[0].id for node in ast.parse(cells[-1]).body} if cells else set()


def notebook_params(notebook: str, namespace: dict | None = None, **overrides) -> tuple[dict, dict]:
    """The parameters of one notebook run, and who set each: "notebook", "profile <name>" or "explicit".

    The profile named by `profile` is loaded over the notebook's defaults (profiles.params_for). Explicit values
    win over both: names papermill injected (-p), values in `namespace` (the notebook's globals()) that differ
    from the notebook's saved defaults (edited in Jupyter), and `overrides`.
    """
    defaults = notebook_defaults(notebook)
    namespace = namespace or {}
    injected = _injected_by_papermill(namespace)
    unknown = sorted((injected | set(overrides)) - set(defaults))
    if unknown:
        raise unknown_name("parameter", unknown[0], defaults)
    explicit = {k: namespace[k] for k in defaults if k in namespace and (k in injected or namespace[k] != defaults[k])}
    explicit.update(overrides)
    profile = explicit.get("profile", defaults["profile"])
    from_profile = params_for(profile, notebook)
    params = {**from_profile, **explicit}
    set_by = {k: "explicit" if v != from_profile[k] or (k == "profile" and k in explicit) else
              f"profile {profile}" if v != defaults[k] else "notebook" for k, v in params.items()}
    return params, set_by


def param_lines(params: dict, set_by: dict, from_profile: dict, defaults: dict, profile: str) -> str:
    """`name = value  # who set it, and the values it replaced`, explicit first: exact, and pastes into a cell."""
    rows = []
    for kind in ("explicit", f"profile {profile}"):
        for k, v in params.items():
            if set_by[k] != kind or (k == "results_dir" and os.environ.get("KDCORE_PUBLISHED_DIR")):
                continue  # the report's stage folder is no parameter a reader set
            note = [kind]
            if kind == "explicit" and from_profile[k] not in (v, defaults[k]):
                note.append(f"profile {profile}: {from_profile[k]!r}")
            if defaults[k] != v:
                note.append(f"notebook: {defaults[k]!r}")
            rows.append((f"{k} = {v!r}", "; ".join(note)))
    width = min(48, max((len(code) for code, _ in rows), default=0))
    at_defaults = sum(kind == "notebook" for kind in set_by.values())
    return "\n".join([f"{code:<{width}}  # {note}" for code, note in rows] +
                     [f"# and {at_defaults} parameters at the notebook's defaults (its parameters cell)"])
