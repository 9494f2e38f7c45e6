"""kdcore.distill: equal-resolution pairing, each method's reference layers and weights, the registry."""
from pathlib import Path

import pytest
import torch

from kdcore import create_model, losses
from kdcore.distill import METHODS, Distiller, LogitKD, Term, make_distiller, register
from kdcore.errors import ConfigError
from kdcore.models import FeatureHooks


@pytest.fixture(scope="module")
def resnet_pair():
    torch.manual_seed(0)
    return create_model("smallmynet"), create_model("resnet18_cifar")


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    return create_model("simplenet"), create_model("tiny_resnet")


def _table(method, student, teacher, size=32, **kw):
    d = make_distiller(method, student, teacher, **kw).prepare(torch.randn(2, 3, size, size))
    return d, d.pairs_table()


@pytest.mark.parametrize("pair", ["resnet_pair", "tiny_pair"])
@pytest.mark.parametrize("method", ["at", "hidden", "fitnet", "sp"])
def test_default_pairs_have_equal_resolution(request, pair, method):
    student, teacher = request.getfixturevalue(pair)
    _, rows = _table(method, student, teacher)
    assert rows and all(r["student shape"][1:] == r["teacher shape"][1:] for r in rows)


def test_reference_layers_per_method_resnet_pair(resnet_pair):
    student, teacher = resnet_pair
    at = [(r["student layer"], r["teacher layer"]) for r in _table("at", student, teacher)[1]]
    assert at == [("stage1", "layer1"), ("stage2", "layer2"), ("stage3", "layer3")]  # 32², 16², 8² (RepDistiller)
    sp = _table("sp", student, teacher)[1]
    assert [(r["student layer"], r["teacher layer"]) for r in sp] == [("stage3", "layer3")]  # one pair, last stage
    d, fit = _table("fitnet", student, teacher)
    assert [(r["student layer"], r["teacher layer"]) for r in fit] == [("stage2", "layer2")]  # middle hint
    reg = d.terms[1].regressors.regressors[0]
    assert [type(m).__name__ for m in reg.children()] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert reg.conv.kernel_size == (1, 1) and reg.conv.bias is not None


def test_tiny_pair_leaves_out_the_students_4x4_stage(tiny_pair):
    student, teacher = tiny_pair
    at = [(r["student layer"], r["teacher layer"], r["student shape"]) for r in _table("at", student, teacher)[1]]
    assert at == [("stage1", "layer2", (32, 16, 16)), ("stage2", "layer3", (64, 8, 8))]


def test_shifted_pairing_differs_from_default(resnet_pair, tiny_pair):
    for student, teacher in (resnet_pair, tiny_pair):
        default = [(r["student layer"], r["teacher layer"]) for r in _table("at", student, teacher)[1]]
        shifted = [(r["student layer"], r["teacher layer"]) for r in _table("at", student, teacher, pairing="shifted")[1]]
        assert shifted and shifted != default
    student, teacher = resnet_pair
    shifted = [(r["student layer"], r["teacher layer"]) for r in _table("at", student, teacher, pairing="shifted")[1]]
    assert shifted == [("stage1", "layer2"), ("stage2", "layer3"), ("stage3", "layer4")]  # teacher N -> student N-1


@pytest.mark.parametrize("method, expected", [
    ("kd", {"ce": 0.1, "kd": 0.9}),                       # Hinton: (1-α)·CE + α·KD
    ("kd+at", {"ce": 1.0, "kd": 0.9, "at": 1000.0}),      # RepDistiller: γ=1 CE + α KD + β feature
    ("at", {"ce": 1.0, "at": 1000.0}),
    ("fitnet", {"ce": 1.0, "fitnet": 100.0}),
    ("sp", {"ce": 1.0, "sp": 3000.0}),
    ("kd+sp", {"ce": 1.0, "kd": 0.9, "sp": 3000.0}),
    ("dkd", {"ce": 1.0, "dkd": 1.0}),
    ("hidden", {"ce": 1.0, "hidden": 1.0}),
])
def test_term_weights_follow_the_references(tiny_pair, method, expected):
    student, teacher = tiny_pair
    d = make_distiller(method, student, teacher, alpha=0.9)
    assert {t.name: pytest.approx(t.weight) for t in d.terms} == expected


def test_terms_equal_the_loss_functions_on_the_hooked_features(tiny_pair):
    student, teacher = tiny_pair
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    d = make_distiller("kd+at+sp+hidden", student, teacher, temperature=3.0).prepare(x)
    student.eval()
    with torch.no_grad():
        _, parts = d.forward_train(x, y)
        with FeatureHooks(student, ["stage1", "stage2"]) as sh, FeatureHooks(teacher, ["layer2", "layer3"]) as th:
            zs, zt = student(x), teacher(x)
    fs, ft = sh.features, th.features
    torch.testing.assert_close(parts["kd"], 0.9 * losses.kd_loss(zs, zt, 3.0))
    at = losses.at_loss(fs["stage1"], ft["layer2"]) + losses.at_loss(fs["stage2"], ft["layer3"])
    torch.testing.assert_close(parts["at"], 1000 * at)
    torch.testing.assert_close(parts["sp"], 3000 * losses.sp_loss(fs["stage2"], ft["layer3"]))
    hidden = 0.5 * losses.hidden_cosine_loss(fs["stage1"], ft["layer2"]) + 0.5 * losses.hidden_cosine_loss(fs["stage2"], ft["layer3"])
    torch.testing.assert_close(parts["hidden"], hidden)
    student.train()


def test_hooks_narrow_to_the_chosen_layers_after_the_first_step(tiny_pair):
    student, teacher = tiny_pair
    d, _ = _table("sp", student, teacher)
    assert d.student_hooks.names == ("stage2",) and d.teacher_hooks.names == ("layer3",)


def test_pairs_table_rows_carry_shapes_and_weights(tiny_pair):
    student, teacher = tiny_pair
    _, rows = _table("hidden", student, teacher, level_weights=[0.25, 1.0])
    assert [r["weight"] for r in rows] == [0.25, 1.0]
    assert set(rows[0]) == {"term", "student layer", "student shape", "teacher layer", "teacher shape", "weight"}
    with pytest.raises(ConfigError, match="level_weights has 3 values but"):
        _table("hidden", student, teacher, level_weights=[0.25, 0.5, 1.0])
    with pytest.raises(ConfigError, match="prepare"):
        make_distiller("at", student, teacher).pairs_table()


def test_one_registration_line_adds_a_method(tiny_pair):
    student, teacher = tiny_pair

    @register
    class L1Logits(Term):
        name, weight = "l1logits_test", 0.5

        def forward(self, s):
            return (s.student_logits - s.teacher_logits).abs().mean()

    try:
        d = make_distiller("kd+l1logits_test", student, teacher)
        assert [t.name for t in d.terms] == ["ce", "kd", "l1logits_test"] and d.terms[2].weight == 0.5
        _, parts = d.forward_train(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
        assert parts["l1logits_test"] > 0
    finally:
        METHODS.pop("l1logits_test")
    custom = L1Logits(weight=2.0)  # an instance works without registering
    d = make_distiller([LogitKD(), custom], student, teacher)
    assert d.terms[-1] is custom and d.terms[-1].weight == 2.0


def test_options_reach_their_terms_and_typos_are_refused(tiny_pair):
    student, teacher = tiny_pair
    d = make_distiller("dkd", student, teacher, dkd_beta=2.0, dkd_warmup=3, temperature=2.0)
    assert (d.terms[1].beta, d.terms[1].warmup, d.terms[1].temperature) == (2.0, 3, 2.0)
    make_distiller("kd", student, teacher, level_weights=[1.0], dkd_beta=2.0)  # options of absent terms are ignored
    with pytest.raises(ConfigError, match="level_weight'"):
        make_distiller("hidden", student, teacher, level_weight=[1.0])
    with pytest.raises(ConfigError, match="Unknown method 'crd'"):
        make_distiller("crd", student, teacher)
    with pytest.raises(ConfigError, match="pairing"):
        Distiller(student, teacher, [LogitKD()], pairing="aligned")


def test_readme_example_adds_a_method_in_under_15_lines(tiny_pair):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("**Adding a method**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) < 15
    try:
        exec(compile(block, "README.md", "exec"), {})
        student, teacher = tiny_pair
        d = make_distiller("kd+l2logits", student, teacher)
        _, parts = d.forward_train(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
        assert parts["l2logits"] > 0 and d.terms[1].weight == pytest.approx(0.9)
    finally:
        METHODS.pop("l2logits", None)
