"""The run store: semantic keys, atomic entries, and runs that outlive the machine that trained them."""
import json
import shutil

import pytest
import torch

from kdcore import create_model, load_dataset, store
from kdcore import provenance, teachers
from kdcore import runs as kdruns
from kdcore.errors import ConfigError

TINY = dict(epochs=1, lr=0.05, batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", synthetic=dict(train_size=160, val_size=40, test_size=40))


def test_keys_name_the_recipe_not_the_sources(monkeypatch):
    cfg = {"model": "cnn_small", "epochs": 3}
    key = store.store_key("cifar10-cnn_small-kd a=0.9", cfg)
    assert key.startswith("cifar10-cnn_small-kd_a_0.9-") and key == store.store_key("cifar10-cnn_small-kd a=0.9", dict(cfg))
    assert store.store_key("x", {**cfg, "epochs": 4}) != store.store_key("x", cfg)
    monkeypatch.setattr(store, "RECIPE_VERSION", store.RECIPE_VERSION + 1)
    assert store.store_key("cifar10-cnn_small-kd a=0.9", cfg) != key  # the one deliberate way to retire runs


def test_weights_hash_tells_teachers_apart():
    torch.manual_seed(0)
    a = create_model("tiny_resnet", num_classes=10, width=4)
    b = create_model("tiny_resnet", num_classes=10, width=4)
    assert store.weights_hash(a) == store.weights_hash(a.state_dict()) != store.weights_hash(b)
    before = store.weights_hash(a)
    with torch.no_grad():
        next(a.parameters()).view(-1)[0] += 1e-3
    assert store.weights_hash(a) != before  # one weight changed
    c = create_model("tiny_resnet", num_classes=10, width=4)
    c.load_state_dict(b.state_dict())
    assert store.weights_hash(c) == store.weights_hash(b)


def test_a_run_distilled_from_another_teacher_is_not_reused(data, tmp_path):
    torch.manual_seed(0)
    first = create_model("tiny_resnet", num_classes=10, width=4)
    second = create_model("tiny_resnet", num_classes=10, width=4)
    kw = dict(student="student_light", seeds=[0], checkpoint_dir=tmp_path, **TINY)
    assert not kdruns.run_seeds("kd", data, teacher=first, **kw).runs["reused"].any()
    assert kdruns.run_seeds("kd", data, teacher=first, **kw).runs["reused"].all()
    assert not kdruns.run_seeds("kd", data, teacher=second, **kw).runs["reused"].any()


def test_a_fresh_machine_renders_from_a_copied_store_without_training(data, tmp_path, monkeypatch):
    """Only the store travels (as in git): the teacher loads, every run is served, nothing trains."""
    kw = dict(checkpoint_dir=tmp_path / "old", store_dir=tmp_path / "old-store")
    teacher = teachers.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), **kw, **TINY)
    runs = kdruns.run_seeds("kd", data, student="student_light", seeds=[0, 1], teacher=teacher.model, **kw, **TINY)
    shutil.copytree(tmp_path / "old-store", tmp_path / "store")
    shutil.rmtree(tmp_path / "old")
    monkeypatch.setenv("KDCORE_STORE_ONLY", "1")  # training now would raise
    fresh = dict(checkpoint_dir=tmp_path / "new", store_dir=tmp_path / "store")
    before = teachers.TEACHER_TRAININGS
    again = teachers.get_teacher(data, "tiny_resnet", model_kwargs=dict(width=4), **fresh, **TINY)
    assert not again.trained and teachers.TEACHER_TRAININGS == before and again.test_acc == teacher.test_acc
    assert store.weights_hash(again.model) == store.weights_hash(teacher.model)
    served = kdruns.run_seeds("kd", data, student="student_light", seeds=[0, 1], teacher=again.model, **fresh, **TINY)
    assert served.runs["reused"].all()
    for col in ("test_acc", "test_f1", "val_acc", "best_epoch"):
        assert served.runs[col].tolist() == runs.runs[col].tolist()
    # the stored weights, evaluated again (the trained model's memory layout may round the last bit differently)
    torch.testing.assert_close(served.eval["logits"], runs.eval["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="not in the run store.*--from-store"):
        kdruns.run_seeds("kd", data, student="student_light", seeds=[2], teacher=again.model, **fresh, **TINY)


def test_entries_record_their_provenance_and_large_students_keep_predictions(data, tmp_path, monkeypatch):
    monkeypatch.setattr(kdruns, "STUDENT_WEIGHTS_MB", 0.0)  # as if the student were over the committed size
    kw = dict(student="student_light", seeds=[0], checkpoint_dir=tmp_path, **TINY)
    first = kdruns.run_seeds("baseline", data, **kw)
    [record_file] = (tmp_path / "store" / "runs").glob("*.json")
    record = json.loads(record_file.read_text())
    assert {"commit", "cpu", "device", "torch", "data", "config", "row", "history"} <= set(record)
    assert record["recipe"] == store.RECIPE_VERSION and record["config"]["seed"] == 0
    assert record["data"]["fingerprint"] == provenance.data_fingerprint(data)
    tensors = torch.load(record_file.with_suffix(".pt"), weights_only=True)
    assert set(tensors) == {"test_logits", "test_labels"}  # predictions only, no weights
    again = kdruns.run_seeds("baseline", data, **kw)
    assert again.runs["reused"].all() and again.runs["test_acc"].tolist() == first.runs["test_acc"].tolist()
    assert again.eval["accuracy"] == first.eval["accuracy"]  # the page's confusion comes from the predictions


def test_an_entry_is_whole_or_absent(tmp_path, monkeypatch):
    runs = store.RunStore(tmp_path)
    real = store.atomic_write_text

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        runs.save("runs", "k", {"row": {}}, {"x": torch.zeros(2)})
    assert not runs.has("runs", "k") and runs.load("runs", "k") is None  # weights without a record: not an entry
    monkeypatch.setattr(store, "atomic_write_text", real)
    runs.save("runs", "k", {"row": {"a": 1}}, {"x": torch.zeros(2)})
    assert runs.load("runs", "k")[0]["row"] == {"a": 1} and runs.saved == 1 and runs.loaded == 1
    assert not list(tmp_path.rglob(".*tmp*"))


OWN_TERM = '''
import torch.nn.functional as F
from kdcore.distill import Term


class L2Logits(Term):
    """Logit matching by MSE."""
    name, weight = "l2logits", 1.0

    def forward(self, s):
        return F.mse_loss(s.student_logits.float(), s.teacher_logits.float())  # a comment
'''


def own_term(code: str = OWN_TERM, name: str = "cell", **kw):
    """A Term defined as a notebook cell defines it: source in linecache, under a cell's file name."""
    from kdcore.cotrain import run_code
    namespace = {}
    run_code(code, namespace, name)
    return namespace["L2Logits"](**kw)


def test_a_notebook_term_is_keyed_by_its_code_not_its_cell():
    from kdcore.terms import term_identity
    key = term_identity(own_term())
    assert key is not None and key["term"] == "L2Logits"
    assert term_identity(own_term(name="another cell")) == key  # the same code in Jupyter and in kdcore.cotrain
    cosmetic = OWN_TERM.replace('"""Logit matching by MSE."""', '"""Ba & Caruana."""').replace("# a comment", "")
    assert term_identity(own_term(cosmetic)) == key
    assert term_identity(own_term(OWN_TERM.replace("mse_loss", "l1_loss")))["code"] != key["code"]
    assert term_identity(own_term(weight=2.0))["options"] != key["options"]
    with_property = OWN_TERM + "\n    @property\n    def scale(self):\n        return 1.0\n"
    assert term_identity(own_term(with_property))["code"] == term_identity(own_term(with_property, "again"))["code"]
    namespace = {}
    exec(OWN_TERM, namespace)  # no source to read: such a term cannot be keyed
    assert term_identity(namespace["L2Logits"]()) is None


def test_a_notebook_term_is_stored_and_served(data, tmp_path):
    torch.manual_seed(0)
    teacher = create_model("tiny_resnet", num_classes=10, width=4)
    kw = dict(student="student_light", seeds=[0], teacher=teacher, checkpoint_dir=tmp_path, **TINY)
    first = kdruns.run_seeds(own_term(), data, **kw)
    assert not first.runs["reused"].any()
    again = kdruns.run_seeds(own_term(name="rerun"), data, **kw)
    assert again.runs["reused"].all() and again.runs["test_acc"].tolist() == first.runs["test_acc"].tolist()
    changed = own_term(OWN_TERM.replace("mse_loss", "l1_loss"))
    assert not kdruns.run_seeds(changed, data, **kw).runs["reused"].any()
