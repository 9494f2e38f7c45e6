"""Co-training (kdcore.group): students sharing each batch's teacher forward end as they would alone."""
import pandas as pd
import pytest
import torch

from kdcore import create_model, fit, load_dataset, make_distiller
from kdcore.cache import clear_shared_caches
from kdcore.errors import ConfigError
from kdcore.group import fit_group
from kdcore.train import TIMING_COLUMNS

METHODS = ["baseline", "kd", "dkd", "at", "fitnet", "kd+at:shifted"]  # fitnet's regressor draws from the RNG
RUN = dict(epochs=2, batch_size=32, lr=0.05, device="cpu", precision="fp32", deterministic=True,
           max_steps_per_epoch=5, seed=3, channels_last=False)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", synthetic=dict(train_size=256, val_size=64, test_size=64))


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=10, width=8)
    fit(model, data, epochs=1, batch_size=32, device="cpu", precision="fp32", max_steps_per_epoch=4)
    return model


def distillers(teacher):
    out = []
    for method in METHODS:
        torch.manual_seed(11)  # the same student initialisation for the solo and the group run
        student = create_model("cnn_small", num_classes=10)
        out.append(make_distiller(method, student, teacher if method != "baseline" else None))
    return out


def test_co_trained_students_are_bit_identical_to_solo_runs(data, teacher, tmp_path):
    clear_shared_caches()
    alone = [(d, fit(d, data, teacher_cache=False, **RUN)) for d in distillers(teacher)]  # teacher live, every step
    clear_shared_caches()
    group = distillers(teacher)
    results = fit_group(group, data, teacher_cache=True, out_dirs=[tmp_path / m for m in METHODS], **RUN)
    for method, (solo, r_solo), together, r_group in zip(METHODS, alone, group, results):
        a, b = solo.student.state_dict(), together.student.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), method
        assert r_solo.best_epoch == r_group.best_epoch and r_solo.best_val_acc == r_group.best_val_acc
        drop = list(TIMING_COLUMNS)
        assert r_solo.history.drop(columns=drop).equals(r_group.history.drop(columns=drop)), method
        assert (tmp_path / method / "last.pt").exists()
        on_disk = pd.read_csv(tmp_path / method / "history.csv")["seconds"]  # what a resumed run starts from
        assert (on_disk > 0).all() and on_disk.tolist() == r_group.history["seconds"].tolist(), method


def test_a_group_resumes_each_member_from_its_own_last_epoch(data, teacher, tmp_path):
    clear_shared_caches()
    whole = distillers(teacher)[:3]
    fit_group(whole, data, teacher_cache=True, **RUN)
    first = distillers(teacher)[:3]
    dirs = [tmp_path / m for m in METHODS[:3]]
    fit_group(first[:1], data, teacher_cache=True, out_dirs=dirs[:1], **RUN)  # baseline done, the others not started
    resumed = distillers(teacher)[:3]
    results = fit_group(resumed, data, teacher_cache=True, out_dirs=dirs, **RUN)
    assert [r.resumed_from for r in results] == [2, None, None]
    for a, b in zip(whole, resumed):
        sa, sb = a.student.state_dict(), b.student.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_group_needs_one_teacher(data, teacher):
    other = create_model("tiny_resnet", num_classes=10, width=8)
    pair = [make_distiller("kd", create_model("cnn_small", num_classes=10), teacher),
            make_distiller("kd", create_model("cnn_small", num_classes=10), other)]
    with pytest.raises(ConfigError, match="same teacher"):
        fit_group(pair, data, **RUN)


def test_co_train_stores_the_notebooks_runs_so_the_notebooks_train_nothing(tmp_path):
    """kdcore.cotrain mirrors the notebooks' calls: afterwards each notebook run comes from the store."""
    from kdcore import cotrain
    from kdcore import experiments as ex

    params = {"checkpoint_dir": str(tmp_path), "seeds": [0]}
    groups = []
    trained = cotrain.co_train("smoke", ["01_baseline", "03_hidden_state"], params, log=groups.append)
    assert trained == 2 and groups[-1] == "co-training 2 runs at seed 0: baseline, hidden"  # one group: same views
    assert cotrain.co_train("smoke", ["01_baseline", "03_hidden_state"], params, log=groups.append) == 0
    ctx = ex.setup("03_hidden_state", profile="smoke", **params)
    ctx.teacher()
    runs = ctx.run("hidden", level_weights=ctx.level_weights, weights={"hidden": ctx.hidden_weight})
    assert runs.runs["reused"].tolist() == [True]


def test_groups_split_into_parts_of_at_most_size_runs_in_order():
    """A part lands in the store when it ends; splitting keeps the order and never mixes seeds."""
    from kdcore.pending import PendingRun, groups

    def pending(label, seed):
        return PendingRun(label, label, None, None, {"seed": seed, "epochs": 2}, None, "data", None)

    runs = [pending("a", 0), pending("b", 0), pending("x", 1), pending("c", 0)]
    labels = lambda parts: [[r.label for r in part] for part in parts]  # noqa: E731
    assert labels(groups(runs)) == [["a", "b", "c"], ["x"]]
    assert labels(groups(runs, 2)) == [["a", "b"], ["c"], ["x"]]
    assert labels(groups(runs, 1)) == [["a"], ["b"], ["c"], ["x"]]
    with pytest.raises(ValueError, match="at least 1"):
        groups(runs, 0)


def test_a_baseline_takes_a_layout_chosen_by_a_kd_member(teacher):
    """A group's layout comes from its first member; a KD run first gives {"teacher": True}, which a baseline
    beside it (no teacher) must simply skip."""
    from kdcore.train import apply_layout

    baseline = make_distiller("baseline", create_model("cnn_small", num_classes=10), None)
    apply_layout(baseline, {"student": True, "teacher": True})
    assert baseline.teacher is None
    assert next(baseline.student.parameters()).is_contiguous(memory_format=torch.channels_last)
