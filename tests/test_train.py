import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore import create_model, fit, load_dataset, make_distiller, runtime, train
from kdcore.data import DeviceLoader
from kdcore.errors import ConfigError
from kdcore.evaluate import classification_metrics, evaluate
from kdcore.runtime import cpu_features, resolve_precision
from kdcore.metrics import metrics_from_confusion
from kdcore.train import TrainConfig, train_epoch, train_step

FAST = dict(epochs=3, batch_size=64, lr=0.05, device="cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", synthetic=dict(train_size=1200, val_size=300, test_size=300))


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=10)
    result = fit(model, data, **FAST)
    assert result.best_val_acc > 0.6, result.history
    return model


def test_plain_training_learns_far_above_chance(data, tmp_path):
    torch.manual_seed(0)
    student = create_model("cnn_small", num_classes=10)
    result = fit(student, data, out_dir=tmp_path, **FAST)
    h = result.history
    assert list(h.epoch) == [1, 2, 3] and {"loss_ce", "val_acc", "val_f1", "lr", "seconds"} <= set(h.columns)
    assert h.train_loss.iloc[-1] < h.train_loss.iloc[0]
    assert result.best_val_acc == h.val_acc.max() and result.best_epoch == int(h.val_acc.idxmax()) + 1
    assert evaluate(student, data, "test", device="cpu")["accuracy"] > 0.5  # chance is 0.1
    assert {p.name for p in tmp_path.iterdir()} >= {"best.pt", "last.pt", "history.csv"}
    assert torch.load(tmp_path / "last.pt", weights_only=False)["precision"] == result.precision  # kept on resume


def test_distillation_learns_and_leaves_teacher_untouched(data, teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(1)
    student = create_model("cnn_small", num_classes=10)
    distiller = make_distiller("kd", student, teacher, alpha=0.7, temperature=4.0)
    result = fit(distiller, data, **FAST)
    assert {"loss_ce", "loss_kd"} <= set(result.history.columns)
    assert result.best_val_acc > 0.5
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN stats too
    assert not teacher.training


def test_bf16_fit_leaves_the_callers_teacher_in_fp32(data, teacher):
    """A bf16 fit() runs the teacher under autocast and leaves the caller's teacher in fp32 for every later run."""
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = make_distiller("kd", create_model("student_light", num_classes=10), teacher)
    result = fit(distiller, data, epochs=1, batch_size=64, device="cpu", precision="bf16", max_steps_per_epoch=3)
    assert result.precision == "bf16" and np.isfinite(result.history.train_loss).all()
    for k, v in teacher.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def test_auto_precision_takes_bf16_only_where_it_pays(monkeypatch):
    cpu = torch.device("cpu")

    def features(amx):
        return lambda: {"model name": "test", "amx": amx, "avx512_bf16": True}

    def no_probe():
        raise AssertionError("probed a CPU without AMX")

    monkeypatch.setattr(runtime, "bf16_speedup", no_probe)
    monkeypatch.setattr(runtime, "cpu_features", features(False))
    assert resolve_precision("auto", cpu) == "fp32"  # AVX512-BF16 without AMX, like this Zen4 machine
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_features", features(True))
    assert resolve_precision("auto", cpu, probe=False) == "bf16"  # deterministic runs: no timing
    for speedup, want in ((2.5, "bf16"), (1.05, "fp32")):
        monkeypatch.setattr(runtime, "bf16_speedup", lambda: speedup)
        assert resolve_precision("auto", cpu) == want
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ConfigError, match="Valid precision names"):
        TrainConfig(precision="fp16").validate()


@pytest.mark.parametrize("amx, speedup, deterministic, expected", [
    (False, 3.0, False, "fp32"),  # AVX512-BF16 without AMX: fp32 even where a probe would say bf16 pays
    (True, 3.0, False, "bf16"),   # AMX and a probe that confirms the gain
    (True, 1.05, False, "fp32"),  # AMX, but the probe finds less than BF16_MIN_SPEEDUP
    (True, None, True, "bf16"),   # a deterministic run never times a probe
])
def test_fit_trains_in_and_records_the_precision_auto_chose(data, monkeypatch, amx, speedup, deterministic, expected):
    def probe():
        assert speedup is not None, "a deterministic run timed the bf16 probe"
        return speedup

    monkeypatch.setattr(runtime, "cpu_features", lambda: {"model name": "test", "amx": amx, "avx512_bf16": True})
    monkeypatch.setattr(runtime, "bf16_speedup", probe)
    seen, real_epoch = [], train.train_epoch
    monkeypatch.setattr(train, "train_epoch", lambda *a, bf16, **kw: seen.append(bf16) or real_epoch(*a, bf16=bf16, **kw))
    run = dict(epochs=1, batch_size=64, device="cpu", max_steps_per_epoch=1, deterministic=deterministic)
    assert fit(create_model("student_light", num_classes=10), data, **run).precision == expected
    assert seen == [expected == "bf16"]  # the epoch ran under bf16 autocast exactly when bf16 is recorded


def test_cpu_features_names_what_decides_bf16():
    f = cpu_features()
    assert set(f) == {"model name", "family", "model", "amx", "avx512_bf16"} and isinstance(f["amx"], bool)
    if Path("/proc/cpuinfo").exists() and "cpu family" in Path("/proc/cpuinfo").read_text():
        assert f["family"].isdigit() and f["model"].isdigit()  # the generation, where the name is generic


def test_channels_last_only_for_convs_at_least_16_wide():
    """probes/repro_channels_last_cpu.py: oneDNN broke at width 8 in NHWC on CPU; 16 and 32 ran clean."""
    assert not runtime.channels_last_safe(create_model("tiny_resnet", num_classes=10, width=8))
    assert runtime.channels_last_safe(create_model("tiny_resnet", num_classes=10, width=16))
    assert runtime.channels_last_safe(create_model("airbench_small", num_classes=10))  # 3-channel input conv allowed
    assert not runtime.channels_last_safe(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)))  # no convs


def test_channels_last_probe_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=10, width=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speedup = runtime.channels_last_speedup(model, torch.randn(8, 3, 32, 32), train=True)
    assert np.isfinite(speedup) and speedup > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # left in NCHW


def test_channels_last_choice_on_cpu_follows_safety_and_the_probe(monkeypatch):
    cpu, x = torch.device("cpu"), torch.randn(4, 3, 32, 32)
    narrow, wide = (create_model("tiny_resnet", num_classes=10, width=w) for w in (8, 16))

    def no_probe(*args, **kwargs):
        raise AssertionError("timed a model that must not be timed")

    monkeypatch.setattr(runtime, "channels_last_speedup", no_probe)
    monkeypatch.setattr(runtime, "_LAYOUT_CHOICES", {})
    assert not runtime.choose_channels_last(narrow, x, cpu, train=True)  # unsafe: never timed
    assert not runtime.choose_channels_last(wide, x, cpu, train=True, probe=False)  # deterministic: no timing
    assert runtime.choose_channels_last(narrow, x, torch.device("cuda"), train=True)  # CUDA: always
    for speedup, want in ((1.4, True), (1.05, False)):
        monkeypatch.setattr(runtime, "_LAYOUT_CHOICES", {})
        monkeypatch.setattr(runtime, "channels_last_speedup", lambda *a, **k: speedup)
        assert runtime.choose_channels_last(wide, x, cpu, train=False) is want
        monkeypatch.setattr(runtime, "channels_last_speedup", no_probe)  # the same net again: decided, not timed
        assert runtime.choose_channels_last(create_model("tiny_resnet", num_classes=10, width=16), x, cpu,
                                          train=False) is want


def test_fit_runs_nhwc_on_cpu_where_the_probe_pays_and_keeps_it_on_resume(data, tmp_path, monkeypatch):
    torch.manual_seed(0)
    teacher = create_model("tiny_resnet", num_classes=10, width=16).eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        want = teacher(x)
    monkeypatch.setattr(runtime, "_LAYOUT_CHOICES", {})
    monkeypatch.setattr(runtime, "channels_last_speedup", lambda *a, **k: 2.0)
    student = create_model("tiny_resnet", num_classes=10, width=16)
    run = dict(epochs=1, batch_size=64, device="cpu", max_steps_per_epoch=2, out_dir=tmp_path)
    result = fit(make_distiller("kd", student, teacher), data, **run)
    assert result.channels_last == {"student": True, "teacher": True}
    assert np.isfinite(result.history.train_loss).all()
    convs = [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)  # NHWC weights
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), want, atol=1e-4, rtol=1e-4)  # same function in the other layout
    monkeypatch.setattr(runtime, "channels_last_speedup", lambda *a, **k: 0.5)  # would now say NCHW...
    resumed = fit(make_distiller("kd", create_model("tiny_resnet", num_classes=10, width=16), teacher), data, **run)
    assert resumed.resumed_from == 1 and resumed.channels_last == result.channels_last  # ...but a resume keeps NHWC
    monkeypatch.setattr(runtime, "_LAYOUT_CHOICES", {})  # a fresh process would time it again
    assert fit(create_model("tiny_resnet", num_classes=10, width=16), data, epochs=1, batch_size=64, device="cpu",
               max_steps_per_epoch=1).channels_last == {"student": False, "teacher": False}


def test_train_step_and_epoch_are_the_loop_fit_runs(data, teacher):
    torch.manual_seed(4)
    distiller = make_distiller("kd", create_model("student_light", num_classes=10), teacher)
    loader = DeviceLoader(data.train, data, 64, augment=True, shuffle=True, drop_last=True)
    distiller.prepare(next(iter(loader)).images)
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05)
    before = [p.detach().clone() for p in distiller.student.parameters()]
    logits, losses = train_step(distiller, next(iter(loader)), opt)
    assert logits.shape == (64, 10) and set(losses) == {"ce", "kd"}
    assert any(not torch.equal(a, b) for a, b in zip(before, distiller.student.parameters()))
    stats = train_epoch(distiller, loader, opt, epoch=1, steps=2)
    assert set(stats) == {"train_loss", "loss_ce", "loss_kd", "train_acc"}
    assert stats["train_loss"] == pytest.approx(stats["loss_ce"] + stats["loss_kd"])


@pytest.mark.parametrize("method", ["dkd", "hidden", "fitnet", "at", "sp", "kd+at", "kd+hidden+sp"])
def test_every_method_trains_with_finite_terms(data, teacher, method):
    torch.manual_seed(2)
    student = create_model("student_light", num_classes=10)
    distiller = make_distiller(method, student, teacher, dkd_warmup=1)
    result = fit(distiller, data, epochs=1, batch_size=64, device="cpu", max_steps_per_epoch=6)
    terms = [c for c in result.history.columns if c.startswith("loss_")]
    assert len(terms) == 1 + len(method.split("+"))
    assert np.isfinite(result.history[terms].to_numpy()).all()


def test_fit_tells_the_terms_how_far_the_run_has_come(data, teacher, monkeypatch):
    """DKD's default warm-up reads StepInputs.progress: fit gives (step + 1) / total steps, every step."""
    from kdcore import distill

    seen = []
    ramp = distill.DKD.ramp
    monkeypatch.setattr(distill.DKD, "ramp", lambda self, s: seen.append((s.progress, ramp(self, s))) or ramp(self, s))
    distiller = make_distiller("dkd", create_model("cnn_small", num_classes=10), teacher)
    fit(distiller, data, epochs=2, batch_size=64, device="cpu", max_steps_per_epoch=3, precision="fp32")
    assert seen[0] == (None, 1.0)  # prepare(): one forward outside the loop
    assert [p for p, _ in seen[1:]] == pytest.approx([k / 6 for k in range(1, 7)])
    assert [r for _, r in seen[1:]] == pytest.approx([min(k / 6 * 12, 1.0) for k in range(1, 7)])  # 20/240 of the steps


def test_fitnet_regressor_parameters_are_trained(data, teacher):
    student = create_model("cnn_small", num_classes=10)
    distiller = make_distiller("fitnet", student, teacher)
    distiller.prepare(torch.zeros(2, 3, 32, 32))
    reg = [p.detach().clone() for p in distiller.terms.parameters()]
    assert reg, "FitNet should own learnable regressor parameters"
    fit(distiller, data, epochs=1, batch_size=64, device="cpu", max_steps_per_epoch=3)
    assert any(not torch.equal(a, b) for a, b in zip(reg, distiller.terms.parameters()))


def test_early_stopping_stops(data):
    student = create_model("student_light", num_classes=10)
    result = fit(student, data, epochs=6, batch_size=64, device="cpu", lr=1e-9, early_stopping=1, max_steps_per_epoch=2)
    assert len(result.history) < 6


def _onecycle(step, total, lr):
    """OneCycleLR(max_lr=lr, total_steps=total, pct_start=0.15) after `step` steps, past its peak: cosine from lr
    down to lr / 25 / 1e4 between step 0.15·total − 1 and total − 1."""
    peak, low = 0.15 * total - 1, lr / 25 / 1e4
    return low + (lr - low) / 2 * (1 + math.cos(math.pi * (step - peak) / (total - 1 - peak)))


@pytest.mark.parametrize("schedule, optimizer, lr, epochs, steps, warmup, expected", [
    ("cosine", "sgd", 0.05, 2, 3, 0, [0.025, 0.0]),                    # lr·(1 + cos(π·t))/2 at t = 3/6, 6/6
    ("cosine", "sgd", 0.05, 3, 3, 2, [0.05 * 4 / 6, 0.05, 0.0]),        # linear warm-up over 6 steps, then cosine
    ("step", "adamw", 1e-3, 2, 3, 0, [1e-4, 1e-5]),                     # ×0.1 from t = 0.5, ×0.01 from t = 0.75
    ("onecycle", "sgd", 0.05, 2, 10, 0, [_onecycle(10, 20, 0.05), _onecycle(20, 20, 0.05)]),
    ("plateau", "sgd", 0.05, 4, 1, 0, [0.05, 0.05, 0.05, 0.025]),        # halved after 3 epochs without a better val acc
])
def test_schedules_give_the_learning_rates_of_their_formulas(data, monkeypatch, schedule, optimizer, lr, epochs, steps,
                                                             warmup, expected):
    """The history's lr is the rate after each epoch's last step (per-batch schedules), or after the epoch's
    validation (plateau, here with a validation accuracy that never improves)."""
    real = train.metrics_from_confusion
    if schedule == "plateau":
        monkeypatch.setattr(train, "metrics_from_confusion", lambda cm: {**real(cm), "acc": 0.5})
    student = create_model("student_light", num_classes=10)
    result = fit(student, data, epochs=epochs, batch_size=64, device="cpu", lr=lr, schedule=schedule,
                 optimizer=optimizer, max_steps_per_epoch=steps, warmup_epochs=warmup)
    assert result.history["lr"].tolist() == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_bad_arguments_name_the_fix():
    student = create_model("student_light", num_classes=10)
    with pytest.raises(ConfigError, match="alpha"):
        make_distiller("kd", student, student, alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        make_distiller("kd", student, student, temperature=0)
    with pytest.raises(ConfigError, match="Valid method names"):
        make_distiller("crd", student, student)
    with pytest.raises(ConfigError, match="needs a teacher"):
        make_distiller("kd", student, None)
    with pytest.raises(ConfigError, match="Valid schedule names"):
        TrainConfig(schedule="linear").validate()


def test_class_count_mismatch_is_a_clear_error(data):
    student = create_model("student_light", num_classes=10)
    teacher = create_model("student_light", num_classes=5)
    with pytest.raises(ConfigError, match="Teacher predicts 5 classes but the student predicts 10"):
        fit(make_distiller("kd", student, teacher), data, epochs=1, device="cpu")


def test_metrics_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    p[:50] = y[:50]
    p[p == 3] = 2  # class 3 never predicted: its precision counts as 0, as zero_division=0
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=[0, 1, 2, 3], zero_division=0)
    macro = precision_recall_fscore_support(y, p, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    ours = metrics_from_confusion(torch.from_numpy(confusion_matrix(y, p, labels=[0, 1, 2, 3])))
    assert ours["acc"] == pytest.approx(accuracy_score(y, p))
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx(macro[:3])
    table = classification_metrics(y, p, ["a", "b", "c", "d"])
    assert table["f1_macro"] == pytest.approx(macro[2]) and table["accuracy"] == pytest.approx(accuracy_score(y, p))
    np.testing.assert_allclose(table["per_class"][["precision", "recall", "f1"]].to_numpy().T, [prec, rec, f1])
    assert table["per_class"]["support"].tolist() == support.tolist()
    assert (table["confusion"] == confusion_matrix(y, p, labels=[0, 1, 2, 3])).all()


@pytest.mark.cuda
def test_device_loader_on_cuda_gives_the_cpu_batches(data):
    kw = dict(augment=True, shuffle=True, seed=3, pad=4)
    cpu = list(DeviceLoader(data.train, data, 100, device="cpu", **kw))
    gpu = list(DeviceLoader(data.train, data, 100, device="cuda", channels_last=True, **kw))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert b.images.is_cuda and b.images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a.index, b.index.cpu()) and torch.equal(a.view, b.view.cpu())
        assert torch.equal(a.labels, b.labels.cpu())
        torch.testing.assert_close(a.images, b.images.cpu())


@pytest.mark.cuda
@pytest.mark.parametrize("compile", [False, True])
def test_fit_on_cuda_in_bf16_and_channels_last(data, teacher, compile):
    import copy

    teacher = copy.deepcopy(teacher)  # the module-wide one stays on the CPU
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(1)
    distiller = make_distiller("kd", create_model("cnn_small", num_classes=10), teacher, alpha=0.7)
    result = fit(distiller, data, epochs=3, batch_size=64, device="cuda", precision="bf16", channels_last=True,
                 compile=compile, teacher_cache=True)
    assert result.precision == "bf16" and result.device.startswith("cuda")
    assert np.isfinite(result.history.filter(like="loss_").to_numpy()).all()
    assert result.best_val_acc > 0.5  # chance is 0.1
    assert result.teacher_cache["hits"] + result.teacher_cache["misses"] > 0
    for k, v in teacher.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v.cpu(), before[k]), k
