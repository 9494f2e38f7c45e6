"""The report: one end-to-end smoke run (python -m kdcore report --profile smoke) plus fast argument checks."""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kdcore import report
from kdcore.errors import ConfigError
from kdcore.profiles import NOTEBOOKS

REPO = Path(__file__).resolve().parents[1]


def test_unknown_profile_lists_valid_names(capsys):
    with pytest.raises(ConfigError, match="smoke.*cpu|cpu.*smoke"):
        report.make_plan("nope", None, "results")
    assert report.main(["--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and "gpu" in err and "smoke" in err


def test_unknown_param_lists_valid_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        report.make_plan("smoke", ["01"], tmp_path, params=["epochz=3"])
    msg = str(info.value)
    assert "epochz" in msg and "epochs" in msg and "teacher_epochs" in msg
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written
    plan = report.make_plan("smoke", ["01", "02"], tmp_path, params=["epochs=2", "temperature=3"])
    assert plan.parameters["01_baseline"]["epochs"] == 2 and "temperature" not in plan.parameters["01_baseline"]
    assert plan.parameters["02_logits"]["temperature"] == 3


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_committed_notebooks_are_clean(nb):
    notebook = nbformat.read(REPO / "notebooks" / f"{nb}.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in notebook.cells) == 1
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert "google.colab" in code[0].source and "%cd" not in "".join(c.source for c in code)


def test_smoke_report_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdcore", "report", "--profile", "smoke", "--out", str(tmp_path),
                           "--figures", str(tmp_path / "images")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "smoke"
    index = (out / "index.html").read_text()
    for nb in NOTEBOOKS:
        assert (out / f"{nb}.html").stat().st_size > 1000
        res = json.loads((out / f"{nb}.json").read_text())
        assert res["metrics"] and all(0 <= m["test_acc_mean"] <= 1 for m in res["metrics"])
        assert f"href='{nb}.html'" in index
    assert "FAILED" not in index and not re.search(r"<td>failed</td>", index)
    assert (out / "leaderboard.csv").exists() and (out / "leaderboard.md").exists()
    figures = {p.name for p in (tmp_path / "images").iterdir()}
    assert {f"{nb}-1.png" for nb in NOTEBOOKS} <= figures  # every notebook plots at least its loss curves
