"""Tests for kdcore.losses: hand-derived values, known identities and reference formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdcore.errors import ConfigError
from kdcore.losses import (
    FitNetLoss,
    FitNetRegressor,
    at_loss,
    attention_map,
    dist_loss,
    dkd_loss,
    dkd_terms,
    fitnet_loss,
    hidden_cosine_loss,
    hidden_state_loss,
    kd_loss,
    pool_to_common,
    resolution_pairs,
    sp_loss,
    standardize_logits,
)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def block_mean(x, k):
    """Average non-overlapping k×k blocks of (..., H, W) by reshaping (independent of adaptive pooling)."""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // k, k, w // k, k).mean(dim=(-3, -1))


# --------------------------------------------------------------------------- KD


def test_kd_zero_for_equal_logits_positive_otherwise(gen):
    s = randn(gen, 6, 10)
    assert kd_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(s, randn(gen, 6, 10)).item() > 1e-3


def test_kd_hand_computed_two_classes():
    # s/T = [0.5, 0], t/T = [0, 0.5] with T = 2.
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    ps1 = math.exp(0.5) / (math.exp(0.5) + 1.0)
    ps = [ps1, 1.0 - ps1]
    pt = [1.0 - ps1, ps1]
    kl = sum(pt[i] * (math.log(pt[i]) - math.log(ps[i])) for i in range(2))
    assert kd_loss(s, t, temperature=2.0).item() == pytest.approx(4.0 * kl, rel=1e-5)
    # T = 1 has no scaling and p = softmax of the raw logits.
    q = math.exp(1.0) / (math.exp(1.0) + 1.0)
    kl1 = (1 - q) * math.log((1 - q) / q) + q * math.log(q / (1 - q))
    assert kd_loss(s, t, temperature=1.0).item() == pytest.approx(kl1, rel=1e-5)


def test_kd_batchmean_is_mean_of_per_sample(gen):
    s, t = randn(gen, 5, 7), randn(gen, 5, 7)
    per = kd_loss(s, t, reduction="none")
    assert per.shape == (5,)
    assert kd_loss(s, t).item() == pytest.approx(per.mean().item(), rel=1e-6)
    # Only sample 0 differs -> only per[0] is non-zero.
    t2 = s.clone()
    t2[0] += randn(gen, 7)
    per2 = kd_loss(s, t2, reduction="none")
    assert per2[0] > 0 and torch.allclose(per2[1:], torch.zeros(4), atol=1e-6)


def test_kd_invariant_to_constant_shift(gen):
    s, t = randn(gen, 4, 9), randn(gen, 4, 9)
    base = kd_loss(s, t, temperature=3.0)
    shifted = kd_loss(s + randn(gen, 4, 1, scale=5.0), t - 7.0, temperature=3.0)
    assert shifted.item() == pytest.approx(base.item(), rel=1e-5)


def test_kd_gradient_closed_form(gen):
    b, c, temp = 4, 6, 3.0
    s = randn(gen, b, c, scale=2.0).requires_grad_()
    t = randn(gen, b, c, scale=2.0)
    kd_loss(s, t, temperature=temp).backward()
    expected = temp * (F.softmax(s.detach() / temp, 1) - F.softmax(t / temp, 1)) / b
    torch.testing.assert_close(s.grad, expected, atol=1e-6, rtol=1e-5)


def test_kd_under_bf16_autocast_is_float32(gen):
    s = randn(gen, 8, 100, scale=5.0).bfloat16()
    t = randn(gen, 8, 100, scale=5.0).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kd_loss(s, t)
    ref = kd_loss(s.float(), t.float())
    assert out.dtype == torch.float32 and out.dim() == 0
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)


def test_kd_errors():
    s = torch.zeros(4, 10)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="temperature"):
            kd_loss(s, s, temperature=bad)
    with pytest.raises(ConfigError) as exc:
        kd_loss(s, torch.zeros(4, 100))
    msg = str(exc.value)
    assert "(4, 10)" in msg and "(4, 100)" in msg and "same classes" in msg
    with pytest.raises(ConfigError, match="Batch sizes differ"):
        kd_loss(s, torch.zeros(3, 10))
    with pytest.raises(ConfigError, match="reduction"):
        kd_loss(s, s, reduction="sum")
    with pytest.raises(ValueError):  # ConfigError is a ValueError for generic handlers
        kd_loss(s, s, temperature=0)


# --------------------------------------------------------------------------- DKD


def _mdistiller_dkd(ls, lt, target, alpha, beta, temp):
    """mdistiller's reference dkd_loss (probability space, -1000 mask), for moderate logits."""
    gt = torch.zeros_like(ls).scatter_(1, target.unsqueeze(1), 1).bool()
    other = ~gt

    def cat_mask(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], 1)

    ps = cat_mask(F.softmax(ls / temp, 1))
    pt = cat_mask(F.softmax(lt / temp, 1))
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * temp**2 / ls.shape[0]
    pt2 = F.softmax(lt / temp - 1000.0 * gt, 1)
    lps2 = F.log_softmax(ls / temp - 1000.0 * gt, 1)
    nckd = F.kl_div(lps2, pt2, reduction="sum") * temp**2 / ls.shape[0]
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_matches_mdistiller_reference(gen, temp):
    s, t = randn(gen, 16, 10, scale=3.0), randn(gen, 16, 10, scale=3.0)
    y = torch.randint(0, 10, (16,), generator=gen)
    ref = _mdistiller_dkd(s.double(), t.double(), y, 1.0, 8.0, temp)
    assert dkd_loss(s, t, y, temperature=temp).item() == pytest.approx(ref.item(), rel=1e-4)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_dkd_decomposes_kd_per_sample(gen, temp):
    s, t = randn(gen, 32, 10, scale=3.0), randn(gen, 32, 10, scale=3.0)
    y = torch.randint(0, 10, (32,), generator=gen)
    tckd, nckd = dkd_terms(s, t, y, temperature=temp, reduction="none")
    kd = kd_loss(s, t, temperature=temp, reduction="none")
    pt_target = F.softmax(t / temp, 1).gather(1, y.unsqueeze(1)).squeeze(1)
    assert tckd.shape == nckd.shape == (32,)
    torch.testing.assert_close(kd, tckd + (1 - pt_target) * nckd, atol=1e-5, rtol=1e-5)
    # and both terms carry information (neither is identically 0)
    assert (tckd > 0).all() and (nckd > 0).all()


def test_dkd_loss_is_weighted_sum(gen):
    s, t = randn(gen, 8, 5), randn(gen, 8, 5)
    y = torch.randint(0, 5, (8,), generator=gen)
    tckd, nckd = dkd_terms(s, t, y, temperature=2.0)
    out = dkd_loss(s, t, y, alpha=2.0, beta=3.0, temperature=2.0)
    assert out.item() == pytest.approx(2.0 * tckd.item() + 3.0 * nckd.item(), rel=1e-6)
    # the defaults are alpha=1, beta=8, T=4
    tckd4, nckd4 = dkd_terms(s, t, y)
    assert dkd_loss(s, t, y).item() == pytest.approx(tckd4.item() + 8 * nckd4.item(), rel=1e-6)


def test_nckd_ignores_target_logit_but_tckd_does_not(gen):
    s, t = randn(gen, 8, 6), randn(gen, 8, 6)
    y = torch.randint(0, 6, (8,), generator=gen)
    s2, t2 = s.clone(), t.clone()
    rows = torch.arange(8)
    s2[rows, y] = randn(gen, 8, scale=10.0)
    t2[rows, y] = randn(gen, 8, scale=10.0)
    tckd, nckd = dkd_terms(s, t, y, reduction="none")
    tckd2, nckd2 = dkd_terms(s2, t2, y, reduction="none")
    torch.testing.assert_close(nckd, nckd2, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tckd, tckd2, atol=1e-3)


def test_nckd_exact_mask_with_huge_target_logit(gen):
    # The target logit dominates (1e4 / T = 2500 >> mdistiller's 1000 offset); NCKD must
    # still equal the KL of the softmaxes over the remaining columns.
    s, t = randn(gen, 4, 5), randn(gen, 4, 5)
    y = torch.tensor([0, 1, 2, 4])
    rows = torch.arange(4)
    s[rows, y] = 1e4
    t[rows, y] = 1e4
    _, nckd = dkd_terms(s, t, y, temperature=4.0, reduction="none")
    for i in range(4):
        keep = [c for c in range(5) if c != y[i]]
        ps = F.log_softmax(s[i, keep] / 4.0, 0)
        pt = F.log_softmax(t[i, keep] / 4.0, 0)
        expected = 16.0 * (pt.exp() * (pt - ps)).sum()
        assert nckd[i].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dkd_finite_with_extreme_logits(gen, dtype):
    sign_s = torch.randint(0, 2, (8, 10), generator=gen) * 2 - 1
    sign_t = torch.randint(0, 2, (8, 10), generator=gen) * 2 - 1
    s = (1e4 * sign_s).to(dtype).requires_grad_()
    t = (1e4 * sign_t).to(dtype)
    y = torch.randint(0, 10, (8,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        tckd, nckd = dkd_terms(s, t, y)
        loss = dkd_loss(s, t, y)
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(loss)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(s.grad.float()).all()
    # one-hot-like teacher with the student agreeing gives (close to) zero loss
    assert dkd_loss(t.float(), t.float(), y).item() == pytest.approx(0.0, abs=1e-6)


def test_tckd_confident_teacher_is_exact(gen):
    # Teacher is certain (p_target = 1 - e^-5000 in float32 terms): b_t = [1, ~0], so
    # TCKD = T²·(−log p_s[target]). A log(1 − p) implementation gives log(0) -> NaN here.
    temp = 4.0
    y = torch.tensor([0, 3, 7, 9])
    t = torch.full((4, 10), -1e4)
    t[torch.arange(4), y] = 1e4
    s = randn(gen, 4, 10, scale=3.0).requires_grad_()
    tckd, nckd = dkd_terms(s, t, y, temperature=temp, reduction="none")
    expected = -temp**2 * F.log_softmax(s.detach() / temp, 1).gather(1, y.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(tckd, expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(nckd).all()
    (tckd.sum() + nckd.sum()).backward()
    assert torch.isfinite(s.grad).all()


def test_dkd_errors():
    s = torch.zeros(4, 10)
    with pytest.raises(ConfigError, match="temperature"):
        dkd_terms(s, s, torch.zeros(4, dtype=torch.long), temperature=0)
    with pytest.raises(ConfigError, match="class indices"):
        dkd_terms(s, s, torch.zeros(4, 10))  # soft labels
    with pytest.raises(ConfigError, match="class indices"):
        dkd_terms(s, s, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="same classes"):
        dkd_loss(s, torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="beta"):
        dkd_loss(s, s, torch.zeros(4, dtype=torch.long), beta=-1.0)


# --------------------------------------------------------------------------- logit standardization


def _sun_normalize(logit):
    """logit-standardization-KD, mdistiller/distillers/KD.py ``normalize`` (verbatim)."""
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def _sun_kd(logits_student_in, logits_teacher_in, temperature, logit_stand):
    """logit-standardization-KD's ``kd_loss`` (verbatim)."""
    logits_student = _sun_normalize(logits_student_in) if logit_stand else logits_student_in
    logits_teacher = _sun_normalize(logits_teacher_in) if logit_stand else logits_teacher_in
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    loss_kd *= temperature**2
    return loss_kd


def _sun_dkd(ls, lt, target, alpha, beta, temp, logit_stand):
    """logit-standardization-KD's ``dkd_loss``: its normalize, then mdistiller's DKD (as _mdistiller_dkd)."""
    if logit_stand:
        ls, lt = _sun_normalize(ls), _sun_normalize(lt)
    return _mdistiller_dkd(ls, lt, target, alpha, beta, temp)


def test_standardize_logits_is_a_per_sample_z_score_with_the_sample_std(gen):
    z = randn(gen, 6, 10, scale=4.0) + 3.0
    out = standardize_logits(z)
    torch.testing.assert_close(out.mean(1), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.std(1, correction=1), torch.ones(6), atol=1e-5, rtol=0)  # ddof=1, as torch.std
    assert out.std(1, correction=0).sub(1).abs().min() > 1e-3  # not the population std
    torch.testing.assert_close(standardize_logits(torch.zeros(2, 5)), torch.zeros(2, 5))  # flat rows: 0, not NaN


@pytest.mark.parametrize("temp", [2.0, 4.0])
def test_kd_ls_matches_the_logit_standardization_reference(gen, temp):
    s, t = randn(gen, 16, 10, scale=3.0), randn(gen, 16, 10, scale=5.0)
    for stand in (True, False):
        ref = _sun_kd(s.double(), t.double(), temp, stand)
        assert kd_loss(s, t, temp, standardize=stand).item() == pytest.approx(ref.item(), rel=1e-5)
    assert kd_loss(s, t, temp, standardize=True).item() != pytest.approx(kd_loss(s, t, temp).item(), rel=1e-2)


@pytest.mark.parametrize("temp", [2.0, 4.0])
def test_dkd_ls_matches_the_logit_standardization_reference(gen, temp):
    s, t = randn(gen, 16, 10, scale=3.0), randn(gen, 16, 10, scale=5.0)
    y = torch.randint(0, 10, (16,), generator=gen)
    ref = _sun_dkd(s.double(), t.double(), y, 9.0, 72.0, temp, True)  # the reference's --kd-weight 9 on α=1, β=8
    assert dkd_loss(s, t, y, 9.0, 72.0, temp, standardize=True).item() == pytest.approx(ref.item(), rel=1e-4)


def test_ls_ignores_each_samples_logit_shift_and_scale(gen):
    """Why standardize: a student whose logits have a smaller range than the teacher's is not penalised for it."""
    s, t = randn(gen, 8, 10), randn(gen, 8, 10, scale=3.0)
    y = torch.randint(0, 10, (8,), generator=gen)
    shift, scale = randn(gen, 8, 1, scale=5.0), torch.rand(8, 1, generator=gen) * 4 + 0.25
    base = kd_loss(s, t, 2.0, standardize=True)
    assert kd_loss(s * scale + shift, t, 2.0, standardize=True).item() == pytest.approx(base.item(), rel=1e-4)
    assert kd_loss(s * scale, t, 2.0).item() != pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-2)  # plain KD is not
    tckd, nckd = dkd_terms(s, t, y, 2.0, standardize=True)
    tckd2, nckd2 = dkd_terms(s * scale + shift, t, y, 2.0, standardize=True)
    torch.testing.assert_close((tckd2, nckd2), (tckd, nckd), atol=1e-5, rtol=1e-4)


def test_ls_float32_under_bf16_autocast(gen):
    s, t = randn(gen, 8, 100, scale=5.0).bfloat16(), randn(gen, 8, 100, scale=5.0).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kd_loss(s, t, 2.0, standardize=True)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(kd_loss(s.float(), t.float(), 2.0, standardize=True).item(), rel=1e-5)


# --------------------------------------------------------------------------- DIST


def _dist_kd_reference(z_s, z_t, beta, gamma, tau):
    """DIST_KD (hunto/image_classification_sota lib/models/losses/dist_kd.py) ``DIST.forward``, verbatim."""
    def cosine_similarity(a, b, eps=1e-8):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    def pearson_correlation(a, b, eps=1e-8):
        return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)

    def inter_class_relation(y_s, y_t):
        return 1 - pearson_correlation(y_s, y_t).mean()

    def intra_class_relation(y_s, y_t):
        return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))

    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 1.0), (1.0, 1.0, 4.0), (2.0, 0.5, 2.0), (1.0, 0.0, 1.0)])
def test_dist_matches_the_dist_kd_reference(gen, beta, gamma, tau):
    s, t = randn(gen, 32, 10, scale=3.0), randn(gen, 32, 10, scale=3.0)
    ref = _dist_kd_reference(s.double(), t.double(), beta, gamma, tau)
    assert dist_loss(s, t, beta, gamma, tau).item() == pytest.approx(ref.item(), rel=1e-5)


def test_dist_zero_when_predictions_agree_and_both_relations_count(gen):
    s, t = randn(gen, 16, 10, scale=2.0), randn(gen, 16, 10, scale=2.0)
    assert dist_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-5)
    inter, intra = dist_loss(s, t, 1.0, 0.0), dist_loss(s, t, 0.0, 1.0)
    assert inter > 0.1 and intra > 0.1
    assert dist_loss(s, t, 1.0, 1.0).item() == pytest.approx(inter.item() + intra.item(), rel=1e-6)
    # the intra-class relation couples the samples of a batch: sample 0's loss depends on sample 1
    t2 = t.clone()
    t2[1] = randn(gen, 10, scale=2.0)
    assert dist_loss(s[:1], t[:1], 0.0, 1.0).item() == pytest.approx(1.0)  # one sample: no spread to correlate
    assert dist_loss(s, t2, 0.0, 1.0).item() != pytest.approx(intra.item(), rel=1e-3)


def test_dist_gradients_finite_and_float32_under_autocast(gen):
    s = randn(gen, 8, 10, scale=3.0).bfloat16().requires_grad_()
    t = randn(gen, 8, 10, scale=3.0).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dist_loss(s, t, tau=4.0)
    assert out.dtype == torch.float32 and out.dim() == 0
    out.backward()
    assert torch.isfinite(s.grad.float()).all() and s.grad.abs().sum() > 0
    one = randn(gen, 1, 10).requires_grad_()
    dist_loss(one, randn(gen, 1, 10)).backward()
    assert torch.isfinite(one.grad).all()
    with pytest.raises(ConfigError, match="same classes"):
        dist_loss(torch.zeros(4, 10), torch.zeros(4, 5))
    with pytest.raises(ConfigError, match="gamma"):
        dist_loss(torch.zeros(4, 10), torch.zeros(4, 10), gamma=-1.0)


# --------------------------------------------------------------------------- AT


def test_attention_map_definition(gen):
    f = randn(gen, 2, 3, 4, 4)
    torch.testing.assert_close(attention_map(f, 2), (f**2).mean(1))
    torch.testing.assert_close(attention_map(f, 1), f.abs().mean(1))


def test_at_zero_for_identical_and_scale_invariant(gen):
    fs, ft = randn(gen, 3, 8, 6, 6), randn(gen, 3, 16, 6, 6)
    assert at_loss(fs, fs.clone()).item() == pytest.approx(0.0, abs=1e-7)
    base = at_loss(fs, ft)
    assert base.item() > 0
    assert at_loss(2.5 * fs, ft).item() == pytest.approx(base.item(), rel=1e-5)
    assert at_loss(fs, 0.1 * ft).item() == pytest.approx(base.item(), rel=1e-5)


def repdistiller_at_loss(f_s, f_t, p=2):
    """RepDistiller distiller_zoo/AT.py, transcribed: pool the larger *feature map*, then the attention map."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    at = lambda f: F.normalize(f.pow(p).mean(1).view(f.size(0), -1))  # noqa: E731
    return (at(f_s) - at(f_t)).pow(2).mean()


@pytest.mark.parametrize("s_shape, t_shape", [((4, 3, 8, 8), (4, 5, 8, 8)), ((4, 3, 16, 16), (4, 5, 8, 8)),
                                              ((4, 3, 4, 4), (4, 5, 8, 8)), ((4, 3, 32, 32), (4, 7, 8, 8))])
def test_at_equals_repdistiller_on_random_maps_of_any_sizes(gen, s_shape, t_shape):
    fs, ft = randn(gen, *s_shape), randn(gen, *t_shape)
    torch.testing.assert_close(at_loss(fs, ft), repdistiller_at_loss(fs, ft), rtol=1e-5, atol=1e-8)


def test_at_pools_features_before_the_map_by_hand(gen):
    fs, ft = randn(gen, 2, 3, 8, 8), randn(gen, 2, 5, 4, 4)
    a_s = (block_mean(fs, 2) ** 2).mean(1).reshape(2, -1)  # pool the features 2x2, then square and average channels
    a_t = (ft**2).mean(1).reshape(2, -1)
    a_s = a_s / a_s.norm(dim=1, keepdim=True)
    a_t = a_t / a_t.norm(dim=1, keepdim=True)
    expected = ((a_s - a_t) ** 2).mean()
    assert at_loss(fs, ft).item() == pytest.approx(expected.item(), rel=1e-5)
    assert at_loss(ft, fs).item() == pytest.approx(expected.item(), rel=1e-5)  # symmetric in which side is larger
    # pooling the *map* instead is a different loss: the order matters whenever the sizes differ
    a_s_map = block_mean((fs**2).mean(1), 2).reshape(2, -1)
    a_s_map = a_s_map / a_s_map.norm(dim=1, keepdim=True)
    assert abs(((a_s_map - a_t) ** 2).mean().item() - expected.item()) > 1e-4


def test_at_errors(gen):
    with pytest.raises(ConfigError, match="Batch sizes differ"):
        at_loss(randn(gen, 2, 3, 4, 4), randn(gen, 3, 3, 4, 4))
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\)"):
        at_loss(randn(gen, 2, 3), randn(gen, 2, 3))
    with pytest.raises(ConfigError, match="p must be"):
        at_loss(randn(gen, 2, 3, 4, 4), randn(gen, 2, 3, 4, 4), p=0)


# --------------------------------------------------------------------------- SP


def test_sp_zero_for_identical_and_scale_invariant(gen):
    fs, ft = randn(gen, 6, 4, 3, 3), randn(gen, 6, 10)
    assert sp_loss(fs, fs.clone()).item() == pytest.approx(0.0, abs=1e-7)
    base = sp_loss(fs, ft)
    assert base.item() > 0
    assert sp_loss(3.7 * fs, ft).item() == pytest.approx(base.item(), rel=1e-5)


def test_sp_hand_computed_2x2():
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G_s = I
    ft = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G_t = all ones -> rows [1/√2, 1/√2]
    # ‖G_s − G_t‖² = 2·((1 − 1/√2)² + 1/2) = 4 − 2√2, divided by B² = 4
    assert sp_loss(fs, ft).item() == pytest.approx(1.0 - math.sqrt(2) / 2, rel=1e-6)


def test_sp_matches_formula(gen):
    b = 5
    fs, ft = randn(gen, b, 3, 4, 4), randn(gen, b, 7, 2, 2)
    gs = fs.reshape(b, -1) @ fs.reshape(b, -1).T
    gt = ft.reshape(b, -1) @ ft.reshape(b, -1).T
    gs = gs / gs.norm(dim=1, keepdim=True)
    gt = gt / gt.norm(dim=1, keepdim=True)
    expected = ((gs - gt) ** 2).sum() / b**2
    assert sp_loss(fs, ft).item() == pytest.approx(expected.item(), rel=1e-5)


def test_sp_float32_under_autocast(gen):
    fs, ft = randn(gen, 8, 64).bfloat16(), randn(gen, 8, 32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sp_loss(fs, ft)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(sp_loss(fs.float(), ft.float()).item(), rel=1e-5)


def test_sp_batch_mismatch(gen):
    with pytest.raises(ConfigError, match="Batch sizes differ"):
        sp_loss(randn(gen, 4, 3), randn(gen, 5, 3))


# --------------------------------------------------------------------------- hidden-state cosine


def test_pool_to_common_shapes_and_values(gen):
    s, t = randn(gen, 2, 16, 8, 8), randn(gen, 2, 32, 4, 4)
    ps, pt = pool_to_common(s, t)
    assert ps.shape == pt.shape == (2, 16, 4, 4)
    torch.testing.assert_close(ps, block_mean(s, 2))
    torch.testing.assert_close(pt, t.reshape(2, 16, 2, 4, 4).mean(2))
    # vectors: channel pooling only
    v_s, v_t = pool_to_common(randn(gen, 3, 10), v := randn(gen, 3, 20))
    assert v_s.shape == v_t.shape == (3, 10)
    torch.testing.assert_close(v_t, v.reshape(3, 10, 2).mean(2))
    # map + vector: the map is globally pooled
    m_s, m_t = pool_to_common(s, randn(gen, 2, 8))
    assert m_s.shape == m_t.shape == (2, 8)


def test_pool_channels_non_divisible_is_adaptive(gen):
    s, t = randn(gen, 1, 3, 2, 2), randn(gen, 1, 2, 2, 2)
    ps, _ = pool_to_common(s, t)
    # adaptive pooling of 3 -> 2 channels averages (c0, c1) and (c1, c2)
    torch.testing.assert_close(ps[:, 0], (s[:, 0] + s[:, 1]) / 2)
    torch.testing.assert_close(ps[:, 1], (s[:, 1] + s[:, 2]) / 2)


def test_hidden_cosine_values(gen):
    f = randn(gen, 4, 8, 4, 4)
    assert hidden_cosine_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_cosine_loss(f, -f).item() == pytest.approx(2.0, abs=1e-6)
    assert hidden_cosine_loss(f, 5.0 * f).item() == pytest.approx(0.0, abs=1e-6)
    # teacher at double resolution and width: pooled duplicate of the student -> 0
    t = f.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert hidden_cosine_loss(f, t).item() == pytest.approx(0.0, abs=1e-6)
    v = randn(gen, 4, 12)
    assert hidden_cosine_loss(v, -v).item() == pytest.approx(2.0, abs=1e-6)


def test_hidden_state_loss_weights(gen):
    a, b = randn(gen, 3, 4, 2, 2), randn(gen, 3, 6)
    # layer 1 identical (0), layer 2 negated (2)
    assert hidden_state_loss([a, b], [a, -b]).item() == pytest.approx(1.0, abs=1e-6)
    assert hidden_state_loss([a, b], [a, -b], weights=[3.0, 0.25]).item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ConfigError, match="pair the layers"):
        hidden_state_loss([a, b], [a])
    with pytest.raises(ConfigError, match="weights"):
        hidden_state_loss([a, b], [a, b], weights=[1.0])
    with pytest.raises(ConfigError, match="Batch sizes differ"):
        hidden_cosine_loss(a, randn(gen, 2, 4, 2, 2))


# --------------------------------------------------------------------------- FitNets


class RepDistillerConvReg(torch.nn.Module):
    """RepDistiller models/util.py ConvReg, transcribed (use_relu=True)."""

    def __init__(self, s_shape, t_shape):
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = torch.nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = torch.nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = torch.nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        self.bn = torch.nn.BatchNorm2d(t_c)
        self.relu = torch.nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize(
    "s_shape, t_shape, kind",
    [
        ((16, 8, 8), (32, 8, 8), "1x1"),
        ((16, 16, 16), (32, 8, 8), "3x3/stride 2"),
        ((16, 4, 4), (32, 8, 8), "transposed 4x4"),
        ((16, 10, 10), (32, 8, 8), "3x3"),
    ],
)
def test_fitnet_regressor_is_repdistillers_convreg(gen, s_shape, t_shape, kind):
    reg = FitNetRegressor(s_shape, t_shape)
    ref = RepDistillerConvReg((2, *s_shape), (2, *t_shape))
    assert reg.kind == kind and reg.conv.bias is not None and reg.bn.num_features == t_shape[0]
    assert [type(m) for m in reg.children()] == [type(m) for m in ref.children()]
    ref.load_state_dict(reg.state_dict())  # same parameter names and shapes
    x = randn(gen, 2, *s_shape)
    out = reg(x)
    assert out.shape == (2, *t_shape) and (out >= 0).all()  # ends in ReLU
    torch.testing.assert_close(out, ref(x))


def test_fitnet_loss_is_mse_to_the_teacher_map_and_backprops(gen):
    reg = FitNetRegressor((8, 8, 8), (16, 8, 8))
    fs = randn(gen, 3, 8, 8, 8).requires_grad_()
    ft = randn(gen, 3, 16, 8, 8)
    loss = fitnet_loss(reg, fs, ft)
    expected = ((reg(fs) - ft) ** 2).mean()
    assert loss.dim() == 0 and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert reg.conv.weight.grad is not None and reg.conv.weight.grad.abs().sum() > 0
    assert reg.bn.weight.grad.abs().sum() > 0 and fs.grad.abs().sum() > 0


def test_fitnet_unmatchable_shapes_raise():
    with pytest.raises(ConfigError) as exc:
        FitNetRegressor((16, 2, 2), (32, 8, 8))  # student 4x smaller
    assert "(16, 2, 2)" in str(exc.value) and "(32, 8, 8)" in str(exc.value)
    assert "cannot map" in str(exc.value)
    with pytest.raises(ConfigError, match="cannot map"):
        FitNetRegressor((16, 12, 4), (32, 8, 8))  # larger in H, smaller in W
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        FitNetRegressor((2, 16, 8, 8), (32, 8, 8))


def test_fitnet_loss_module_trains(gen):
    fs = [randn(gen, 8, 4, 8, 8), randn(gen, 8, 8, 4, 4)]
    ft = [randn(gen, 8, 6, 4, 4), randn(gen, 8, 12, 4, 4)]
    crit = FitNetLoss.from_features(fs, ft)
    assert len(crit.regressors) == 2
    assert crit.regressors[0].kind == "3x3/stride 2" and crit.regressors[1].kind == "1x1"
    total = crit(fs, ft)
    parts = [fitnet_loss(r, s, t) for r, s, t in zip(crit.regressors, fs, ft)]
    assert total.item() == pytest.approx(0.5 * (parts[0] + parts[1]).item(), rel=1e-5)
    weighted = crit(fs, ft, weights=[1.0, 2.0])
    assert weighted.item() == pytest.approx((parts[0] + 2 * parts[1]).item(), rel=1e-5)
    opt = torch.optim.SGD(crit.parameters(), lr=0.5)
    first = crit(fs, ft).item()
    for _ in range(20):
        opt.zero_grad()
        crit(fs, ft).backward()
        opt.step()
    assert crit(fs, ft).item() < first
    with pytest.raises(ConfigError, match="2 regressors"):
        crit(fs[:1], ft[:1])
    with pytest.raises(ConfigError, match="rebuild"):
        crit(fs, [ft[0], randn(gen, 8, 12, 2, 2)])


# --------------------------------------------------------------------------- layer pairing


def test_resolution_pairs_pair_equal_sizes_deepest_teacher_stage():
    student = [("s1", (16, 32, 32)), ("s2", (32, 16, 16)), ("s3", (64, 8, 8))]
    teacher = [("t1", (64, 32, 32)), ("t2", (128, 16, 16)), ("t3", (256, 8, 8)), ("t4", (512, 4, 4))]
    assert resolution_pairs(student, teacher) == [("s1", "t1"), ("s2", "t2"), ("s3", "t3")]
    assert resolution_pairs(student, teacher, shift=1) == [("s1", "t2"), ("s2", "t3"), ("s3", "t4")]
    # a student stage with no teacher stage of its size is left out; several teacher stages of one size -> deepest
    teacher2 = [("t1", (8, 16, 16)), ("t1b", (8, 16, 16)), ("t2", (16, 8, 8))]
    student2 = [("s1", (4, 16, 16)), ("s2", (4, 8, 8)), ("s3", (4, 4, 4)), ("vec", (10,))]
    assert resolution_pairs(student2, teacher2) == [("s1", "t1b"), ("s2", "t2")]
    assert resolution_pairs(student2, teacher2, shift=1) == [("s1", "t2")]


def test_resolution_pairs_errors_say_why():
    with pytest.raises(ConfigError, match="no student stage has the resolution"):
        resolution_pairs([("s", (4, 5, 5))], [("t", (4, 8, 8))])
    with pytest.raises(ConfigError, match="shift=1 leaves no teacher stage"):
        resolution_pairs([("s", (4, 8, 8))], [("t", (4, 8, 8))], shift=1)
    with pytest.raises(ConfigError, match="integer"):
        resolution_pairs([("s", (4, 8, 8))], [("t", (4, 8, 8))], shift=0.5)
