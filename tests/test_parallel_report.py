"""benchmarks/parallel_report.py mirrors the notebooks' runs: after its workers, each report trains nothing."""
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def trained_runs(ipynb: Path) -> list[str]:
    """Runs the executed notebook trained itself (run_seeds prints "<label> seed N: from the store ..." for the others)."""
    text = "".join("".join(o.get("text", "")) for c in json.loads(ipynb.read_text())["cells"] for o in c.get("outputs", []))
    reused = set(re.findall(r"^(.+ seed \d+): from the store", text, re.M))
    finished = re.findall(r"^(.+ seed \d+): test_acc=", text, re.M)
    assert finished, f"{ipynb.name} printed no runs"
    return [r for r in finished if r not in reused]


def test_reports_reuse_every_run_the_workers_trained(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/parallel_report.py", "--profile", "smoke", "--notebooks", "02", "05",
                          "06", "07", "--jobs", "2", "--out", str(tmp_path / "results"), "--logs", str(tmp_path / "logs"),
                          "--param", f"checkpoint_dir={tmp_path / 'checkpoints'}", "--param", "seeds=[0]"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"^05 at β=10 s0 +ok", out.stdout, re.M) and re.search(r"^06 report +ok", out.stdout, re.M)
    assert not re.search(r" (failed|stopped|not started) ", out.stdout), out.stdout[-3000:]
    pages = tmp_path / "results" / "smoke"
    assert trained_runs(pages / "02_logits.ipynb") == []  # kd, the α×T sweep and the shared baseline
    assert trained_runs(pages / "05_bonus.ipynb") == []  # its own term too: stored under a hash of its code
    assert trained_runs(pages / "06_efficientvit.ipynb") == trained_runs(pages / "07_eurosat.ipynb") == []
    index = (pages / "index.html").read_text()
    assert all(f'href="{nb}.html"' in index for nb in ("02_logits", "05_bonus", "06_efficientvit", "07_eurosat"))
