"""The report: an end-to-end smoke run, Ctrl-C during a run, publishing, tables, and argument checks."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest

from kdcore import report, runner, site
from kdcore.errors import ConfigError
from kdcore.profiles import NOTEBOOKS

REPO = Path(__file__).resolve().parents[1]


def test_unknown_profile_lists_valid_names(capsys):
    with pytest.raises(ConfigError, match="smoke.*cpu|cpu.*smoke"):
        report.make_plan("nope", None, "results")
    assert report.main(["--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown profile 'nope'") and "gpu" in err and "smoke" in err


def test_group_size_below_one_is_refused_before_anything_runs(capsys):
    assert report.main(["--profile", "smoke", "--notebooks", "01", "--group-size", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --group-size 0: a group holds at least 1 run")


def test_unknown_param_lists_valid_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        report.make_plan("smoke", ["01"], tmp_path, params=["epochz=3"])
    msg = str(info.value)
    assert "epochz" in msg and "epochs" in msg and "teacher_epochs" in msg
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written
    plan = report.make_plan("smoke", ["01", "02"], tmp_path, params=["epochs=2", "temperature=3"])
    assert plan.parameters["01_baseline"]["epochs"] == 2 and "temperature" not in plan.parameters["01_baseline"]
    assert plan.parameters["02_logits"]["temperature"] == 3


@pytest.mark.parametrize("param, message", [
    ("temperature=abc", "--param temperature=abc: temperature takes float"),
    ("epochs=2.5", "epochs takes int"),
    ("epochs=true", "epochs takes int"),
    ("epochs=none", "epochs takes int, not NoneType None"),
    ("seeds=3", "seeds takes list"),
    ("seeds=0,1", "seeds takes list, not tuple (0, 1). Write it as a list: --param seeds=[0,1]."),
    ("seeds=[]", "--param seeds=[]: seeds must be a non-empty list of seeds >= 0"),
    ("alpha=1.5", "--param alpha=1.5: alpha must be in [0, 1]"),
    ("temperature=0", "temperature must be > 0"),
    ("epochs=0", "epochs must be >= 1"),
    ("train_limit=0", "train_limit must be >= 1, or None"),
    ("sweep_alphas=[0.5,2]", "sweep_alphas must be a list of values in [0, 1]"),
    ("teacher_kwargs=[8]", "teacher_kwargs takes dict"),
    ("profile=cpu", "--param profile=... is set by the report; use --profile instead"),
    ("results_dir=/tmp/x", "use --out instead"),
    ("epochs", "--param expects KEY=VALUE"),
])
def test_param_values_are_type_and_range_checked_before_anything_runs(tmp_path, param, message):
    with pytest.raises(ConfigError) as info:
        report.make_plan("smoke", ["02"], tmp_path, params=[param])
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_every_profile_is_in_range():
    for profile in ("smoke", "cpu", "full", "gpu"):
        report.make_plan(profile, None, "results")


def test_param_values_of_the_right_type_pass():
    plan = report.make_plan("smoke", ["02", "06"], "results", params=[
        "temperature=3", "seeds=[0]", "student=cnn_small", "teacher_kwargs={\"width\": 4}", "pretrained=false",
        "max_steps_per_epoch=5", "data_root=none"])
    p = plan.parameters["02_logits"]
    assert p["temperature"] == 3.0 and isinstance(p["temperature"], float) and p["seeds"] == [0]
    assert p["student"] == "cnn_small" and p["teacher_kwargs"] == {"width": 4} and p["max_steps_per_epoch"] == 5
    assert plan.parameters["06_efficientvit"]["pretrained"] is False and p["data_root"] is None


def test_progress_lines_are_the_run_lines_only(capsys):
    sink = runner.ProgressLines(indent="  ")
    for chunk in ["02_logits | profile smoke\nparameters: {...}\nteacher tiny_resnet: training 2 ep", "ochs\nepoch   1/2 ",
                  "ce=2.25 val_acc=0.1\nkd seed 0: test_acc=0.1000 test_f1=0.0185\nwrote results/x.json\n"]:
        sink.write(chunk)
    assert capsys.readouterr().out.splitlines() == [
        "  teacher tiny_resnet: training 2 epochs", "  epoch   1/2 ce=2.25 val_acc=0.1", "  kd seed 0: test_acc=0.1000 test_f1=0.0185"]


# --------------------------------------------------------------------------- publishing and the index
def _results(nb, gains=True, **metric):
    """A results JSON as kdcore.experiments.write_results writes it (gains=False: the older clear_gain schema)."""
    def row(method, acc, **kw):
        m = {"method": method, "n": 2, "test_acc": f"{acc:.4f} ± 0.0100 (n=2)", "test_f1": f"{acc - 0.01:.4f} ± 0.0100 (n=2)",
             "test_acc_mean": acc, "test_acc_std": 0.01, "test_f1_mean": acc - 0.01, "is_baseline": method == "baseline",
             "params": 94762, "size_mb": 0.381, "latency_ms": 0.7812345, "threads": 2, "seconds_per_run": 27.81234}
        if gains:
            m.update(delta_acc=0.0, delta_ci_low=float("nan"), delta_ci_high=float("nan"), significant=None)
        else:
            m.update(delta_acc=0.0, clear_gain=False)
        m.update(kw)
        return m

    kd = ({"delta_acc": 0.0123, "delta_ci_low": 0.0040, "delta_ci_high": 0.0206, "significant": True} if gains
          else {"delta_acc": 0.0281, "clear_gain": True})
    metrics = [row("baseline", 0.5235), row("kd", 0.5516, **{**kd, **metric}),
               row("student_light (kd)", 0.6583, delta_acc=None, significant=None, params=None, latency_ms=None)]
    return {"notebook": nb, "metrics": metrics, "teacher": {"name": "tiny_resnet", "test_acc": 0.642412},
            "run_info": {"timestamp": "2026-11-23T06:04:13+00:00", "seconds": 61.2, "device": "cpu (2 cores, 2 threads)",
                         "scaling": "CIFAR-10 scaled to a 2-core CPU"}}


def _fake_runs(monkeypatch, outcome):
    """Replace the papermill run by one that writes the pages a notebook run writes (or fails, per `outcome`)."""
    def run_notebook(nb, params, out_dir, show_code):
        out_dir.mkdir(parents=True, exist_ok=True)
        assert Path(params["results_dir"]).parent == out_dir.parent.parent  # the stage, not the published folder
        (out_dir / f"{nb}.ipynb").write_text(f"new {nb}")
        (out_dir / f"{nb}.html").write_text(f"new {nb}")
        if outcome[nb] == "ok":
            (out_dir / f"{nb}.json").write_text(json.dumps(_results(nb)))
            return {"notebook": nb, "status": "ok", "error": "", "seconds": 1.0}
        return {"notebook": nb, "status": "failed", "error": "ValueError: boom", "seconds": 1.0}

    monkeypatch.setattr(report, "run_notebook", run_notebook)


def _tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _published(tmp_path, notebooks=("01_baseline", "02_logits")):
    """A published report folder from an earlier run (old schema in 01: clear_gain)."""
    folder = tmp_path / "smoke"
    folder.mkdir(parents=True)
    for nb in notebooks:
        (folder / f"{nb}.json").write_text(json.dumps(_results(nb, gains=nb != "01_baseline")))
        (folder / f"{nb}.ipynb").write_text(f"old {nb}")
        (folder / f"{nb}.html").write_text(f"old {nb}")
    return folder


def test_partial_run_replaces_only_its_own_pages_and_keeps_the_other_rows(tmp_path, monkeypatch):
    folder = _published(tmp_path)
    before = _tree(folder)
    _fake_runs(monkeypatch, {"02_logits": "ok", "05_bonus": "ok"})
    plan = report.Plan("smoke", ["02_logits", "05_bonus"], tmp_path, False, {"02_logits": {}, "05_bonus": {}})
    assert report.run(plan) == 0
    after = _tree(folder)
    assert {k: v for k, v in after.items() if k.startswith("01_")} == {k: v for k, v in before.items() if k.startswith("01_")}
    assert (folder / "02_logits.html").read_text() == "new 02_logits" and (folder / "05_bonus.json").exists()
    board = (folder / "leaderboard.md").read_text()
    assert board.count("| 01_baseline |") == 3 and board.count("| 02_logits |") == 3 and board.count("| 05_bonus |") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke"]  # the stage folder is gone
    index = (folder / "index.html").read_text()
    assert 'href="01_baseline.html"' in index and 'href="05_bonus.html"' in index


def test_failed_notebook_keeps_its_last_good_page(tmp_path, monkeypatch, capsys):
    folder = _published(tmp_path)
    old = (folder / "02_logits.json").read_bytes()
    _fake_runs(monkeypatch, {"02_logits": "failed"})
    assert report.run(report.Plan("smoke", ["02_logits"], tmp_path, False, {"02_logits": {}})) == 1
    assert 'rerun just them with make report PROFILE=smoke NOTEBOOKS="02"' in capsys.readouterr().out
    assert (folder / "02_logits.json").read_bytes() == old and (folder / "02_logits.html").read_text() == "old 02_logits"
    assert (folder / "02_logits.failed.html").read_text() == "new 02_logits"
    index = (folder / "index.html").read_text()
    assert "FAILED in their latest run: 02_logits" in index and 'href="02_logits.failed.html"' in index
    assert "ValueError: boom" in index
    _fake_runs(monkeypatch, {"02_logits": "ok"})
    assert report.run(report.Plan("smoke", ["02_logits"], tmp_path, False, {"02_logits": {}})) == 0
    assert not (folder / "02_logits.failed.html").exists() and "FAILED" not in (folder / "index.html").read_text()


def test_results_of_a_notebook_that_ran_are_published_when_only_its_page_failed(tmp_path, monkeypatch):
    folder = _published(tmp_path)

    def run_notebook(nb, params, out_dir, show_code):  # ran to the end and wrote its JSON; nbconvert then failed
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{nb}.ipynb").write_text(f"new {nb}")
        (out_dir / f"{nb}.json").write_text(json.dumps(_results(nb)))
        return {"notebook": nb, "status": "failed", "error": "HTML rendering: ValueError: no template", "seconds": 1.0,
                "executed": True}

    monkeypatch.setattr(report, "run_notebook", run_notebook)
    assert report.run(report.Plan("smoke", ["02_logits"], tmp_path, False, {"02_logits": {}})) == 1
    assert (folder / "02_logits.ipynb").read_text() == "new 02_logits" and (folder / "02_logits.json").exists()
    assert not (folder / "02_logits.html").exists()  # the old page no longer matches the new results
    index = (folder / "index.html").read_text()
    assert "FAILED in their latest run: 02_logits" in index and "HTML rendering: ValueError: no template" in index


def test_a_page_that_fails_to_render_keeps_its_first_line_and_gets_a_failed_page(tmp_path, monkeypatch):
    def execute(nb, ipynb, params):  # the notebook ran to the end
        ipynb.write_text("{}")
        (ipynb.parent / f"{nb}.json").write_text(json.dumps(_results(nb)))

    def render_html(ipynb, html_path, show_code):
        raise ValueError("template kdcore.html.j2 is missing\nwhile rendering cell 3")

    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(runner, "render_html", render_html)
    status = runner.run_notebook("02_logits", {}, tmp_path, False)
    assert status["status"] == "failed" and status["error"] == "HTML rendering: ValueError: template kdcore.html.j2 is missing"
    page = (tmp_path / "02_logits.html").read_text()
    assert "while rendering cell 3" in page and "Traceback" in page  # published as 02_logits.failed.html
    runner.publish(tmp_path, tmp_path / "published", [status])
    assert (tmp_path / "published" / "02_logits.failed.html").exists()
    assert not (tmp_path / "published" / "02_logits.html").exists()


def test_index_and_leaderboard_tables_are_formatted(tmp_path):
    folder = _published(tmp_path)
    site.write_index(folder, "smoke", [], 1.0)
    for page in ("index.html", "leaderboard.md"):
        text = (folder / page).read_text()
        assert not re.search(r"\bNaN\b|\bnan\b|\bNone\b|\bFalse\b|\bTrue\b|PosixPath|\d\.\d{5,}", text), page
        assert "+0.0123 [+0.0040, +0.0206]" in text and "0.6424" in text and "94,762" in text and "0.78" in text
        assert "| yes |" in text or "<td>yes</td>" in text
    md = (folder / "leaderboard.md").read_text().splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    old_kd = dict(zip(header, (c.strip() for c in next(r for r in md if r.startswith("| 01_baseline | kd |")).strip("|").split("|"))))
    assert old_kd["Δ acc vs baseline [95 % CI]"] == "+0.0281" and old_kd["significant"] == "–"  # old JSON: no interval
    other = dict(zip(header, (c.strip() for c in next(r for r in md if "student_light (kd)" in r).strip("|").split("|"))))
    assert other["Δ acc vs baseline [95 % CI]"] == other["params"] == other["latency ms"] == "–"


def test_ctrl_c_leaves_the_published_report_unchanged_and_no_temporary_files(tmp_path):
    """A real run (smoke profile) into a folder holding a published report; Ctrl-C once notebook 01 has finished
    (staged, not published) and 02 is training. Nothing published may change and nothing temporary may stay."""
    folder = _published(tmp_path, NOTEBOOKS)
    site.write_index(folder, "smoke", [], 1.0)
    before, notebooks_before = _tree(folder), _tree(REPO / "notebooks")
    proc = subprocess.Popen([sys.executable, "-m", "kdcore", "report", "--profile", "smoke", "--notebooks", "01", "02",
                             "--out", str(tmp_path), "--param", f"checkpoint_dir={tmp_path / 'checkpoints'}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # its own process group, like a shell job
                            # a foreground job's Ctrl-C, even when the suite itself was started with `&`, which
                            # makes a shell without job control ignore SIGINT in everything it starts
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "01_baseline: ok" in line:
            assert len(list(tmp_path.glob(".smoke.partial-*/smoke/01_baseline.html"))) == 1  # staged, not published
        if seen and any("02_logits: started" in s for s in seen) and "seed 0: test_acc=" in line:
            break
    else:
        pytest.fail("the run ended before it could be interrupted:\n" + "".join(seen) + proc.stderr.read())
    kernels = psutil.Process(proc.pid).children(recursive=True)
    assert kernels  # the notebook's kernel, in its own session: a terminal's Ctrl-C would not reach it
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground process group
    out, err = proc.communicate(timeout=300)
    assert not psutil.wait_procs(kernels, timeout=30)[1]  # the kernel was stopped, not orphaned
    assert proc.returncode == 130, "".join(seen) + out + err
    assert err.strip() == f"interrupted: {folder} left unchanged"
    assert _tree(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "smoke"]  # no stage folder, no .tmp files
    assert _tree(REPO / "notebooks") == notebooks_before


def test_smoke_report_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdcore", "report", "--profile", "smoke", "--out", str(tmp_path),
                           "--figures", str(tmp_path / "images"), "--param", f"checkpoint_dir={tmp_path / 'checkpoints'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # progress: a line per notebook start and end with an ETA, the kernel's run lines, no Jupyter warnings
    assert "[1/7] 01_baseline: started" in proc.stdout and "about" in proc.stdout and "left)" in proc.stdout
    assert re.search(r"^      baseline seed 0: test_acc=", proc.stdout, re.M)
    assert not proc.stderr.strip() and "WARNING" not in proc.stdout and "Kernel is running" not in proc.stdout
    out = tmp_path / "smoke"
    index = (out / "index.html").read_text()
    assert (out / "_static" / runner.MATHJAX).stat().st_size > 100_000  # MathJax next to the pages
    for nb in NOTEBOOKS:
        page = (out / f"{nb}.html").read_text()
        assert len(page) > 1000 and f'src="_static/{runner.MATHJAX}"' in page
        assert not re.findall(r'src="https?:', page)  # nothing loads from the network: formulas render offline
        assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page  # no red box (was: "No CUDA runtime")
        res = json.loads((out / f"{nb}.json").read_text())
        assert res["metrics"] and all(0 <= m["test_acc_mean"] <= 1 for m in res["metrics"])
        assert f'href="{nb}.html"' in index
    assert "FAILED" not in index and not re.search(r"\bNaN\b|\bFalse\b|\bNone\b|PosixPath|\d\.\d{5,}", index)
    assert (out / "leaderboard.csv").exists() and (out / "leaderboard.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "images", "smoke"]  # the stage folder is gone
    assert list((tmp_path / "checkpoints").glob("store/teachers/*.pt"))  # the smoke store stays out of the repository
    figures = {p.name for p in (tmp_path / "images").iterdir()}
    assert {f"{nb}-1.png" for nb in NOTEBOOKS} <= figures  # every notebook plots at least its loss curves
    # the published pages again, from the run store alone: nothing may train, and the report says so
    def accuracy(nb):  # the trained numbers (latency is measured again on every render)
        return [(m["method"], m["test_acc_mean"], m["test_f1_mean"], m["delta_acc"])
                for m in json.loads((out / f"{nb}.json").read_text())["metrics"]]

    before = {nb: accuracy(nb) for nb in ("01_baseline", "02_logits")}
    again = subprocess.run([sys.executable, "-m", "kdcore", "report", "--profile", "smoke", "--from-store",
                            "--notebooks", "01", "02", "--out", str(tmp_path),
                            "--param", f"checkpoint_dir={tmp_path / 'checkpoints'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"published .*; \d+ runs from the run store, 0 trained\)", again.stdout), again.stdout[-2000:]
    assert "training" not in again.stdout
    for nb, metrics in before.items():
        assert accuracy(nb) == metrics


def test_no_cache_flag_sets_the_cache_parameter(monkeypatch):
    seen = {}
    monkeypatch.setattr(report, "run", lambda plan: seen.setdefault("plan", plan) and 0)
    assert report.main(["--profile", "smoke", "--notebooks", "02", "--no-cache"]) == 0
    assert seen["plan"].parameters["02_logits"]["cache"] is False
    plan = report.make_plan("smoke", ["02"], "results")
    assert plan.parameters["02_logits"]["cache"] is True


def test_only_the_closed_socket_shutdown_race_is_dropped_from_tornados_log():
    import errno
    import logging

    zmq = pytest.importorskip("zmq")

    def record(err):
        try:
            raise err
        except Exception:
            return logging.getLogger("tornado.general").makeRecord(
                "tornado.general", logging.ERROR, __file__, 1, "Uncaught exception in ZMQStream callback", (),
                sys.exc_info())

    assert not runner._drop_closed_socket_callbacks(record(zmq.error.ZMQError(errno.ENOTSOCK)))
    assert runner._drop_closed_socket_callbacks(record(zmq.error.ZMQError(errno.EAGAIN)))
    assert runner._drop_closed_socket_callbacks(record(ValueError("a real error")))


def test_a_teacher_weaker_than_its_student_is_flagged_on_the_board():
    board = pd.DataFrame([{"notebook": "06_efficientvit", "method": m, "is_baseline": m == "baseline", "test_acc": "x",
                           "macro_f1": "x", "acc_mean": acc, "delta_acc": 0.0, "delta_ci_low": None, "delta_ci_high": None,
                           "significant": None, "p_holm": None, "teacher_acc": 0.11, "params": 1, "size_mb": 1.0,
                           "latency_ms": 1.0, "threads": 1, "seconds_per_run": 1.0} for m, acc in
                          (("baseline", 0.30), ("kd", 0.10))])
    cells = [r["teacher acc"] for r in site.display_rows(board)]
    assert cells == ["0.1100 (below the student)", "0.1100"]


def test_findings_are_computed_from_the_results_and_say_met_missed_or_not_run():
    from kdcore.findings import findings

    def metric(method, acc, val, **kw):
        return {"method": method, "test_acc_mean": acc, "val_acc_mean": val, "test_f1_mean": acc - 0.001,
                "delta_acc": kw.get("delta", 0.0), "delta_ci_low": kw.get("lo"), "delta_ci_high": kw.get("hi"),
                "significant": kw.get("sig"), "params": kw.get("params", 89_397), "is_baseline": method == "baseline"}

    results = {"07_eurosat": {"metrics": [
        metric("baseline", 0.940, 0.94), metric("kd", 0.955, 0.95, delta=0.015, lo=0.01, hi=0.02, sig=True),
        metric("simplenet (kd)", 0.95, 0.90), metric("student_light (kd)", 0.92, 0.93)]},
        "02_logits": {"metrics": [metric("baseline", 0.83, 0.83, params=98_840),
                                  metric("kd", 0.851, 0.84, params=98_840, delta=0.02, lo=0.01, hi=0.03, sig=True),
                                  metric("big", 0.9, 0.9, params=200_000)]}}
    rows = {r["claim"].split(",")[0]: r for r in findings(results)}
    eurosat, five = rows["EuroSAT SmallMyNet (89"], rows["EuroSAT"]
    assert eurosat["status"] == "met" and eurosat["ours"] == "0.9400 → 0.9550, gain +0.0150 [+0.0100, +0.0200]"
    assert five["status"] == "missed" and five["ours"].startswith("0.9200 (`student_light (kd)`")  # chosen on val
    cifar = rows["CIFAR-10 student ≤ 100 k params"]
    assert cifar["status"] == "met" and cifar["ours"].startswith("0.8500 (`kd`, 98,840 params")  # not the 200 k row
    assert rows["EfficientViT b1 distilled vs alone; size and latency ratios"]["status"] == "not run"
