"""Shared pieces of the dataset loaders: the in-memory labelled image set, the missing-package error, splits.

Every named dataset is small enough to sit in memory in its stored form (MNIST, the largest, is 55 MB as uint8), so
loaders keep the compact stored array and convert to float only per item or per batch: a float32 copy of all of
MNIST would be four times larger and is rarely needed at once (the metrics stream batches).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Iterator, Sequence

import numpy as np
import torch

DEFAULT_RANGE = (0.0, 1.0)


class DatasetMissingError(RuntimeError):
    """A named dataset's package or files are not installed. The message names the command that installs them."""

    def __init__(self, dataset: str, what: str, install: str):
        self.dataset = dataset
        self.install = install
        super().__init__(f"fastgan: dataset {dataset!r} needs {what}, which is not installed here. "
                         f"Install it with:  {install}")


class UnknownDatasetError(ValueError, KeyError):
    """A dataset name that :data:`fastgan.data.DATASETS` does not know; the message lists the known names.

    A ValueError (a bad argument value); also a KeyError only so that code written when unknown names raised
    KeyError still catches it. ``str()`` is the plain message, not KeyError's quoted repr.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def package_dir(module: str, dataset: str, install: str) -> str:
    """Directory of an installed package, found without importing it.

    Importing is avoided on purpose: several of the data packages import heavy or absent dependencies at import
    time (animal-mnist imports tensorflow), while all we need is a data file inside them.

    Args:
        module: top-level import name, e.g. ``"pureml"``.
        dataset: dataset name, for the error message.
        install: install command, for the error message.
    Returns:
        The package's directory.
    Raises:
        DatasetMissingError: the package is not installed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissingError(dataset, f"the Python package {module!r}", install)
    return list(spec.submodule_search_locations)[0]


def require_file(path: str, dataset: str, install: str) -> str:
    """Return ``path`` if it is a file, else raise :class:`DatasetMissingError` naming ``install``."""
    if not os.path.isfile(path):
        raise DatasetMissingError(dataset, f"the file {path}", install)
    return path


def split_indices(labels: np.ndarray, split: str, test_fraction: float = 0.1) -> np.ndarray:
    """Deterministic stratified train/test split for datasets that ship without one.

    The last ``ceil(test_fraction * count)`` items of each class (in stored order) form "test", the rest "train";
    "all" keeps everything. Being deterministic and per class, the split is the same on every machine and keeps
    the class balance, so reference statistics keyed by split stay meaningful.

    Args:
        labels: ``(N,)`` integer class labels in stored order.
        split: "train", "test" or "all".
        test_fraction: share of each class held out for "test".
    Returns:
        ``(M,)`` int64 indices into the stored order, ascending.
    """
    if split == "all":
        return np.arange(len(labels), dtype=np.int64)
    if split not in ("train", "test"):
        raise ValueError(f"fastgan: split must be 'train', 'test' or 'all', got {split!r}")
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = int(np.ceil(test_fraction * len(idx)))
        keep.append(idx[len(idx) - n_test:] if split == "test" else idx[: len(idx) - n_test])
    return np.sort(np.concatenate(keep)).astype(np.int64)


class LabeledImages(torch.utils.data.Dataset):
    """An in-memory labelled image set: ``dataset[i] -> (image, label)``.

    Images are stored as given by the source (uint8, or float for sources that ship floats) and mapped to float32
    in ``value_range`` on access.

    Args:
        data: ``(N, C, H, W)`` uint8 or float array/tensor, ``C`` 1 (grayscale) or 3 (RGB).
        labels: ``(N,)`` integer labels, ``0 <= label < len(classes)``.
        classes: class (domain) names, index = label.
        data_max: the stored value that means white (255 for uint8, 16 for sklearn digits, 1.0 for floats).
        name: dataset name, e.g. "mnist".
        split: "train", "test" or "all".
        value_range: ``(lo, hi)`` that black and white map to; default ``(0, 1)``. Use ``(-1, 1)`` for GANs with
            tanh outputs.
    Attributes:
        labels: ``(N,)`` int64 tensor.
        classes: list of class names.
        resolution: ``(H, W)``.
        channels: ``C``.
    """

    def __init__(self, data, labels, classes: Sequence[str], data_max: float, name: str, split: str,
                 value_range: tuple[float, float] = DEFAULT_RANGE):
        data = torch.as_tensor(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data)
        if data.dim() != 4 or data.shape[1] not in (1, 3):
            raise ValueError(f"fastgan: dataset images must be (N, 1|3, H, W), got {tuple(data.shape)}")
        self.data = data
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        if self.labels.numel() != data.shape[0]:
            raise ValueError(f"fastgan: {data.shape[0]} images but {self.labels.numel()} labels")
        self.classes = list(classes)
        self.data_max = float(data_max)
        self.name = name
        self.split = split
        self.value_range = (float(value_range[0]), float(value_range[1]))

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.data.shape[2]), int(self.data.shape[3])

    @property
    def channels(self) -> int:
        return int(self.data.shape[1])

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.value_range
        return x.to(torch.float32) * ((hi - lo) / self.data_max) + lo

    def __getitem__(self, i):
        """Returns ``(image, label)``: ``(C, H, W)`` float32 in ``value_range`` and an int label."""
        return self._to_float(self.data[i]), int(self.labels[i])

    @property
    def images(self) -> torch.Tensor:
        """All images as one ``(N, C, H, W)`` float32 tensor in ``value_range`` (materialises a float copy)."""
        return self._to_float(self.data)

    def batches(self, batch_size: int = 64, n: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images (B, C, H, W) float32, labels (B,) int64)`` in stored order, at most ``n`` images."""
        total = len(self) if n is None else min(int(n), len(self))
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            yield self._to_float(self.data[start:stop]), self.labels[start:stop]

    def subset(self, indices) -> "LabeledImages":
        """A new set holding ``indices`` (any int index array/tensor), sharing classes, range and name."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return LabeledImages(self.data[idx], self.labels[idx], self.classes, self.data_max, self.name, self.split,
                             self.value_range)

    def sample(self, n: int, seed: int = 0) -> "LabeledImages":
        """``n`` images drawn without replacement by a seeded generator (all of them if ``n >= len``)."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(int(seed))
        return self.subset(torch.randperm(len(self), generator=g)[:n].sort().values)

    def class_counts(self) -> dict[str, int]:
        """Images per class name."""
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, counts))

    def __repr__(self) -> str:
        c, (h, w) = self.channels, self.resolution
        return (f"LabeledImages({self.name!r}, split={self.split!r}, n={len(self)}, shape=({c}, {h}, {w}), "
                f"classes={len(self.classes)}, value_range={self.value_range})")
