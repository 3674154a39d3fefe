"""Image sources -> batches -> features, streamed, with an optional progress bar.

A *source* is anything the metrics accept for ``real`` or ``fake``:

* a ``(N, C, H, W)`` tensor (uint8, or float in ``value_range``);
* an iterable of batches, e.g. a ``DataLoader``: each item a tensor, a ``(images, labels, ...)`` tuple/list, or a
  dict with key ``"image"``/``"images"``;
* a ``torch.utils.data.Dataset`` whose items are ``(image, label)`` or images (batched here with a DataLoader);
* a string: a dataset name from :mod:`fastgan.data` (``"mnist"``, ``"mnist:test"``), or a folder of images
  (``root/*.png`` or ``root/<domain>/*.png``).

Datasets opened by name or folder always produce images in [0, 1]; ``value_range`` applies to tensors and loaders
the caller passes in.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from .. import data as fdata

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".pkl")


class CheckpointNotSupported(ValueError):
    """A checkpoint file was given where images are expected."""


def open_source(spec: str, split: str | None = None, resolution: int | None = None):
    """Open a named dataset or an image folder.

    Args:
        spec: dataset name (optionally ``"name:split"``) or a folder path.
        split: split for named datasets (overrides one in ``spec``).
        resolution: for folders, the side length images are resized/center-cropped to (None keeps file sizes).
    Returns:
        A :class:`fastgan.data.LabeledImages` or :class:`fastgan.data.ImageFolder` with images in [0, 1].
    Raises:
        CheckpointNotSupported: ``spec`` is a checkpoint file.
        FileNotFoundError / KeyError: neither an existing folder nor a known dataset name.
    """
    if os.path.isdir(spec):
        return fdata.ImageFolder(spec, resolution=resolution)
    if os.path.isfile(spec):
        if spec.lower().endswith(CHECKPOINT_SUFFIXES):
            raise CheckpointNotSupported(
                f"fastgan: {spec} looks like a model checkpoint. Only --fake takes a checkpoint written by "
                "`fastgan train` (samples are generated from it); --real takes images: a dataset name, an image "
                "folder or a statistics .npz.")
        raise FileNotFoundError(f"fastgan: {spec} is a file; expected an image folder or a dataset name")
    if fdata.is_dataset_name(spec):
        return fdata.load_dataset(spec, split=split)
    raise FileNotFoundError(f"fastgan: {spec!r} is neither a folder nor a dataset name "
                            f"(known: {', '.join(fdata.DATASETS)})")


def _images_of(item) -> torch.Tensor:
    if torch.is_tensor(item):
        return item
    if isinstance(item, dict):
        for k in ("image", "images", "img", "x"):
            if k in item:
                return item[k]
        raise TypeError(f"fastgan: batch dict has no 'image'/'images' key (keys: {list(item)})")
    if isinstance(item, (tuple, list)) and item and torch.is_tensor(item[0]):
        return item[0]
    raise TypeError(f"fastgan: cannot read images from a batch of type {type(item).__name__}")


def source_length(source) -> int | None:
    """Number of images in ``source`` when known cheaply, else None."""
    if torch.is_tensor(source):
        return source.shape[0]
    if isinstance(source, torch.utils.data.DataLoader):
        try:
            return len(source.dataset)
        except TypeError:
            return None
    if isinstance(source, torch.utils.data.Dataset):
        try:
            return len(source)
        except TypeError:
            return None
    return None


def iter_batches(source, batch_size: int = 50, n: int | None = None, num_workers: int = 0,
                 split: str | None = None) -> Iterator[torch.Tensor]:
    """Yield image batches ``(B, C, H, W)`` from any source, stopping after ``n`` images in total.

    Args:
        source: see the module doc.
        batch_size: batch size for tensors and datasets (loaders keep their own).
        n: maximum number of images (None: all).
        num_workers: DataLoader workers for datasets (folders decode PNGs; workers help there).
        split: split for named datasets.
    """
    if isinstance(source, str):
        source = open_source(source, split=split)
    if isinstance(source, fdata.LabeledImages):
        it: Iterable = (x for x, _ in source.batches(batch_size, n))
    elif torch.is_tensor(source):
        it = (source[i: i + batch_size] for i in range(0, source.shape[0], batch_size))
    elif isinstance(source, torch.utils.data.Dataset) and not isinstance(source, torch.utils.data.IterableDataset):
        it = (_images_of(b) for b in torch.utils.data.DataLoader(source, batch_size=batch_size, shuffle=False,
                                                                 num_workers=num_workers))
    else:
        it = (_images_of(b) for b in source)
    seen = 0
    for x in it:
        if n is not None and seen + x.shape[0] > n:
            x = x[: n - seen]
        if x.shape[0]:
            yield x
        seen += x.shape[0]
        if n is not None and seen >= n:
            return


class ProgressBar:
    """A dependency-free progress bar on stderr: redraws in place on a terminal, prints every ~10% otherwise.

    Args:
        label: text before the bar.
        total: expected count (None: unknown; then only the count and rate are shown).
        stream: output stream (default stderr).
    """

    def __init__(self, label: str, total: int | None = None, stream=None):
        self.label, self.total, self.stream = label, total, stream or sys.stderr
        self.start = time.perf_counter()
        self.done = 0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._next_report = 0.1

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        self.total = total if total is not None else self.total
        rate = done / max(1e-9, time.perf_counter() - self.start)
        if self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
            line = f"{self.label} [{bar}] {done}/{self.total} {rate:.1f} img/s"
        else:
            frac = None
            line = f"{self.label} {done} images {rate:.1f} img/s"
        if self._tty:
            self.stream.write("\r" + line)
            self.stream.flush()
        elif frac is None or frac >= self._next_report or frac >= 1.0:
            self.stream.write(line + "\n")
            self._next_report = (int(frac * 10) + 1) / 10 if frac is not None else 0
            self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def resize_square(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``(N, C, H, W)`` float images to ``resolution x resolution``."""
    if tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    return F.interpolate(x.float(), size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=True)


def extract_features(source, extractor, batch_size: int = 50, n: int | None = None, value_range=(0.0, 1.0),
                     resolution: int | None = None, split: str | None = None, num_workers: int = 0,
                     progress: Callable[[int, int | None], None] | None = None) -> Iterator[torch.Tensor]:
    """Stream features of ``source`` batch by batch.

    Args:
        source: see the module doc (a string source is opened in [0, 1], overriding ``value_range``).
        extractor: callable ``(images, value_range) -> (B, D)`` features, e.g.
            :class:`~fastgan.metrics.inception.InceptionFeatures`.
        batch_size: images per forward pass.
        n: maximum number of images.
        value_range: ``(lo, hi)`` of the source's float images.
        resolution: resize images to ``resolution x resolution`` first (to score a dataset at a model's training
            resolution); None keeps them.
        split: split for named datasets.
        num_workers: DataLoader workers for dataset sources.
        progress: called as ``progress(done, total)`` after each batch.
    Yields:
        ``(B, D)`` float32 feature batches on the extractor's device.
    """
    if isinstance(source, str):
        source = open_source(source, split=split, resolution=resolution)
        value_range = (0.0, 1.0)
    total = source_length(source)
    total = min(total, n) if (total is not None and n is not None) else (total if n is None else n)
    done = 0
    for x in iter_batches(source, batch_size, n, num_workers, split):
        vr = value_range
        if resolution is not None:
            if x.dtype == torch.uint8:  # resize in float; 0..255 stays 0..255
                x, vr = x.float(), (0.0, 255.0)
            x = resize_square(x, int(resolution))
        yield extractor(x, vr)
        done += x.shape[0]
        if progress is not None:
            progress(done, total)
