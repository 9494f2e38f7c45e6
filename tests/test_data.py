import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore.data import (CIFAR10_CLASSES, DeviceLoader, apply_views, default_root, load_dataset, num_views,
                         stratified_split)
from kdcore.errors import ConfigError, DataNotFoundError


def _write_images(folder, classes, per_class, size=(32, 32), mode="RGB", suffix=".png"):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = size[::-1] + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / c / f"{i}{suffix}")


def test_synthetic_is_deterministic_and_shaped():
    a = load_dataset("synthetic", synthetic=dict(num_classes=4, image_size=40, channels=1, train_size=80))
    b = load_dataset("synthetic", synthetic=dict(num_classes=4, image_size=40, channels=1, train_size=80))
    assert a.train.images.shape == (80, 1, 40, 40) and a.train.images.dtype == torch.uint8
    assert torch.equal(a.train.images, b.train.images) and a.num_classes == 4
    assert torch.bincount(a.train.labels).tolist() == [20] * 4
    assert not torch.equal(a.train.images[:50], a.val.images[:50])  # splits are drawn independently


def test_stratified_split_is_disjoint_complete_and_balanced():
    labels = torch.arange(1000) % 10
    train, val, test = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    all_idx = torch.cat([train, val, test])
    assert len(all_idx) == 1000 and len(torch.unique(all_idx)) == 1000
    for part, n in ((train, 80), (val, 10), (test, 10)):
        assert torch.bincount(labels[part], minlength=10).tolist() == [n] * 10
    again = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    other = stratified_split(labels, (0.8, 0.1, 0.1), seed=4)
    assert torch.equal(again[1], val) and not torch.equal(other[1], val)


def test_cifar10_from_image_folder_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_CACHE", str(tmp_path / "cache"))
    for split, n in (("train", 10), ("test", 3)):
        _write_images(tmp_path / "cifar10-jpg" / split, CIFAR10_CLASSES, n)
    data = load_dataset("cifar10", tmp_path, val_fraction=0.2)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 30)
    assert data.classes == list(CIFAR10_CLASSES) and data.image_size == (32, 32)
    # the pixels are the files' pixels, in class order
    first = np.array(Image.open(tmp_path / "cifar10-jpg" / "test" / "airplane" / "0.png"))
    assert torch.equal(data.test.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert list(data.test.labels[:3]) == [0, 0, 0] and int(data.test.labels[-1]) == 9
    assert any((tmp_path / "cache").iterdir())  # decoded once and cached


def test_cifar10_from_tarball(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    for split in ("train", "test"):
        _write_images(src / "cifar10-jpg" / split, CIFAR10_CLASSES, 2, suffix=".jpg")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar10-jpg.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar10-jpg", arcname="cifar10-jpg")
    data = load_dataset("cifar10", root, val_fraction=0.5)
    assert (len(data.train), len(data.val), len(data.test)) == (10, 10, 20)
    assert "tarball" in data.source


def test_missing_data_offline_gives_one_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"partial")  # what a broken download leaves
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "cifar10-jpg.tar.gz" in msg and "KDCORE_DATA" in msg and "unreachable" in msg
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataNotFoundError, match="eurosat/2750"):
        load_dataset("eurosat", tmp_path, download=False)


def test_eurosat_layout_gets_stratified_80_10_10(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_CACHE", str(tmp_path / "cache"))
    classes = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
               "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]
    _write_images(tmp_path / "eurosat" / "2750", classes, 10, size=(64, 64), suffix=".jpg")
    data = load_dataset("eurosat", tmp_path, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 10, 10)
    assert torch.bincount(data.val.labels).tolist() == [1] * 10 and data.image_size == (64, 64)


def test_imagefolder_grayscale_any_size_to_rgb(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_CACHE", str(tmp_path / "cache"))
    _write_images(tmp_path / "imgs", ["a", "b"], 10, size=(20, 28), mode="L")
    data = load_dataset("imagefolder", tmp_path / "imgs", channels=3, image_size=24)
    assert data.train.images.shape[1:] == (3, 24, 24) and data.classes == ["a", "b"]
    assert torch.equal(data.train.images[:, 0], data.train.images[:, 2])  # gray repeated
    gray = load_dataset("imagefolder", tmp_path / "imgs")
    assert gray.in_channels == 1 and gray.image_size == (28, 20)


def test_imagefolder_empty_class_and_no_images_are_clear_errors(tmp_path):
    _write_images(tmp_path / "imgs", ["a"], 3)
    (tmp_path / "imgs" / "b").mkdir()
    with pytest.raises(ConfigError, match="'?b'?.*contain no images"):
        load_dataset("imagefolder", tmp_path / "imgs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class sub-folders"):
        load_dataset("imagefolder", tmp_path / "empty")


def test_default_root_is_shared_data_beside_the_repository(monkeypatch):
    """The notebooks, the report and `kdcore train` all read ../shared/data unless KDCORE_DATA says otherwise."""
    monkeypatch.delenv("KDCORE_DATA", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert default_root() == repo.parent / "shared" / "data"
    monkeypatch.setenv("KDCORE_DATA", "/elsewhere")
    assert default_root() == Path("/elsewhere")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError, match="cifar10.*eurosat.*imagefolder.*synthetic"):
        load_dataset("cifar100")


def test_views_are_crops_of_the_zero_padded_image_and_flips():
    x = torch.randint(0, 255, (3, 2, 8, 8), dtype=torch.uint8)
    pad, n = 2, 5
    center = torch.full((3,), pad * n + pad)
    assert torch.equal(apply_views(x, center, pad), x)
    assert torch.equal(apply_views(x, center + n * n, pad), x.flip(-1))
    dy, dx = 0, 4
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    manual = padded[:, :, dy:dy + 8, dx:dx + 8]
    assert torch.equal(apply_views(x, torch.full((3,), dy * n + dx), pad), manual)
    assert num_views(4, True) == 162


def test_device_loader_covers_each_sample_once_and_replays_epochs():
    data = load_dataset("synthetic", synthetic=dict(train_size=100, val_size=20, test_size=20))
    loader = DeviceLoader(data.train, data, 32, shuffle=True, augment=True, seed=5)
    loader.set_epoch(2)
    seen = torch.cat([b.index for b in loader])
    assert sorted(seen.tolist()) == list(range(100))
    first = [b.view for b in loader]
    assert all(torch.equal(a, b.view) for a, b in zip(first, loader))  # same epoch -> same batches
    loader.set_epoch(3)
    assert not torch.equal(torch.cat([b.index for b in loader]), seen)
    shards = [torch.cat([b.index for b in DeviceLoader(data.val, data, 7, rank=r, world_size=3)]) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(20))
    assert DeviceLoader(data.train, data, 32, shuffle=True, rank=1, world_size=3).__len__() == 2


def test_normalized_batches_match_bundle_statistics():
    data = load_dataset("synthetic", synthetic=dict(train_size=200))
    x = torch.cat([b.images for b in DeviceLoader(data.train, data, 64)])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_corrupt_image_in_folder_is_one_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_CACHE", str(tmp_path / "cache"))
    _write_images(tmp_path / "imgs", ["a", "b"], 3)
    bad = tmp_path / "imgs" / "b" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(ConfigError) as err:
        load_dataset("imagefolder", tmp_path / "imgs")
    msg = str(err.value)
    assert str(bad) in msg and "Delete or replace" in msg and len(msg.splitlines()) == 1
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no PIL traceback chained on


def test_corrupt_image_in_tarball_names_the_member(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    for split in ("train", "test"):
        _write_images(src / "cifar10-jpg" / split, CIFAR10_CLASSES, 1, suffix=".jpg")
    (src / "cifar10-jpg" / "test" / "cat" / "0.jpg").write_bytes(b"truncated")
    with tarfile.open(tmp_path / "cifar10-jpg.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar10-jpg", arcname="cifar10-jpg")
    with pytest.raises(ConfigError, match=r"Cannot read image cifar10-jpg/test/cat/0\.jpg in .*cifar10-jpg\.tar\.gz"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("name, dataset, made", [("cifar10", "CIFAR10", "cifar-10-python.tar.gz"),
                                                  ("eurosat", "EuroSAT", "eurosat/EuroSAT.zip")])
def test_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch, name, dataset, made):
    import torchvision.datasets

    def offline(root, download=False, **kwargs):  # what torchvision does offline: folders and a partial file, then fail
        (Path(root) / made).parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / made).write_bytes(b"partial")
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, dataset, offline)
    root = tmp_path / "new" / "data"
    with pytest.raises(DataNotFoundError, match="download failed: OSError: network is unreachable"):
        load_dataset(name, root)
    assert list(tmp_path.iterdir()) == []  # neither the partial file nor the folders it made
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataNotFoundError):
        load_dataset(name, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]  # what was there before stays
