"""TeacherLogitCache: exact per-view teacher logits, lazily filled (CPU, fp32; bf16 autocast on CUDA)."""
import pytest
import torch

from kdcore import create_model, fit, load_dataset, make_distiller
from kdcore.cache import TeacherLogitCache, clear_shared_caches, shared_cache, storage_dtype
from kdcore.data import DeviceLoader, apply_views
from kdcore.errors import CheckpointError
from kdcore.train import TIMING_COLUMNS

PAD = 2


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", synthetic=dict(train_size=256, val_size=64, test_size=64, image_size=16))


@pytest.fixture(autouse=True)
def fresh_shared_caches():
    """fit() shares caches by teacher weights across runs: each test starts without any."""
    clear_shared_caches()
    yield
    clear_shared_caches()


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
    n = len(batch.index)
    assert (cache.hits, cache.misses, cache.hit_rate) == (n, n, 0.5)


def test_storage_is_fp32_unless_the_teacher_runs_under_bf16_autocast(data):
    """The table stays fp32 unless the teacher runs under bf16 autocast (on CUDA too), so cached logits stay exact."""
    assert storage_dtype(amp=False) == torch.float32 and storage_dtype(amp=True) == torch.bfloat16
    loader = DeviceLoader(data.train, data, 32, augment=True, pad=PAD)
    assert TeacherLogitCache.for_loader(_teacher(), loader, 10).logits.dtype == torch.float32
    assert TeacherLogitCache.for_loader(_teacher(), loader, 10, amp=True).logits.dtype == torch.bfloat16


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


def _fit(data, method, teacher, teacher_cache, **train):
    torch.manual_seed(3)
    student = create_model("student_light", num_classes=10)
    distiller = make_distiller(method, student, teacher, alpha=0.7)
    return fit(distiller, data, epochs=2, batch_size=64, lr=0.05, pad=PAD, device="cpu", precision="fp32",
               teacher_cache=teacher_cache, **train)


def test_fit_with_cache_matches_fit_without(data):
    online, cached = (_fit(data, "kd", _teacher(), c) for c in (False, True))
    assert online.teacher_cache is None and cached.teacher_cache["misses"] > 0
    cols = ["train_loss", "loss_ce", "loss_kd", "train_acc", "val_loss", "val_acc"]
    online, cached = online.history, cached.history
    # Epoch 1 runs the teacher on the same full batches, so it is identical; a row reused later was
    # computed in another batch, which may change the last float bit, hence the tolerance.
    assert (online[cols].iloc[0] == cached[cols].iloc[0]).all()
    assert ((online[cols] - cached[cols]).abs().to_numpy() < 1e-5).all()


def test_runs_with_the_same_teacher_share_one_cache(data):
    """Same seed, same views: the second logit method never runs the teacher; feature methods do."""
    teacher = _teacher()
    first = _fit(data, "kd", teacher, True)
    counter = Counter(teacher)
    again = _fit(data, "kd", _teacher(), True)  # another object with the same weights finds the same table
    dkd = _fit(data, "dkd", teacher, True)
    lookups = 2 * (len(data.train) // 64) * 64
    assert first.teacher_cache["hits"] + first.teacher_cache["misses"] == lookups
    assert again.teacher_cache["hits"] == dkd.teacher_cache["hits"] == lookups
    assert again.teacher_cache["misses"] == dkd.teacher_cache["misses"] == 0
    assert counter.images == 8  # only dkd's prepare() probe
    cols = [c for c in first.history.columns if c not in TIMING_COLUMNS]
    assert first.history[cols].equals(again.history[cols])
    hidden = _fit(data, "hidden", teacher, True)
    assert hidden.teacher_cache is None and counter.images > 8


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


def test_saved_file_holds_only_the_filled_pairs(data, tmp_path):
    loader, cache = _cache(data, _teacher(0))
    batch = next(iter(loader))
    cache.fetch(batch.index, batch.view, batch.images)
    cache.save(tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert len(state["pairs"]) == int(cache.filled.sum()) == len(batch.index)
    assert torch.equal(state["logits"], cache.logits[state["pairs"][:, 0].long(), state["pairs"][:, 1].long()])


def test_persist_merges_what_other_processes_wrote(data, tmp_path):
    """Two caches of one teacher (as two processes) persist to one file: the file keeps both sets of pairs,
    and a third cache loaded from it answers every one of them without the teacher."""
    teacher = _teacher(0)
    loader = DeviceLoader(data.train, data, 32, augment=True, shuffle=True, pad=PAD)
    first, second = (shared_cache(teacher, loader, 10, directory=tmp_path) for _ in range(2))
    assert first is second  # one process: one table
    clear_shared_caches()
    other = shared_cache(teacher, loader, 10, directory=tmp_path)  # "another process": starts from the (absent) file
    assert other is not first and other.path == first.path and not other.filled.any()
    batches = iter(loader)
    a, b = next(batches), next(batches)
    want_a = first.fetch(a.index, a.view, a.images)
    want_b = other.fetch(b.index, b.view, b.images)
    first.persist()
    other.persist()  # merges first's pairs instead of overwriting them
    clear_shared_caches()
    third = shared_cache(teacher, loader, 10, directory=tmp_path)
    assert int(third.filled.sum()) == len(torch.unique(torch.cat([a.index * 1000 + a.view, b.index * 1000 + b.view])))
    counter = Counter(teacher)
    assert torch.equal(third.fetch(a.index, a.view, a.images), want_a)
    assert torch.equal(third.fetch(b.index, b.view, b.images), want_b)
    assert counter.calls == 0
    shifted = DeviceLoader(data.train, data, 32, augment=True, shuffle=True, pad=PAD + 1)
    assert shared_cache(teacher, shifted, 10, directory=tmp_path).path != first.path  # other views: another file


def test_fit_with_a_cache_folder_reuses_the_views_of_an_earlier_process(data, tmp_path):
    """teacher_cache_dir: a run in a fresh process (shared caches cleared) with the same teacher and seed
    never runs the teacher, and trains as the in-process cached run does."""
    teacher = _teacher()
    first = _fit(data, "kd", teacher, False, teacher_cache_dir=str(tmp_path))
    assert first.teacher_cache["misses"] > 0 and len(list(tmp_path.glob("*.pt"))) == 1
    in_process = _fit(data, "dkd", teacher, True)
    clear_shared_caches()
    counter = Counter(teacher)
    later = _fit(data, "dkd", _teacher(), False, teacher_cache_dir=str(tmp_path))
    assert later.teacher_cache["misses"] == 0
    assert later.teacher_cache["hits"] == first.teacher_cache["hits"] + first.teacher_cache["misses"]
    assert counter.images == 0  # (dkd's prepare() probe runs on the other module)
    cols = [c for c in later.history.columns if c not in TIMING_COLUMNS]
    assert later.history[cols].equals(in_process.history[cols])


def test_an_old_or_foreign_cache_file_is_refused_with_the_fix(data, tmp_path):
    loader, cache = _cache(data, _teacher(0))
    torch.save({"fingerprint": cache.fingerprint, "logits": cache.logits, "filled": cache.filled}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="older kdcore. Delete it"):
        cache.load(tmp_path / "old.pt")


@pytest.mark.cuda
def test_cache_on_cuda_is_exact_without_amp_and_close_with_amp(data, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    teacher = _teacher().cuda()
    loader = DeviceLoader(data.train, data, 32, device="cuda", augment=True, shuffle=True, pad=PAD)
    batch = next(iter(loader))
    with torch.no_grad():
        online = teacher(batch.images)
    exact = TeacherLogitCache.for_loader(teacher, loader, 10)
    assert exact.logits.dtype == torch.float32
    assert torch.equal(exact.fetch(batch.index, batch.view, batch.images), online)
    assert torch.equal(exact.fetch(batch.index, batch.view, batch.images), online)  # from the table
    amp = TeacherLogitCache.for_loader(teacher, loader, 10, amp=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = amp.fetch(batch.index, batch.view, batch.images)
    assert amp.logits.dtype == got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), online, rtol=5e-2, atol=5e-2)  # bf16: 8 significant bits
