"""kdcore.distill: equal-resolution pairing, each method's reference layers and weights, the registry."""
from pathlib import Path

import pytest
import torch

from kdcore import create_model, losses
from kdcore.distill import DKD, METHODS, Distiller, LogitKD, StepInputs, Term, make_distiller, parse_method, register
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
    ("kd:ls", {"ce": 0.1, "kd": 9.0}),                    # logit standardization: --kd-weight 9, CE 0.1
    ("dkd:ls", {"ce": 1.0, "dkd": 9.0}),                  # = its α = 9, β = 72 with CE 1
    ("dist", {"ce": 1.0, "dist": 2.0}),                   # DIST_KD's dist_cifar.yaml: kd_loss_weight 2
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


def _logits_step(tiny_pair, method, **kw):
    """(distiller's {term: weighted loss}, student logits, teacher logits, targets) on one eval-mode batch."""
    student, teacher = tiny_pair
    torch.manual_seed(2)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    d = make_distiller(method, student, teacher, **kw)
    student.eval()
    with torch.no_grad():
        _, parts = d.forward_train(x, y)
        zs, zt = student(x), teacher(x)
    student.train()
    return d, parts, zs, zt, y


def test_ls_is_an_option_of_kd_and_dkd_with_the_references_t_and_weight(tiny_pair):
    d, parts, zs, zt, y = _logits_step(tiny_pair, "kd:ls", temperature=4.0)  # the shared T does not reach the variant
    assert type(d.terms[1]) is LogitKD and d.terms[1].standardize and d.terms[1].temperature == 2.0
    torch.testing.assert_close(parts["kd"], 9.0 * losses.kd_loss(zs, zt, 2.0, standardize=True))
    assert parts["kd"] != pytest.approx(9.0 * losses.kd_loss(zs, zt, 2.0).item(), rel=1e-3)
    d, parts, zs, zt, y = _logits_step(tiny_pair, "dkd:ls")
    assert type(d.terms[1]) is DKD and (d.terms[1].alpha, d.terms[1].beta, d.terms[1].temperature) == (1.0, 8.0, 2.0)
    torch.testing.assert_close(parts["dkd"], 9.0 * losses.dkd_loss(zs, zt, y, temperature=2.0, standardize=True))
    student, teacher = tiny_pair
    own = make_distiller("kd:ls", student, teacher, kd_temperature=3.0, weights={"kd": 1.0}).terms[1]
    assert (own.temperature, own.weight, own.standardize) == (3.0, 1.0, True)  # prefixed options and weights win
    plain = make_distiller("kd", student, teacher).terms[1]
    assert (plain.temperature, plain.standardize) == (4.0, False)


def test_dist_term_is_dist_loss_with_the_cifar_recipe(tiny_pair):
    d, parts, zs, zt, _ = _logits_step(tiny_pair, "dist", temperature=1.0)  # KD's temperature is not DIST's τ
    assert (d.terms[1].beta, d.terms[1].gamma, d.terms[1].tau) == (1.0, 1.0, 4.0)
    torch.testing.assert_close(parts["dist"], 2.0 * losses.dist_loss(zs, zt, 1.0, 1.0, 4.0))
    student, teacher = tiny_pair
    assert make_distiller("dist", student, teacher, dist_tau=1.0).terms[1].tau == 1.0  # DIST_KD's ImageNet τ


def test_method_string_options_are_checked_and_pairings_reach_the_distiller(tiny_pair):
    student, teacher = tiny_pair
    assert parse_method("KD:LS+at:shifted") == ["kd:ls", "at:shifted"]
    assert make_distiller("kd+at:shifted", student, teacher).pairing == "shifted"
    assert make_distiller("at:shifted", student, teacher, pairing="shifted").pairing == "shifted"
    with pytest.raises(ConfigError, match="Unknown 'kd:' option 'lz'. Did you mean 'ls'"):
        parse_method("kd:lz")
    with pytest.raises(ConfigError, match="Unknown 'at:' option 'ls'"):
        parse_method("at:ls")  # a variant belongs to its term
    with pytest.raises(ConfigError, match="takes no options"):
        parse_method("baseline:ls")
    with pytest.raises(ConfigError, match="different pairings"):
        make_distiller("at:resolution", student, teacher, pairing="shifted")
    with pytest.raises(ConfigError, match="once"):
        make_distiller("kd:ls+kd", student, teacher)


def _dkd_step(epoch=0, progress=None):
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    return StepInputs(z, torch.tensor([0, 1, 2, 3]), z.flip(1), epoch=epoch, progress=progress)


def test_dkd_warms_up_over_the_share_of_the_schedule_mdistiller_uses():
    """mdistiller: 20 of 240 epochs. By default the ramp covers 1/12 of the run's steps, whatever its length."""
    dkd = DKD()
    assert dkd.warmup is None and dkd.warmup_fraction == pytest.approx(20 / 240)
    full = dkd(_dkd_step(progress=1.0))
    for progress, ramp in ((1 / 240, 0.05), (1 / 24, 0.5), (1 / 12, 1.0), (0.5, 1.0)):
        assert dkd.ramp(_dkd_step(progress=progress)) == pytest.approx(ramp)
        torch.testing.assert_close(dkd(_dkd_step(progress=progress)), ramp * full)
    assert dkd.ramp(_dkd_step(epoch=0, progress=None)) == 1.0  # a loop that gives no progress: no ramp
    # 240 epochs stepped once per epoch: mdistiller's min(epoch / 20, 1) with 1-based epochs
    assert [dkd.ramp(_dkd_step(progress=e / 240)) for e in (1, 10, 20, 21)] == pytest.approx([0.05, 0.5, 1.0, 1.0])
    epochs = DKD(warmup=2)  # explicit epochs: the per-epoch rule, progress ignored
    assert [epochs.ramp(_dkd_step(epoch=e, progress=0.9)) for e in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert DKD(warmup=0).ramp(_dkd_step(progress=0.001)) == 1.0
