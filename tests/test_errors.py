"""Bad input: one clear error naming the problem and the fix, and nothing half-written.

Where each case of the issue is tested (not duplicated here):
  unknown dataset name ........ test_data.py::test_unknown_dataset_lists_valid_names (+ CLI below)
  unknown model name .......... test_models.py::test_unknown_model_lists_valid_names (+ CLI below)
  unknown method name ......... test_train.py::test_bad_arguments_name_the_fix (+ CLI below)
  alpha outside [0, 1] ........ test_train.py::test_bad_arguments_name_the_fix (+ CLI below)
  temperature <= 0 ............ test_train.py::test_bad_arguments_name_the_fix, test_losses.py::test_kd_errors (+ CLI)
  teacher/student classes ..... test_train.py::test_class_count_mismatch_is_a_clear_error
  unknown feature layer ....... test_models.py::test_unknown_layer_lists_available_names
  unmatchable feature shapes .. test_losses.py::test_fitnet_unmatchable_shapes_raise, at/fitnet pairs below
  NaN/Inf in a loss ........... below (term + step named, earlier checkpoints intact)
  missing data offline ........ test_data.py::test_missing_data_offline_gives_one_clear_error_and_writes_nothing (+ CLI)
  empty image folder / class .. test_data.py::test_imagefolder_empty_class_and_no_images_are_clear_errors
  unknown profile name ........ below (kdcore.profiles.params_for)
  missing teacher checkpoint .. test_models.py::test_missing_checkpoint_names_the_path
  corrupt / foreign checkpoint  test_resume.py
"""
import importlib.util

import pytest
import torch

from kdcore import cli, create_model, fit, load_dataset, make_distiller
from kdcore.distill import CrossEntropy, Distiller, Term
from kdcore.errors import ConfigError, NonFiniteLossError

TINY = ["--dataset", "synthetic", "--synthetic-size", "64", "--student", "student_light", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", synthetic=dict(train_size=128, val_size=40, test_size=40))


def _set(args, flag, value):
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


@pytest.mark.parametrize("flag, value, expected", [
    ("--dataset", "cifar100", "Unknown dataset 'cifar100'. Did you mean 'cifar10'? Valid dataset names: cifar10, eurosat, imagefolder, synthetic"),  # noqa: E501
    ("--student", "resnet9", "Unknown model 'resnet9'"),
    ("--method", "kdd", "Unknown method 'kdd'. Did you mean 'kd'"),
    ("--optimizer", "adam", "Did you mean 'adamw'"),
    ("--alpha", "1.5", "must be in [0, 1]; got 1.5"),
    ("--temperature", "0", "temperature must be > 0"),
    ("--dataset", "cifar10", "CIFAR-10 not found under data root"),
])
def test_cli_bad_input_is_one_line_on_stderr_exit_2_and_writes_nothing(tmp_path, capsys, flag, value, expected):
    args = _set(TINY, flag, value) + ["--data-root", str(tmp_path / "nodata"), "--no-download", "--out-dir", str(tmp_path / "out")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "nodata").exists()


def test_unknown_profile_lists_valid_names():
    if importlib.util.find_spec("kdcore.profiles") is None:
        pytest.skip("kdcore.profiles not written yet")
    from kdcore.profiles import PROFILES, params_for

    with pytest.raises(ConfigError) as err:
        params_for("gpux", "01_baseline")
    assert "Unknown profile 'gpux'. Did you mean 'gpu'" in str(err.value)
    assert f"Valid profile names: {', '.join(sorted(PROFILES))}." in str(err.value)


def test_feature_pair_without_spatial_map_is_refused_before_anything_is_written(data, tmp_path):
    # attention transfer needs (B, C, H, W) maps; the teacher's classifier output is (B, 10)
    teacher, student = create_model("tiny_resnet"), create_model("student_light")
    at = make_distiller("at", student, teacher, pairs=[("stage3", "head")])
    with pytest.raises(ConfigError, match=r"Attention transfer needs \(B, C, H, W\).*teacher.*\(8, 10\).*Hook a convolutional"):
        fit(at, data, epochs=1, device="cpu", out_dir=tmp_path / "at")
    fitnet = make_distiller("fitnet", create_model("student_light"), teacher, pairs=[("stage3", "head")])
    with pytest.raises(ConfigError, match=r"FitNets needs \(B, C, H, W\).*\(8, 10\)"):
        fit(fitnet, data, epochs=1, device="cpu", out_dir=tmp_path / "fitnet")
    assert not (tmp_path / "at").exists() and not (tmp_path / "fitnet").exists()


class NaNFromEpoch(Term):
    """A term that is 0 until `epoch`, then NaN (what a diverging loss looks like)."""

    name, needs_teacher = "boom", False

    def __init__(self, epoch):
        super().__init__(1.0)
        self.epoch = epoch

    def forward(self, s):
        zero = s.student_logits.float().sum() * 0
        return zero + (float("nan") if s.epoch >= self.epoch else 0.0)


def test_nan_loss_stops_naming_term_and_step_and_keeps_earlier_checkpoints(data, tmp_path):
    torch.manual_seed(0)
    distiller = Distiller(create_model("student_light"), terms=[CrossEntropy(), NaNFromEpoch(epoch=1)])
    with pytest.raises(NonFiniteLossError, match=r"Loss term 'boom' became nan at epoch 2, step 0\. Lower the learning rate"):
        fit(distiller, data, epochs=3, batch_size=32, device="cpu", out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "history.csv", "last.pt"]  # no partial file
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert last["epoch"] == 0 and len(last["history"]) == 1  # epoch 1's checkpoint, intact and loadable
    assert all(torch.isfinite(v).all() for v in last["student"].values() if v.is_floating_point())
    assert torch.load(tmp_path / "best.pt", weights_only=False)["epoch"] == 0


def test_diverging_lr_exits_1_naming_the_term_and_step(tmp_path, capsys):
    assert cli.main(_set(TINY, "--lr", "1e30") + ["--epochs", "2", "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "Loss term 'ce' became" in err and "at epoch 1, step 1" in err and "Lower the learning rate" in err
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # diverged in epoch 1: no checkpoint yet
