"""kdcore.airbench: the airbench94-style teacher's shapes, whitening, schedule, TTA and a short training run."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdcore
from kdcore import airbench
from kdcore.models.airbench import WHITEN_IMAGES, AirbenchNet, ShiftBatchNorm, init_whitening
from kdcore.models import FeatureHooks, count_parameters, create_model, feature_blocks


SMALL = (16, 32, 32)  # narrow widths keep the training tests fast; the recipe does not depend on them


@pytest.fixture(scope="module")
def data():
    return kdcore.load_dataset("synthetic", synthetic=dict(train_size=256, val_size=64, test_size=64))


def test_shapes_and_parameter_count():
    model = create_model("airbench", num_classes=10)
    assert isinstance(model, AirbenchNet) and model.kd_spec.role == "teacher"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # whitening bias 24; block1 24·64·9 + 64·64·9 + 2·64 BN shifts; block2 64·256·9 + 256·256·9 + 512;
    # block3 2·256·256·9 + 512; linear 256·10 (no bias). The frozen whitening filters are a buffer.
    assert count_parameters(model, trainable_only=False) == 24 + 50_816 + 737_792 + 1_180_160 + 2_560 == 1_971_352
    assert count_parameters(create_model("airbench", num_classes=100)) == 1_971_352 + 256 * 90


def test_feature_blocks_are_4d_stage_maps_of_student_sizes():
    teacher, student = create_model("airbench"), create_model("simplenet")
    x = torch.randn(2, 3, 32, 32)
    with FeatureHooks(teacher, feature_blocks(teacher)) as t, FeatureHooks(student, feature_blocks(student)) as s:
        teacher(x), student(x)
    shapes = [tuple(f.shape) for f in t.features.values()]
    assert shapes == [(2, 64, 16, 16), (2, 256, 8, 8), (2, 256, 4, 4)]
    assert [f.shape[2:] for f in t.features.values()] == [f.shape[2:] for f in s.features.values()]


def correlated_images(n: int = 64) -> torch.Tensor:
    """Random images with correlated channels and neighbouring pixels, so whitening has work to do."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 16, 16, generator=g)
    x = torch.einsum("dc,nchw->ndhw", torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.5, 0.7]]), x)
    return x + 0.7 * x.roll(1, dims=3) + 0.3 * x.roll(1, dims=2)


def test_whitening_is_frozen_and_whitens():
    model = create_model("airbench")
    assert "whiten.weight" in dict(model.named_buffers())
    assert all(p is not model.whiten.weight for p in model.parameters())  # no optimiser can reach it
    x = correlated_images()
    init_whitening(model.whiten, x)
    w = model.whiten.weight
    assert torch.equal(w[12:], -w[:12])  # ± each eigenvector
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    assert (patches.T @ patches / len(patches) - torch.eye(12)).abs().max() > 0.5  # correlated before
    y = F.conv2d(x, w[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    # ≈ identity after (eps = 5e-4 in λ / (λ + eps) shrinks the smallest-variance directions by < 1 %)
    torch.testing.assert_close(y.T @ y / len(y), torch.eye(12), atol=1e-2, rtol=0)


def test_lr_schedule_is_triangular():
    total = 100
    factors = [airbench.lr_factor(s, total) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.2) and max(factors) == factors[23] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.07)
    assert all(a < b for a, b in zip(factors[:23], factors[1:24]))
    assert all(a > b for a, b in zip(factors[23:], factors[24:]))


def test_view_logits_are_the_documented_views_and_their_weights_sum_to_one(data):
    model = create_model("airbench", widths=SMALL).eval()
    init_whitening(model.whiten, data.normalize(data.train.images))
    images = data.test.images[:5]
    padded = F.pad(images, (1, 1, 1, 1))  # black border, as in training
    center, up_left, down_right = images, padded[:, :, :32, :32], padded[:, :, 2:, 2:]
    views = [(center, 1 / 4), (center.flip(-1), 1 / 4), (up_left, 1 / 8), (up_left.flip(-1), 1 / 8),
             (down_right, 1 / 8), (down_right.flip(-1), 1 / 8)]
    with torch.no_grad():
        expected = sum(w * model(data.normalize(v)) for v, w in views)
    logits = airbench.view_logits(model, images, data)
    torch.testing.assert_close(sum(w * v for (*_, w), v in zip(airbench.TTA_VIEWS, logits)), expected, atol=1e-5, rtol=1e-5)
    assert sum(w for *_, w in airbench.TTA_VIEWS) == pytest.approx(1.0)


def test_train_one_short_epoch_returns_the_documented_keys(data, monkeypatch):
    from kdcore import runtime

    monkeypatch.setattr(runtime, "bf16_speedup", lambda: 10.0)  # the timing probe, which load can sway, says bf16 pays
    torch.manual_seed(0)
    model = create_model("airbench", widths=SMALL)
    bias_before = model.whiten.bias.detach().clone()
    result = airbench.train(model, data, epochs=1, batch_size=32, seed=0, device="cpu", progress=False)
    assert set(result) == {"history", "val_acc", "val_acc_tta", "test_acc", "test_acc_tta", "seconds",
                           "train_seconds", "device", "precision", "amx", "channels_last", "threads", "epochs", "steps",
                           "batch_size", "seed", "resumed_from"}
    assert result["steps"] == 8 and len(result["history"]) == 1
    assert set(result["history"][0]) == {"epoch", "steps", "lr", "train_loss", "train_acc", "val_acc", "seconds"}
    assert all(0 <= result[k] <= 1 for k in ("val_acc", "val_acc_tta", "test_acc", "test_acc_tta"))
    assert result["precision"] == ("bf16" if result["amx"] else "fp32") and result["device"] == "cpu"
    assert result["amx"] == bool(torch.cpu._is_amx_tile_supported())
    # the whitening filters are what the training images give (so training left them alone); its bias trained
    expected = create_model("airbench", widths=SMALL).whiten
    init_whitening(expected, data.normalize(data.train.images[:WHITEN_IMAGES]))
    torch.testing.assert_close(model.whiten.weight, expected.weight, atol=0, rtol=0)
    assert not torch.equal(model.whiten.bias, bias_before)  # kept by the lookahead update at step 5


def test_bf16_on_request_and_bad_arguments(data):
    model = create_model("airbench", widths=SMALL)
    result = airbench.train(model, data, epochs=0.5, batch_size=64, device="cpu", precision="bf16", progress=False)
    assert result["precision"] == "bf16" and result["steps"] == 2
    with pytest.raises(kdcore.ConfigError, match="precision"):
        airbench.train(model, data, epochs=1, batch_size=64, precision="fp16", progress=False)
    with pytest.raises(kdcore.ConfigError, match="batch_size"):
        airbench.train(model, data, epochs=1, batch_size=1024, progress=False)


def test_an_interrupted_run_resumes_after_its_last_epoch_as_if_uninterrupted(data, tmp_path, monkeypatch):
    kw = dict(epochs=2.5, batch_size=32, seed=0, device="cpu", precision="fp32", progress=False)
    torch.manual_seed(0)
    whole = create_model("airbench", widths=SMALL)
    expected = airbench.train(whole, data, **kw)
    assert expected["resumed_from"] is None

    ckpt = tmp_path / "teacher.partial.pt"
    evaluate, calls = airbench.evaluate, []

    def killed_in_epoch_2(*args, **kwargs):  # epoch 2's validation: after epoch 1's state was saved
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    torch.manual_seed(0)
    with monkeypatch.context() as m:
        m.setattr(airbench, "evaluate", killed_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            airbench.train(create_model("airbench", widths=SMALL), data, **kw, checkpoint=ckpt)
    saved = ckpt.read_bytes()
    with pytest.raises(kdcore.CheckpointError, match="another airbench run"):  # another recipe: refused, left as it was
        airbench.train(create_model("airbench", widths=SMALL), data, **{**kw, "seed": 1}, checkpoint=ckpt)
    assert ckpt.read_bytes() == saved

    torch.manual_seed(1)  # other initial weights: the resumed run must take its weights from the checkpoint
    resumed_model = create_model("airbench", widths=SMALL)
    resumed = airbench.train(resumed_model, data, **kw, checkpoint=ckpt)
    assert resumed["resumed_from"] == 1 and resumed["steps"] == expected["steps"] == 20
    assert [h["val_acc"] for h in resumed["history"]] == [h["val_acc"] for h in expected["history"]]
    assert resumed["test_acc"] == expected["test_acc"] and resumed["channels_last"] == expected["channels_last"]
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, atol=0, rtol=0, msg=name)


def test_get_teacher_trains_airbench_with_its_recipe_and_caches_it(data, tmp_path):
    from kdcore import teachers

    before = teachers.TEACHER_TRAININGS
    kw = dict(model_kwargs=dict(widths=SMALL), epochs=1, checkpoint_dir=tmp_path, device="cpu")
    first = teachers.get_teacher(data, "airbench", **kw)
    assert first.trained and teachers.TEACHER_TRAININGS == before + 1
    assert not list((tmp_path / "teachers").glob("*"))  # its per-epoch state removed once it is stored
    assert sorted(p.name for p in (tmp_path / "store" / "teachers").iterdir()) == [first.path.with_suffix(".json").name,
                                                                                   first.path.name]
    assert first.trained_with["resumed_from"] is None
    assert set(first.history.columns) >= {"epoch", "steps", "train_loss", "val_acc"}  # airbench.train's history
    assert 0 <= first.test_acc_tta <= 1
    second = teachers.get_teacher(data, "airbench", **kw)
    assert not second.trained and teachers.TEACHER_TRAININGS == before + 1
    assert second.test_acc_tta == first.test_acc_tta and second.test_acc == pytest.approx(first.test_acc)
    assert second.trained_with == first.trained_with  # how it was trained, kept in the checkpoint
    assert first.trained_with["device"] == "cpu" and first.trained_with["precision"] in ("fp32", "bf16")
    assert isinstance(first.trained_with["channels_last"], bool) and first.trained_with["threads"] >= 1


def test_shift_batchnorm_is_batchnorm_plus_a_trained_shift():
    torch.manual_seed(0)
    norm, x = ShiftBatchNorm(8), torch.randn(4, 8, 5, 5)
    with torch.no_grad():
        norm.bias.normal_()
    ref_mean, ref_var = torch.zeros(8), torch.ones(8)
    ref = F.batch_norm(x, ref_mean, ref_var, None, norm.bias, True, 0.4, 1e-12)
    torch.testing.assert_close(norm(x), ref)
    torch.testing.assert_close(norm.running_mean, ref_mean)  # same running statistics (momentum 0.4)
    norm(x).sum().backward()
    torch.testing.assert_close(norm.bias.grad, torch.full((8,), 4 * 5 * 5.0))  # d(sum)/d(shift) = N·H·W
    norm.eval()
    stats = norm.running_mean, norm.running_var
    torch.testing.assert_close(norm(x), F.batch_norm(x, *stats, None, norm.bias, False, 0.4, 1e-12))


@pytest.mark.cuda
def test_airbench_trains_on_cuda_in_bf16_and_channels_last(data):
    model = AirbenchNet(widths=SMALL)
    result = airbench.train(model, data, epochs=1, batch_size=64, device="cuda", progress=False)
    assert result["precision"] == "bf16" and result["device"].startswith("cuda") and result["test_acc"] > 0
    assert all(m.bias.grad is not None for m in model.modules() if isinstance(m, ShiftBatchNorm))


def test_airbench_small_student_counts_and_pairs_with_the_teacher():
    student = create_model("airbench_small")
    assert student.kd_spec.role == "student" and isinstance(student, AirbenchNet)
    # whitening bias 24; block1 24·16·9 + 16·16·9; block2 16·48·9 + 48·48·9; block3 48·64·9 + 64·64·9;
    # BN shifts 2·(16 + 48 + 64); linear 64·10 (no bias)
    assert count_parameters(student) == 24 + 5_760 + 27_648 + 64_512 + 256 + 640 == 98_840
    distiller = kdcore.make_distiller("at", student, create_model("airbench"))
    distiller.prepare(torch.randn(2, 3, 32, 32))
    # 16²/8²/4² on both sides; the layers share their names, and each side's table column keeps its own shapes
    assert [(r["student layer"], r["student shape"], r["teacher layer"], r["teacher shape"])
            for r in distiller.pairs_table()] == [("block1", (16, 16, 16), "block1", (64, 16, 16)),
                                                 ("block2", (48, 8, 8), "block2", (256, 8, 8)),
                                                 ("block3", (64, 4, 4), "block3", (256, 4, 4))]


def test_fit_whitens_a_fresh_airbench_student(data):
    expected = create_model("airbench_small").whiten
    init_whitening(expected, data.normalize(data.train.images[:WHITEN_IMAGES]))
    student = create_model("airbench_small")
    assert not torch.allclose(student.whiten.weight, expected.weight)  # random until fit sets it
    kdcore.fit(student, data, epochs=1, batch_size=64, device="cpu")
    torch.testing.assert_close(student.whiten.weight, expected.weight, atol=0, rtol=0)  # set, then never trained
