"""kdcore.models: every registered model builds and runs on CPU, names resolve, weights load or fail clearly, hooks."""
from __future__ import annotations

import socket

import pytest
import torch
import torchvision
from torch import nn

from kdcore.errors import CheckpointError, ConfigError, PretrainedUnavailableError
from kdcore.models import (MODELS, FeatureHooks, ModelSpec, count_parameters, create_model, feature_blocks,
                           list_models)

KDCORE = [n for n, s in MODELS.items() if s.source == "kdcore"]
EXTERNAL = [n for n, s in MODELS.items() if s.source != "kdcore"]
STUDENTS = list_models("student")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No DNS, no proxy and empty weight caches, so pretrained=True fails here the way it does offline."""
    def refuse(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known (network disabled by the test)")

    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)
    yield
    socket.setdefaulttimeout(old_timeout)


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------- registry

def test_registry_is_consistent():
    assert list_models() == sorted(MODELS)
    assert set(list_models("teacher")) | set(STUDENTS) == set(MODELS)
    assert {"resnet18_cifar", "tiny_resnet", "efficientvit_b1"} <= set(list_models("teacher"))
    for name, spec in MODELS.items():
        assert isinstance(spec, ModelSpec) and spec.name == name == name.lower()
        assert spec.role in ("teacher", "student") and spec.source in ("kdcore", "torchvision", "timm")
        assert len(spec.feature_blocks) in (3, 4) and spec.description
    with pytest.raises(ConfigError, match="Valid role names: student, teacher"):
        list_models("teachers")


# --------------------------------------------------------------------------- every model runs

@pytest.mark.parametrize("name", KDCORE + ["resnet18_cifar"])
def test_trainable_models_forward_backward(name):
    model = create_model(name, num_classes=10)
    assert model.kd_spec is MODELS[name]
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", [n for n in EXTERNAL if n != "resnet18_cifar"])
def test_big_teachers_build_and_forward(name):
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", STUDENTS + ["tiny_resnet", "resnet18_cifar", "efficientvit_b1"])
def test_one_input_channel(name):
    model = create_model(name, num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", KDCORE)
def test_kdcore_models_accept_other_input_sizes(name):
    model = create_model(name, num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 56)).shape == (1, 100)


def test_kwargs_reach_the_constructor():
    assert create_model("efficientvit_b1", drop_rate=0.3).head.classifier[3].p == 0.3
    assert create_model("resnet50", zero_init_residual=True).layer1[0].bn3.weight.abs().sum() == 0
    assert create_model("student_resnet", blocks_per_stage=3).stage3[2].conv2.out_channels == 64
    with pytest.raises(TypeError):
        create_model("student_light", width=2)


def test_smallmynet_has_exactly_89397_parameters():
    model = create_model("SmallMyNet")
    assert count_parameters(model) == 89_397
    model.stage1.requires_grad_(False)
    assert count_parameters(model) < 89_397 == count_parameters(model, trainable_only=False)


def test_students_are_small():
    counts = {n: count_parameters(create_model(n)) for n in STUDENTS}
    assert max(counts.values()) < 1_000_000
    assert counts["student_light"] < 30_000
    assert 250_000 < count_parameters(create_model("tiny_resnet")) < 350_000
    assert count_parameters(create_model("tiny_resnet", width=16)) < 100_000


# --------------------------------------------------------------------------- names and arguments

@pytest.mark.parametrize("alias, name", [("SmallMyNet", "smallmynet"), ("StudentNetLight", "student_light"),
                                         ("StudentNetSeparable", "student_separable"), ("SimpleNet", "simplenet"),
                                         ("StudentNetDepthwiseSkip", "student_depthwise_skip"),
                                         ("StudentResNet", "student_resnet"), ("SMALLMYNET", "smallmynet"),
                                         ("ResNet18_CIFAR", "resnet18_cifar"), ("Tiny_ResNet", "tiny_resnet")])
def test_aliases_and_case_insensitive_names(alias, name):
    assert create_model(alias).kd_spec.name == name
    assert feature_blocks(alias) == MODELS[name].feature_blocks


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        create_model("smalmynet")
    message = str(err.value)
    assert "Did you mean 'smallmynet'" in message
    assert all(name in message for name in MODELS)


@pytest.mark.parametrize("kwargs, fragment", [(dict(num_classes=1), "num_classes must be >= 2"),
                                              (dict(in_channels=0), "in_channels must be >= 1"),
                                              (dict(pretrained=3), "pretrained must be True, False or a checkpoint")])
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        create_model("student_light", **kwargs)


# --------------------------------------------------------------------------- pretrained weights

@pytest.mark.parametrize("name, source", [("resnet50", "torchvision"), ("efficientvit_b1", "timm")])
def test_pretrained_without_network_fails_clearly(no_network, name, source):
    with pytest.raises(PretrainedUnavailableError) as err:
        create_model(name, pretrained=True)
    message = str(err.value)
    assert f"{source} {name}" in message and "could not be fetched" in message
    assert "internet" in message and "pretrained='path/to/weights.pt'" in message and "pretrained=False" in message
    assert "\n" not in message


def test_kdcore_models_have_no_published_weights():
    with pytest.raises(PretrainedUnavailableError, match="no published weights.*checkpoint path"):
        create_model("tiny_resnet", pretrained=True)


def test_torchvision_pretrained_replaces_head_and_averages_rgb_stem(monkeypatch):
    imagenet = torchvision.models.resnet50().state_dict()
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, **kw: imagenet)
    model = create_model("resnet50", num_classes=5, in_channels=1, pretrained=True)
    assert model.fc.out_features == 5
    torch.testing.assert_close(model.conv1.weight, imagenet["conv1.weight"].mean(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer4[2].conv3.weight, imagenet["layer4.2.conv3.weight"])


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"model": sd, "epoch": 3}, lambda sd: {"state_dict": sd}])
def test_checkpoint_path_round_trip(tmp_path, wrap):
    trained = create_model("smallmynet", num_classes=4).eval()
    path = tmp_path / "student.pt"
    torch.save(wrap(trained.state_dict()), path)
    loaded = create_model("smallmynet", num_classes=4, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x))
    assert loaded.kd_spec.name == "smallmynet"


def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(PretrainedUnavailableError, match="weights.pt") as err:
        create_model("student_resnet", pretrained=str(path))
    assert str(path) in str(err.value)


def test_mismatching_checkpoint_names_the_keys(tmp_path):
    path = tmp_path / "hundred.pt"
    torch.save(create_model("tiny_resnet", num_classes=100).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"head\.2\.weight: checkpoint \(100, 128\) vs model \(10, 128\)"):
        create_model("tiny_resnet", num_classes=10, pretrained=path)


# --------------------------------------------------------------------------- features and hooks

@pytest.mark.parametrize("name, shapes", [
    ("resnet18_cifar", {"layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8), "layer4": (512, 4, 4)}),
    ("efficientvit_b1", {"stages.0": (32, 8, 8), "stages.1": (64, 4, 4), "stages.2": (128, 2, 2),
                         "stages.3": (256, 1, 1)}),
])
def test_feature_hooks_capture_stage_outputs(name, shapes):
    model = create_model(name).eval()
    assert feature_blocks(model) == tuple(shapes)
    with FeatureHooks(model, feature_blocks(model)) as hooks, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in hooks.features.items()} == {k: (2, *s) for k, s in shapes.items()}
    assert no_hooks_left(model)


@pytest.mark.parametrize("name", KDCORE)
def test_every_kdcore_feature_block_is_a_feature_map(name):
    model = create_model(name)
    with FeatureHooks(model, feature_blocks(name)) as hooks:
        model(torch.randn(2, 3, 32, 32))
    assert list(hooks.features) == list(feature_blocks(name))
    assert all(f.dim() == 4 and f.shape[0] == 2 and f.requires_grad for f in hooks.features.values())
    assert no_hooks_left(model)


def test_hooks_attach_remove_and_nesting():
    model = create_model("student_light")
    hooks = FeatureHooks(model, ["stage2"]).attach()
    with hooks:  # already attached (as the Distiller keeps them): leaving the block must not detach
        model(torch.randn(1, 3, 32, 32))
    model(torch.randn(3, 3, 32, 32))
    assert hooks.attached and hooks.features["stage2"].shape[0] == 3
    hooks.remove()
    assert not hooks.attached and no_hooks_left(model)
    model(torch.randn(5, 3, 32, 32))
    assert hooks.features["stage2"].shape[0] == 3


def test_hooks_exit_on_error_removes_hooks():
    model = create_model("student_light")
    with pytest.raises(RuntimeError), FeatureHooks(model, ["stage1"]):
        model(torch.randn(1, 2, 32, 32))  # wrong channel count
    assert no_hooks_left(model)


def test_hooks_take_the_first_tensor_of_a_tuple_output():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, "extra"

    model = nn.Sequential(nn.Identity(), Pair())
    x = torch.ones(1, 2, 3, 3)
    with FeatureHooks(model, ["1"]) as hooks:
        model(x)
    torch.testing.assert_close(hooks.features["1"], x * 2)


def test_unknown_layer_lists_available_names():
    small = create_model("student_light")
    with pytest.raises(ConfigError) as err:
        FeatureHooks(small, ["stage4"])
    message = str(err.value)
    assert "Did you mean 'stage" in message
    assert all(name in message for name, _ in small.named_modules() if name)

    big = create_model("resnet18_cifar")
    with pytest.raises(ConfigError) as err:
        FeatureHooks(big, ["layer5"])
    message = str(err.value)
    assert "'layer4'" in message and "fc" in message and "[n for n, _ in model.named_modules()]" in message
    assert no_hooks_left(big)


def test_feature_blocks_of_a_raw_model_explains_the_fix():
    with pytest.raises(ConfigError, match="create_model.*layer names explicitly"):
        feature_blocks(torchvision.models.resnet18())
