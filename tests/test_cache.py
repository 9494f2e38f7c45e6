"""TeacherLogitCache: exact per-view teacher logits, lazily filled (CPU, fp32)."""
import pytest
import torch

from kdcore import create_model, fit, load_dataset, make_distiller
from kdcore.cache import TeacherLogitCache
from kdcore.data import DeviceLoader, apply_views
from kdcore.errors import CheckpointError

PAD = 2


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", synthetic=dict(train_size=256, val_size=64, test_size=64, image_size=16))


def _teacher(seed=0):
    torch.manual_seed(seed)
    return create_model("tiny_resnet", num_classes=10).eval()


class Counter:
    def __init__(self, model):
        self.calls, self.images = 0, 0
        model.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.calls += 1
        self.images += len(inputs[0])


def _cache(data, teacher, augment=True):
    loader = DeviceLoader(data.train, data, 32, augment=augment, shuffle=True, pad=PAD)
    return loader, TeacherLogitCache.for_loader(teacher, loader, data.num_classes)


def test_cached_logits_equal_the_online_teacher_exactly(data):
    teacher = _teacher()
    loader, cache = _cache(data, teacher)
    x = data.train.images
    normalize = loader.normalize
    index = torch.arange(16)
    view = torch.randint(cache.num_views, (16,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        online = teacher(normalize(apply_views(x[index], view, PAD)))
    first = cache.fetch(index, view, normalize(apply_views(x[index], view, PAD)))
    assert torch.equal(first, online)
    # half repeated pairs, half new ones: repeated rows come from the table, new ones from the teacher
    index2 = torch.cat([index[:8], torch.arange(100, 108)])
    view2 = torch.cat([view[:8], torch.randint(cache.num_views, (8,), generator=torch.Generator().manual_seed(1))])
    images2 = normalize(apply_views(x[index2], view2, PAD))
    with torch.no_grad():
        new_online = teacher(images2[8:])  # the cache runs exactly this sub-batch
    got = cache.fetch(index2, view2, images2)
    assert torch.equal(got[:8], online[:8]) and torch.equal(got[8:], new_online)
    assert cache.teacher_images == 24


def test_second_fetch_of_the_same_pairs_skips_the_teacher(data):
    teacher = _teacher()
    counter = Counter(teacher)
    loader, cache = _cache(data, teacher)
    batch = next(iter(loader))
    a = cache.fetch(batch.index, batch.view, batch.images)
    assert counter.calls == 1 and counter.images == len(batch.index)
    b = cache.fetch(batch.index, batch.view, batch.images)
    assert counter.calls == 1 and torch.equal(a, b)


def test_no_augmentation_means_one_view_per_image(data):
    teacher = _teacher()
    counter = Counter(teacher)
    loader, cache = _cache(data, teacher, augment=False)
    assert cache.logits.shape == (len(data.train), 1, 10)
    for _ in range(2):
        for batch in loader:
            assert batch.view is None
            cache.fetch(batch.index, batch.view, batch.images)
    assert counter.images == len(data.train) and cache.complete


def test_fill_all_matches_lazy_fill_and_then_never_calls_the_teacher(data):
    teacher = _teacher()
    small = load_dataset("synthetic", synthetic=dict(train_size=20, val_size=10, test_size=10, image_size=16))
    loader = DeviceLoader(small.train, small, 8, augment=True, shuffle=True, pad=1)
    cache = TeacherLogitCache.for_loader(teacher, loader, 10).fill_all(batch_size=64)
    assert cache.complete and cache.teacher_images == 20 * 18
    lazy = TeacherLogitCache.for_loader(teacher, loader, 10)
    counter = Counter(teacher)
    for batch in loader:
        want = lazy.fetch(batch.index, batch.view, batch.images)
        n = counter.calls
        got = cache.fetch(batch.index, batch.view, batch.images)
        assert counter.calls == n  # complete cache: no teacher call
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # batch composition differs


def test_fit_with_cache_matches_fit_without(data):
    def run(teacher_cache):
        torch.manual_seed(3)
        student = create_model("student_light", num_classes=10)
        distiller = make_distiller("kd", student, _teacher(), alpha=0.7)
        return fit(distiller, data, epochs=2, batch_size=64, lr=0.05, pad=PAD, device="cpu",
                   teacher_cache=teacher_cache).history

    online, cached = run(False), run(True)
    cols = ["train_loss", "loss_ce", "loss_kd", "train_acc", "val_loss", "val_acc"]
    # Epoch 1 runs the teacher on the same full batches, so it is identical; a row reused later was
    # computed in another batch, which may change the last float bit, hence the tolerance.
    assert (online[cols].iloc[0] == cached[cols].iloc[0]).all()
    assert ((online[cols] - cached[cols]).abs().to_numpy() < 1e-5).all()


def test_save_load_round_trip_and_other_teacher_is_refused(data, tmp_path):
    loader, cache = _cache(data, _teacher(0))
    batch = next(iter(loader))
    want = cache.fetch(batch.index, batch.view, batch.images)
    cache.save(tmp_path / "c.pt")
    again = TeacherLogitCache.for_loader(cache.teacher, loader, 10).load(tmp_path / "c.pt")
    assert torch.equal(again.filled, cache.filled) and torch.equal(again.logits, cache.logits)
    counter = Counter(cache.teacher)
    assert torch.equal(again.fetch(batch.index, batch.view, batch.images), want) and counter.calls == 0
    other = TeacherLogitCache.for_loader(_teacher(1), loader, 10)
    with pytest.raises(CheckpointError, match="different teacher"):
        other.load(tmp_path / "c.pt")
    wider = DeviceLoader(data.train, data, 32, augment=True, shuffle=True, pad=PAD + 1)
    with pytest.raises(CheckpointError, match="pad/flip"):
        TeacherLogitCache.for_loader(cache.teacher, wider, 10).load(tmp_path / "c.pt")
