"""Emoji: Google's Noto colour emoji as 64x64 PNGs from the npm package ``emoji-datasource-google``.

npm is used only to fetch the package once; reading needs nothing but Pillow. The package is looked for, in order:

1. ``$FASTGAN_EMOJI_DIR``: either the package folder itself or an npm ``--prefix`` holding
   ``node_modules/emoji-datasource-google``;
2. ``~/.cache/fastgan/npm`` (the documented install prefix), then ``./node_modules`` and the global npm folders.

Two labellings, usable as StarGAN v2 domains or CFG classes:

* ``emoji``: the emoji's Unicode category from the package's ``emoji.json`` (10 categories such as
  "Smileys & Emotion" or "Animals & Nature"); skin-tone variants share their base's category.
* ``emoji-skin-tones``: the skin tone (6 domains: the default yellow and the five Fitzpatrick modifiers) of the
  people and body-part emoji that come in all five tones. Every emoji appears once in each domain, so the domains
  differ in one attribute only, the kind of translation StarGAN v2 learns (like its AFHQ species or CelebA-HQ sexes).
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

from ._base import DEFAULT_RANGE, DatasetMissingError, LabeledImages, split_indices

PACKAGE = "emoji-datasource-google"
EMOJI_VERSION = "16.0.0"
DEFAULT_PREFIX = os.path.join("~", ".cache", "fastgan", "npm")
EMOJI_INSTALL = f"npm install --prefix {DEFAULT_PREFIX} {PACKAGE}@{EMOJI_VERSION}"
# The Fitzpatrick modifiers as emoji.json keys them, with their CLDR names; "default" is the unmodified emoji.
SKIN_TONES = (("1F3FB", "light"), ("1F3FC", "medium-light"), ("1F3FD", "medium"), ("1F3FE", "medium-dark"),
              ("1F3FF", "dark"))
SKIN_TONE_DOMAINS = ("default",) + tuple(name for _, name in SKIN_TONES)
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


def skin_tone_index(root: str) -> tuple[list[str], list[int]]:
    """Image files of the emoji that have a Google image in the default and all five single skin tones.

    Emoji whose variants exist only for two-person tone pairs (e.g. some couples) are left out, so every domain
    holds the same emoji. The order is domain by domain, each in the same emoji order (sorted by the default
    image's file name), so :func:`~fastgan.data.split_indices` holds out the same emoji in every domain.

    Args:
        root: the package folder from :func:`find_emoji_dir`.
    Returns:
        ``(files, domains)``: file names under ``img/google/64`` and each one's index into :data:`SKIN_TONE_DOMAINS`.
    """
    with open(os.path.join(root, "emoji.json"), encoding="utf-8") as f:
        entries = json.load(f)
    rows = []
    for e in entries:
        variants = e.get("skin_variations") or {}
        if not e.get("has_img_google"):
            continue
        tones = [variants.get(code) for code, _ in SKIN_TONES]
        if all(v is not None and v.get("has_img_google") for v in tones):
            rows.append([e["image"]] + [v["image"] for v in tones])
    rows.sort()
    files = [row[d] for d in range(len(SKIN_TONE_DOMAINS)) for row in rows]
    domains = [d for d in range(len(SKIN_TONE_DOMAINS)) for _ in rows]
    return files, domains


def _read_rgb(img_dir: str, names: list[str], background: int) -> np.ndarray:
    """``(N, 3, 64, 64)`` uint8: the RGBA PNGs composited over a flat grey ``background``."""
    from PIL import Image

    out = np.empty((len(names), 64, 64, 3), dtype=np.uint8)
    for k, name in enumerate(names):
        with Image.open(os.path.join(img_dir, name)) as im:
            rgba = np.asarray(im.convert("RGBA").resize((64, 64)), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        out[k] = np.round(rgba[..., :3] * alpha + background * (1.0 - alpha)).astype(np.uint8)
    return out.transpose(0, 3, 1, 2)


def _require_pillow(name: str) -> None:
    if importlib.util.find_spec("PIL") is None:
        raise DatasetMissingError(name, "Pillow (to decode PNG)", "pip install pillow")


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
    _require_pillow("emoji")
    root = find_emoji_dir()
    files, cats = emoji_index(root, include_skin_tones)
    classes = sorted(set(cats))
    labels = np.array([classes.index(c) for c in cats], dtype=np.int64)
    idx = split_indices(labels, split)
    images = _read_rgb(os.path.join(root, "img", "google", "64"), [files[i] for i in idx], background)
    return LabeledImages(images, labels[idx], classes, 255, "emoji", split, value_range)


def load_emoji_skin_tones(split: str = "all", value_range=DEFAULT_RANGE, background: int = 255) -> LabeledImages:
    """Google Noto people and body-part emoji, 64x64 RGB, labelled by skin tone: 6 domains of 316 each (v16).

    Args:
        split: "all", or "train"/"test": the same deterministic 90/10 split of the emoji in every domain, so no
            test emoji is seen in training in any tone.
        value_range: ``(lo, hi)`` for black and white.
        background: 0-255 grey level behind transparent pixels.
    Returns:
        LabeledImages with images ``(N, 3, 64, 64)``, labels indexing ``.classes`` (:data:`SKIN_TONE_DOMAINS`:
        "default", "light", "medium-light", "medium", "medium-dark", "dark").
    """
    _require_pillow("emoji-skin-tones")
    root = find_emoji_dir()
    files, domains = skin_tone_index(root)
    labels = np.array(domains, dtype=np.int64)
    idx = split_indices(labels, split)
    images = _read_rgb(os.path.join(root, "img", "google", "64"), [files[i] for i in idx], background)
    return LabeledImages(images, labels[idx], list(SKIN_TONE_DOMAINS), 255, "emoji-skin-tones", split, value_range)
