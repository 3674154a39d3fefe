"""Emoji: Google's Noto colour emoji as 64x64 PNGs from the npm package ``emoji-datasource-google``.

npm is used only to fetch the package once; reading needs nothing but Pillow. The package is looked for, in order:

1. ``$FASTGAN_EMOJI_DIR``: either the package folder itself or an npm ``--prefix`` holding
   ``node_modules/emoji-datasource-google``;
2. ``~/.cache/fastgan/npm`` (the documented install prefix), then ``./node_modules`` and the global npm folders.

Labels are the emoji's Unicode category from the package's ``emoji.json`` (10 categories such as "Smileys & Emotion"
or "Animals & Nature"), usable as StarGAN v2 domains or CFG classes. Skin-tone variants share their base's category.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ._base import DEFAULT_RANGE, DatasetMissingError, LabeledImages, split_indices

PACKAGE = "emoji-datasource-google"
EMOJI_VERSION = "16.0.0"
DEFAULT_PREFIX = os.path.join("~", ".cache", "fastgan", "npm")
EMOJI_INSTALL = f"npm install --prefix {DEFAULT_PREFIX} {PACKAGE}@{EMOJI_VERSION}"
_GLOBAL_NODE_DIRS = ("/usr/local/lib/node_modules", "/usr/lib/node_modules")


def find_emoji_dir() -> str:
    """Folder of the installed ``emoji-datasource-google`` package.

    Returns:
        The package folder (it contains ``emoji.json`` and ``img/google/64``).
    Raises:
        DatasetMissingError: not found in any of the searched places; the message gives the npm command.
    """
    candidates = []
    env = os.environ.get("FASTGAN_EMOJI_DIR")
    if env:
        candidates += [env, os.path.join(env, "node_modules", PACKAGE)]
    candidates += [os.path.join(os.path.expanduser(DEFAULT_PREFIX), "node_modules", PACKAGE),
                   os.path.join(os.getcwd(), "node_modules", PACKAGE)]
    candidates += [os.path.join(d, PACKAGE) for d in _GLOBAL_NODE_DIRS]
    for c in candidates:
        if os.path.isfile(os.path.join(c, "emoji.json")) and os.path.isdir(os.path.join(c, "img", "google", "64")):
            return c
    raise DatasetMissingError("emoji", f"the npm package {PACKAGE} (searched: {', '.join(candidates)})",
                              EMOJI_INSTALL + "   (or set FASTGAN_EMOJI_DIR to where it is installed)")


def emoji_index(root: str, include_skin_tones: bool = True) -> tuple[list[str], list[str]]:
    """Image files with a Google image and their categories, from ``emoji.json``.

    Args:
        root: the package folder from :func:`find_emoji_dir`.
        include_skin_tones: also list each emoji's skin-tone variants (3,786 files in all for v16, else 1,911).
    Returns:
        ``(files, categories)``: file names under ``img/google/64``, sorted, and each one's category.
    """
    with open(os.path.join(root, "emoji.json"), encoding="utf-8") as f:
        entries = json.load(f)
    found = {}
    for e in entries:
        if e.get("has_img_google"):
            found[e["image"]] = e["category"]
        if include_skin_tones:
            for v in (e.get("skin_variations") or {}).values():
                if v.get("has_img_google"):
                    found[v["image"]] = e["category"]
    files = sorted(found)
    return files, [found[f] for f in files]


def load_emoji(split: str = "all", value_range=DEFAULT_RANGE, include_skin_tones: bool = True,
               background: int = 255) -> LabeledImages:
    """Google Noto emoji, 64x64 RGB, labelled by Unicode category.

    The PNGs are RGBA; they are composited over a flat ``background`` grey level (white by default) because the
    metrics and most generators work on RGB, and transparent pixels have no defined colour of their own.

    Args:
        split: "all" (3,786 with skin tones), or "train"/"test" (deterministic stratified 90/10 by category).
        value_range: ``(lo, hi)`` for black and white.
        include_skin_tones: include skin-tone variants.
        background: 0-255 grey level behind transparent pixels.
    Returns:
        LabeledImages with images ``(N, 3, 64, 64)``, labels indexing ``.classes`` (sorted category names).
    """
    try:
        from PIL import Image
    except ImportError as e:
        raise DatasetMissingError("emoji", "Pillow (to decode PNG)", "pip install pillow") from e
    root = find_emoji_dir()
    files, cats = emoji_index(root, include_skin_tones)
    classes = sorted(set(cats))
    labels = np.array([classes.index(c) for c in cats], dtype=np.int64)
    idx = split_indices(labels, split)
    out = np.empty((len(idx), 64, 64, 3), dtype=np.uint8)
    img_dir = os.path.join(root, "img", "google", "64")
    for k, i in enumerate(idx):
        with Image.open(os.path.join(img_dir, files[i])) as im:
            rgba = np.asarray(im.convert("RGBA").resize((64, 64)), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        out[k] = np.round(rgba[..., :3] * alpha + background * (1.0 - alpha)).astype(np.uint8)
    return LabeledImages(out.transpose(0, 3, 1, 2), labels[idx], classes, 255, "emoji", split, value_range)
