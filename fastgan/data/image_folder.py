"""Image folders: ``root/<domain>/*.png|jpg`` as a labelled dataset, and writing image tensors back to such a folder.

A folder whose sub-folders hold images is read as one domain per sub-folder (label = index of the sorted folder
name, as StarGAN v2 expects); a folder with images directly inside it is one domain. Resizing uses the same
antialiased bilinear interpolation as the metrics, so a set written by :func:`save_images` and read back at its own
size is unchanged.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._base import DEFAULT_RANGE, DatasetMissingError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise DatasetMissingError("image folder", "Pillow", "pip install pillow") from e
    return Image


def _list_images(folder: str, extensions: Sequence[str]) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(tuple(extensions)) and os.path.isfile(os.path.join(folder, f)))


def resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (antialiased bilinear).

    Args:
        x: ``(C, H, W)`` or ``(N, C, H, W)`` float tensor.
        size: target length of the shorter side.
    Returns:
        Tensor of the same rank with ``min(H', W') == size``.
    """
    squeeze = x.dim() == 3
    x = x[None] if squeeze else x
    h, w = x.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        x = F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)
    return x[0] if squeeze else x


class ImageFolder(torch.utils.data.Dataset):
    """``root/<domain>/*.png|jpg`` (or a flat ``root/*.png``) as ``dataset[i] -> (image, label)``.

    Args:
        root: the folder.
        resolution: output side length; None keeps each file's size (then a DataLoader needs equal sizes).
        crop: with ``resolution``: "center" or "random" crops a square after resizing the shorter side; None
            resizes straight to ``resolution x resolution`` (aspect ratio not kept).
        hflip: flip horizontally with probability 0.5 (torch's RNG, so DataLoader worker seeding applies).
        mode: "RGB" (3 channels) or "L" (1 channel); files are converted to it.
        value_range: ``(lo, hi)`` for black and white; default ``(0, 1)``.
        extensions: accepted file suffixes (lower case).
    Attributes:
        samples: list of ``(path, label)``.
        classes: domain names (sub-folder names, sorted), or ``[basename(root)]`` for a flat folder.
        labels: ``(N,)`` int64 tensor.
    """

    def __init__(self, root: str, resolution: int | None = None, crop: str | None = "center", hflip: bool = False,
                 mode: str = "RGB", value_range=DEFAULT_RANGE, extensions: Sequence[str] = IMAGE_EXTENSIONS):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"fastgan: image folder {root!r} does not exist")
        if crop not in ("center", "random", None):
            raise ValueError(f"fastgan: crop must be 'center', 'random' or None, got {crop!r}")
        if mode not in ("RGB", "L"):
            raise ValueError(f"fastgan: mode must be 'RGB' or 'L', got {mode!r}")
        self.root, self.resolution, self.crop, self.hflip, self.mode = root, resolution, crop, hflip, mode
        self.value_range = (float(value_range[0]), float(value_range[1]))
        subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        per_domain = [(d, _list_images(os.path.join(root, d), extensions)) for d in subdirs]
        per_domain = [(d, files) for d, files in per_domain if files]
        if per_domain:
            self.classes = [d for d, _ in per_domain]
            self.samples = [(p, k) for k, (_, files) in enumerate(per_domain) for p in files]
        else:
            self.classes = [os.path.basename(os.path.normpath(root))]
            self.samples = [(p, 0) for p in _list_images(root, extensions)]
        if not self.samples:
            raise FileNotFoundError(f"fastgan: no images ({', '.join(extensions)}) in {root!r} or its sub-folders")
        self.labels = torch.tensor([k for _, k in self.samples], dtype=torch.int64)
        self.name = os.path.basename(os.path.normpath(root))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: str) -> torch.Tensor:
        """Read one file as ``(C, H, W)`` float32 in [0, 1] (before resize, crop, flip and range mapping)."""
        with _pil().open(path) as im:
            arr = np.asarray(im.convert(self.mode), dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32) / 255.0

    def __getitem__(self, i: int):
        """Returns ``(image, label)``: ``(C, R, R)`` float32 in ``value_range`` (``R`` = resolution) and an int."""
        path, label = self.samples[i]
        x = self.load(path)
        if self.resolution is not None:
            r = int(self.resolution)
            if self.crop is None:
                if tuple(x.shape[-2:]) != (r, r):
                    x = F.interpolate(x[None], size=(r, r), mode="bilinear", antialias=True, align_corners=False)[0]
            else:
                x = resize_shorter(x, r)
                h, w = x.shape[-2:]
                if self.crop == "random":
                    top = int(torch.randint(0, h - r + 1, ()))
                    left = int(torch.randint(0, w - r + 1, ()))
                else:
                    top, left = (h - r) // 2, (w - r) // 2
                x = x[:, top: top + r, left: left + r]
        if self.hflip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        lo, hi = self.value_range
        return x.clamp(0.0, 1.0) * (hi - lo) + lo, label

    def __repr__(self) -> str:
        return (f"ImageFolder({self.root!r}, n={len(self)}, classes={len(self.classes)}, "
                f"resolution={self.resolution}, crop={self.crop}, hflip={self.hflip}, mode={self.mode!r})")


def save_images(images: torch.Tensor, root: str, labels=None, classes: Sequence[str] | None = None,
                value_range=DEFAULT_RANGE, prefix: str = "img", start: int = 0) -> list[str]:
    """Write images as PNG files: ``root/<class>/<prefix>_<i>.png``, or flat ``root/<prefix>_<i>.png``.

    Use it to export generator samples for ``fastgan eval --fake DIR``. Values are clamped to ``value_range`` and
    rounded to 8 bits, exactly what the metrics' own quantisation does, so scores from the folder equal scores from
    the tensor.

    Args:
        images: ``(N, C, H, W)`` float tensor, ``C`` 1 or 3, in ``value_range``.
        root: output folder (created).
        labels: optional ``(N,)`` ints; each image goes into the sub-folder of its class.
        classes: names for the labels; default ``str(label)``.
        value_range: ``(lo, hi)`` of the input.
        prefix: file-name prefix.
        start: first index in the file names (to append batches to one folder).
    Returns:
        The written paths, in order.
    """
    image_mod = _pil()
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"fastgan: images must be (N, 1|3, H, W), got {tuple(images.shape)}")
    lo, hi = float(value_range[0]), float(value_range[1])
    u8 = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    u8 = u8.permute(0, 2, 3, 1).numpy()
    paths = []
    for i in range(u8.shape[0]):
        folder = root
        if labels is not None:
            lab = int(labels[i])
            name = classes[lab] if classes is not None else str(lab)
            folder = os.path.join(root, name.replace(os.sep, "_"))  # e.g. Fashion-MNIST's "t-shirt/top"
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{prefix}_{start + i:06d}.png")
        arr = u8[i, :, :, 0] if u8.shape[-1] == 1 else u8[i]
        image_mod.fromarray(arr).save(path)
        paths.append(path)
    return paths
