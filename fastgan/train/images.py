"""Small I/O helpers of the trainers: image grids as PNG, reading single images, and a progress display.

Pillow and tqdm are optional: Pillow is imported only when an image is read or written (with a clear message when
absent), and the progress display falls back to a printed line when tqdm is not installed.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.image_folder import IMAGE_EXTENSIONS, resize_shorter


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("fastgan: reading and writing images needs Pillow: pip install pillow") from None
    return Image


def make_grid(rows: Sequence[Sequence[torch.Tensor | None]], pad: int = 2, value_range=(-1.0, 1.0)) -> np.ndarray:
    """Tile images into one ``(H, W, 3)`` uint8 array.

    Args:
        rows: rows of ``(C, S, S)`` images (``C`` 1 or 3) in ``value_range``; ``None`` leaves a white cell.
        pad: white pixels between cells.
        value_range: ``(lo, hi)`` of the images.
    Returns:
        The grid as uint8 RGB.
    """
    cells = [c for r in rows for c in r if c is not None]
    if not cells:
        raise ValueError("fastgan: make_grid needs at least one image")
    s_h, s_w = cells[0].shape[-2:]
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    grid = torch.ones(3, n_rows * (s_h + pad) + pad, n_cols * (s_w + pad) + pad)
    lo, hi = value_range
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if img is None:
                continue
            img = ((img.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
            img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
            top, left = pad + i * (s_h + pad), pad + j * (s_w + pad)
            grid[:, top: top + s_h, left: left + s_w] = img
    return grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_grid(rows, path: str, pad: int = 2, value_range=(-1.0, 1.0), min_cell: int = 64) -> str:
    """Write :func:`make_grid` of ``rows`` to ``path`` (PNG), upscaling tiny cells to ``min_cell`` pixels.

    Small training sizes (16x16 digits) would give a grid too small to look at; nearest-neighbour upscaling keeps
    the pixels honest.

    Returns:
        ``path``.
    """
    rows = [list(r) for r in rows]
    size = next(c for r in rows for c in r if c is not None).shape[-1]
    if size < min_cell:
        factor = -(-min_cell // size)
        rows = [[None if c is None else F.interpolate(c[None].float(), scale_factor=factor, mode="nearest")[0]
                 for c in r] for r in rows]
    arr = make_grid(rows, pad, value_range)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Write-then-rename: a viewer refreshing the file never sees half a PNG.
    tmp = path + ".tmp.png"
    _pil().fromarray(arr).save(tmp)
    os.replace(tmp, path)
    return path


def list_images(path: str) -> list[str]:
    """``[path]`` for an image file, the sorted image files of a folder, else a clear error."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"fastgan: no images ({', '.join(IMAGE_EXTENSIONS)}) in {path!r}")
        return files
    if not os.path.isfile(path):
        raise ValueError(f"fastgan: image {path!r} does not exist")
    return [path]


def load_image(path: str, size: int) -> torch.Tensor:
    """Read an image as ``(3, size, size)`` float32 in [-1, 1] (shorter side resized, center crop)."""
    try:
        with _pil().open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"fastgan: cannot read image {path!r}: {e}") from None
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
    x = resize_shorter(x, size)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top: top + size, left: left + size].clamp(0, 1) * 2 - 1


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class Progress:
    """Training progress: a tqdm bar when tqdm is installed (and ``use_tqdm``), else a line every ``every`` steps.

    Args:
        total: final step; start: the step training starts from (resume).
        every: steps between printed lines in the fallback (tqdm refreshes by itself).
        enabled: False for non-zero ranks and ``--quiet``.
        use_tqdm: try tqdm.
        keys: loss names shown (others are logged to the JSONL file only).
    """

    def __init__(self, total: int, start: int = 0, every: int = 10, enabled: bool = True, use_tqdm: bool = True,
                 keys: Sequence[str] = ("D", "G", "cyc")):
        self.total, self.every, self.enabled, self.keys = total, max(1, every), enabled, tuple(keys)
        self.step, self.start_step, self.t0 = start, start, time.perf_counter()
        self.bar = None
        if enabled and use_tqdm:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, step: int, losses: dict[str, float]) -> None:
        """Record that ``step`` steps are complete, with the latest ``losses``."""
        if not self.enabled:
            return
        shown = {k: _fmt(losses[k]) for k in self.keys if k in losses}
        if self.bar is not None:
            self.bar.update(step - self.step)
            self.bar.set_postfix(shown, refresh=False)
        elif step % self.every == 0 or step == self.total:
            rate = (step - self.start_step) / max(1e-9, time.perf_counter() - self.t0)
            parts = "  ".join(f"{k} {v}" for k, v in shown.items())
            print(f"step {step}/{self.total}  {rate:.2f} it/s  {parts}", flush=True)
        self.step = step

    def write(self, msg: str) -> None:
        """Print a message without breaking the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
