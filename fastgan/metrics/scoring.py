"""FID and KID between two image sources, and cached reference statistics of named datasets.

All entry points stream: images are read batch by batch, features go into a float64 accumulator
(:class:`~fastgan.metrics.stats.FeatureStats`), and only a bounded sample of raw features is kept for KID.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from .. import data as fdata
from .features import ProgressBar, extract_features
from .inception import load_inception
from .kid import kid_from_features
from .stats import FeatureStats, fid_from_stats

DEFAULT_MAX_FEATURES = 10_000  # raw features kept per side for KID: 80 MB at D=2048, far more than subsets need


def cache_dir() -> str:
    """Where reference statistics are cached: ``$FASTGAN_CACHE_DIR/fid_stats`` or ``~/.cache/fastgan/fid_stats``."""
    base = os.environ.get("FASTGAN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastgan")
    return os.path.join(base, "fid_stats")


def _progress(progress, label: str):
    if progress is True:
        return ProgressBar(label)
    return progress or None


def compute_stats(source, *, extractor=None, device=None, dtype=None, n: int | None = None, batch_size: int = 50,
                  value_range=(0.0, 1.0), resolution: int | None = None, split: str | None = None,
                  max_features: int = DEFAULT_MAX_FEATURES, seed: int = 0, num_workers: int = 0,
                  progress=None, label: str = "features") -> FeatureStats:
    """Feature statistics of an image source.

    Args:
        source: a :class:`FeatureStats` (returned as is), a path to a ``.npz`` written by
            :meth:`FeatureStats.save` (or pytorch-fid), or any image source of :mod:`fastgan.metrics.features`
            (tensor, DataLoader, Dataset, dataset name, folder).
        extractor: feature callable ``(images, value_range) -> (B, D)``; default the FID Inception network on
            ``device`` in ``dtype``.
        device: extractor device (default CUDA if available); dtype: "fp32" (default), "fp16" or "bf16".
        n: maximum images; batch_size: images per forward pass.
        value_range: ``(lo, hi)`` of float images in tensors/loaders.
        resolution: resize images to this square size first (None: as stored).
        split: split for named datasets.
        max_features: raw features kept (reservoir-sampled) for KID; 0 keeps none.
        seed: reservoir seed. num_workers: DataLoader workers for dataset sources.
        progress: True for a stderr progress bar, or a callable ``(done, total)``.
        label: progress-bar label.
    Returns:
        FeatureStats with ``n`` images' mean/covariance and up to ``max_features`` raw features; ``meta`` records the
        source and settings.
    """
    if isinstance(source, FeatureStats):
        return source
    if isinstance(source, str) and source.endswith(".npz") and os.path.isfile(source):
        return FeatureStats.load(source)
    ext = extractor if extractor is not None else load_inception(device, dtype)
    stats = FeatureStats(max_features=max_features, seed=seed)
    bar = _progress(progress, label)
    for f in extract_features(source, ext, batch_size=batch_size, n=n, value_range=value_range,
                              resolution=resolution, split=split, num_workers=num_workers, progress=bar):
        stats.update(f)
    if isinstance(bar, ProgressBar):
        bar.close()
    stats.meta = {"source": source if isinstance(source, str) else type(source).__name__,
                  "network": getattr(ext, "name", type(ext).__name__), "resolution": resolution, "split": split,
                  "n": stats.n}
    return stats


def extractor_name(extractor) -> str | None:
    """The cache identity of a feature extractor: its ``name`` attribute (a non-empty string), else None.

    The built-in Inception network has one that encodes its weights' hash, preprocessing and dtype. A custom
    extractor that should share cached reference statistics across calls must carry a ``name`` unique to its
    weights and preprocessing; without one, :func:`reference_stats` neither reads nor writes the cache.
    """
    name = getattr(extractor, "name", None)
    return name if isinstance(name, str) and name else None


def reference_stats(dataset: str, split: str | None = None, resolution: int | None = None, n: int | None = None,
                    *, use_cache: bool = True, cache_path: str | None = None, extractor=None, device=None,
                    dtype=None, batch_size: int = 50, max_features: int = DEFAULT_MAX_FEATURES, progress=None,
                    ) -> FeatureStats:
    """Statistics of a named dataset, cached to an ``.npz`` keyed by dataset, split, resolution, count and network.

    The first call extracts features (slow on CPU: a few images/s); later calls read the file.

    Args:
        dataset: a :mod:`fastgan.data` name, optionally ``"name:split"``.
        split: "train", "test" or "all"; default from ``dataset`` or the dataset's default split.
        resolution: score the dataset resized to this square size (match the model's training resolution);
            None: native size.
        n: use a seeded random subset of ``n`` images (None: all).
        use_cache: read/write the cache. Only extractors with a ``name`` (see :func:`extractor_name`) are cached;
            others are computed on every call, unless ``cache_path`` names the file (the caller then keys it).
        cache_path: explicit cache file; default ``cache_dir()/<name>-<split>-<res>-n<n>-<network>.npz``.
        extractor, device, dtype, batch_size, max_features, progress: as :func:`compute_stats`.
    Returns:
        FeatureStats with ``meta`` holding dataset, split, resolution and network.
    """
    name, spec_split = fdata.parse_name(dataset)
    split = split or spec_split or fdata.DATASETS[name][1]
    ext = extractor if extractor is not None else load_inception(device, dtype)
    net = extractor_name(ext)
    if net is None and cache_path is None:
        # No stable identity to key the file by: a type name ("function", "MyNet") would let two different
        # extractors share one file and the second silently score against the first one's statistics.
        use_cache = False
    res = f"{resolution}px" if resolution else "native"
    path = cache_path or os.path.join(cache_dir(), f"{name}-{split}-{res}-n{n or 'all'}-{net}.npz")
    if use_cache and os.path.isfile(path):
        stats = FeatureStats.load(path)
        kept = 0 if stats.features is None else stats.features.shape[0]
        if kept >= min(max_features, stats.n):  # enough raw features for the KID asked for
            return stats
    ds = fdata.load_dataset(name, split=split)
    if n is not None:
        ds = ds.sample(n, seed=0)  # stored order can be sorted by class (animal-mnist): draw a seeded subset
    stats = compute_stats(ds, extractor=ext, n=n, batch_size=batch_size, resolution=resolution,
                          max_features=max_features, progress=progress, label=f"{name}:{split}")
    stats.meta = {"dataset": name, "split": split, "resolution": resolution, "n": stats.n,
                  "network": net or type(ext).__name__}
    if use_cache:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # Write then rename, so a crash or a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(path) or ".")
        os.close(fd)
        try:
            stats.save(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return stats


def resolve_stats(source, *, use_cache: bool = True, label: str = "features", **kw) -> FeatureStats:
    """:func:`reference_stats` for dataset names (cached), :func:`compute_stats` for everything else."""
    if isinstance(source, str) and fdata.is_dataset_name(source):
        ref_kw = {k: kw[k] for k in ("split", "resolution", "n", "extractor", "device", "dtype", "batch_size",
                                     "max_features", "progress") if k in kw}
        return reference_stats(source, use_cache=use_cache, **ref_kw)
    return compute_stats(source, label=label, **kw)


def fid(real, fake, **kw) -> float:
    """Fréchet Inception Distance between two sources (lower is closer).

    Args:
        real, fake: sources as in :func:`compute_stats` (``FeatureStats``, ``.npz``, tensor, loader, dataset name,
            folder). Dataset names use cached reference statistics.
        **kw: options of :func:`compute_stats` (``n``, ``batch_size``, ``value_range``, ``device``, ``dtype``,
            ``resolution``, ``extractor``, ``progress``, ...), applied to both sides.
    Returns:
        FID as a float.
    """
    kw.setdefault("max_features", 0)
    return fid_from_stats(resolve_stats(real, label="real", **kw), resolve_stats(fake, label="fake", **kw))


def kid(real, fake, subsets: int = 100, subset_size: int = 1000, seed: int = 0, **kw) -> tuple[float, float]:
    """Kernel Inception Distance between two sources.

    Args:
        real, fake: sources as in :func:`fid` (a FeatureStats must have kept raw features).
        subsets: random subsets; subset_size: features per subset and side (capped at the smaller side).
        seed: subset-sampling seed.
        **kw: options of :func:`compute_stats`.
    Returns:
        ``(mean, std)`` over subsets.
    """
    kw.setdefault("max_features", max(DEFAULT_MAX_FEATURES, subset_size))
    r = resolve_stats(real, label="real", **kw)
    f = resolve_stats(fake, label="fake", **kw)
    return kid_from_stats(r, f, subsets, subset_size, seed)


def kid_from_stats(real: FeatureStats, fake: FeatureStats, subsets: int = 100, subset_size: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """KID ``(mean, std)`` from the raw features kept in two :class:`FeatureStats`."""
    for side, s in (("real", real), ("fake", fake)):
        if s.features is None:
            raise ValueError(f"fastgan: {side} statistics kept no raw features; KID needs them "
                             "(compute them with max_features > 0)")
    return kid_from_features(real.features, fake.features, subsets, subset_size, seed)


def evaluate(real, fake, *, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0, **kw) -> dict:
    """FID and KID in one pass over each source.

    Args:
        real, fake: sources as in :func:`fid`.
        kid_subsets, kid_subset_size, seed: KID settings (``kid_subsets=0`` skips KID).
        **kw: options of :func:`compute_stats`.
    Returns:
        dict with ``fid``, ``kid_mean``, ``kid_std`` (None when skipped), ``n_real``, ``n_fake``, ``seconds``.
    """
    t0 = time.perf_counter()
    kw.setdefault("max_features", max(DEFAULT_MAX_FEATURES, kid_subset_size) if kid_subsets else 0)
    r = resolve_stats(real, label="real", **kw)
    f = resolve_stats(fake, label="fake", **kw)
    out = {"fid": fid_from_stats(r, f), "kid_mean": None, "kid_std": None, "n_real": r.n, "n_fake": f.n}
    if kid_subsets:
        out["kid_mean"], out["kid_std"] = kid_from_stats(r, f, kid_subsets, kid_subset_size, seed)
    out["seconds"] = time.perf_counter() - t0
    return out


@torch.no_grad()
def sample_stats(sample_fn, n: int, batch_size: int = 50, **kw) -> FeatureStats:
    """Statistics of ``n`` images drawn from a generator.

    Args:
        sample_fn: ``sample_fn(b) -> (b, C, H, W)`` images (in ``kw['value_range']``, default [0, 1]).
        n: images to draw; batch_size: images per call.
        **kw: options of :func:`compute_stats`.
    """
    def batches():
        done = 0
        while done < n:
            b = min(batch_size, n - done)
            yield sample_fn(b)
            done += b
    return compute_stats(batches(), n=n, batch_size=batch_size, **kw)
