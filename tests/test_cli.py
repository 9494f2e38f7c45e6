"""The `kdcore` command: help that answers, and every error as one `error:` line (exit 2), no traceback."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore import __main__ as entry
from kdcore import cli, report
from kdcore.distill import METHODS
from kdcore.models import list_models


def _kdcore():
    """The installed console script (pyproject [project.scripts]) next to this interpreter."""
    path = Path(sys.executable).with_name("kdcore")
    return str(path) if path.exists() else shutil.which("kdcore")


def test_console_script_help_describes_report_and_train():
    exe = _kdcore()
    assert exe, "the kdcore console script is not installed: pip install -e ."
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr
    assert "report" in out.stdout and "train" in out.stdout and "kdcore report --help" in out.stdout


def test_train_help_shows_defaults_models_and_methods(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: kdcore train" in text
    for default in ("(default: 0.9)", "(default: 4.0)", "(default: 10)", "(default: sgd)", "(default: baseline)"):
        assert default in text
    assert all(name in text for name in list_models("teacher") + list_models("student"))
    assert all(name in text for name in sorted(METHODS)) and "baseline" in text


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["nope"], "unknown command 'nope'; use one of: report, train"),
    ([], "no command given"),
    (["train", "--dataset", "synthetic"], "the following arguments are required: --student"),
    (["train", "--dataset", "synthetic", "--student", "student_light", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["train", "--dataset", "synthetic", "--student", "student_light", "--pairing", "sideways"], "--pairing: invalid choice"),
    (["train", "--dataset", "synthetic", "--student", "student_light", "--method", "kd"], "--method kd distils from a teacher: pass --teacher NAME"),  # noqa: E501
    (["report", "--bogus"], "unrecognized arguments: --bogus (see kdcore report --help)"),
    (["report", "--profile", "smoke", "--notebooks", "02", "--param", "temperature=abc"], "--param temperature=abc: temperature takes float"),  # noqa: E501
    (["report", "--profile", "smoke", "--notebooks", "09"], "Unknown notebook '09'"),
])
def test_errors_are_one_line_exit_2(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        sys.exit(entry.main(argv))
    assert exit_.value.code == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_corrupt_image_is_one_line_from_the_cli(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("KDCORE_CACHE", str(tmp_path / "cache"))
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "imgs" / "b" / "2.png").write_bytes(b"not a png")
    assert cli.main(["--dataset", "imagefolder", "--data-root", str(tmp_path / "imgs"), "--student", "student_light"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(tmp_path / "imgs" / "b" / "2.png") in line


def test_report_default_profile_hint_is_shell_syntax(capsys, tmp_path):
    report.make_plan(None, ["01"], tmp_path)
    out = capsys.readouterr().out
    assert "make report PROFILE=smoke" in out and "profile=" not in out.replace("PROFILE=", "")


def test_summary_terms_say_what_each_term_was_given():
    """--alpha weighs kd only: dkd keeps its own α 1, β 8 and warm-up rule (mdistiller), and the summary says so."""
    from kdcore import create_model, make_distiller
    from kdcore.cli import _terms

    student, teacher = create_model("simplenet", 10), create_model("tiny_resnet", 10)
    assert _terms(make_distiller("kd", student, teacher, alpha=0.5)) == {
        "ce": {"weight": 0.5, "label_smoothing": 0.0}, "kd": {"weight": 0.5, "temperature": 4.0, "standardize": False}}
    dkd = _terms(make_distiller("dkd", student, teacher, alpha=0.9))
    assert dkd["ce"]["weight"] == 1.0 and dkd["dkd"] == {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0,
                                                         "warmup": None, "standardize": False}


@pytest.mark.parametrize("extra, split_seed", [([], 3), (["--split-seed", "0"], 0)])
def test_train_splits_by_seed_unless_split_seed_is_given(monkeypatch, capsys, extra, split_seed):
    """--seed also picks the train/val split unless --split-seed says otherwise (0 is the notebooks' split,
    whose teacher cache and paired runs a CLI run can then share); the summary records the split used."""
    import json

    from kdcore import data

    seen = []
    real = data.load_dataset
    monkeypatch.setattr(data, "load_dataset", lambda *a, **kw: seen.append(kw["seed"]) or real(*a, **kw))
    argv = ["--dataset", "synthetic", "--synthetic-size", "64", "--student", "student_light", "--epochs", "1",
            "--batch-size", "16", "--max-steps-per-epoch", "1", "--device", "cpu", "--seed", "3", *extra]
    assert cli.main(argv) == 0
    summary = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    assert seen == [split_seed] and summary["split_seed"] == split_seed and summary["seed"] == 3
