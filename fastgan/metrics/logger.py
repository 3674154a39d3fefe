"""FID (and optionally KID) every k training steps, against reference statistics computed once.

Training loops call the logger each step; it does nothing except on multiples of ``every``, where it draws ``n``
samples from the generator, scores them, and records the result. The real side's statistics (and the square root of
their covariance, the expensive half of the Fréchet distance) are computed once and reused.

Example::

    logger = FIDLogger("mnist", every=1000, n=2000, value_range=(-1, 1))
    for step in range(steps):
        ...
        logger(step, lambda b: G(torch.randn(b, z_dim, device="cuda")))
"""
from __future__ import annotations

from typing import Callable

import torch

from .scoring import DEFAULT_MAX_FEATURES, kid_from_stats, resolve_stats, sample_stats
from .stats import FeatureStats, fid_from_stats


class FIDLogger:
    """Score a generator every ``every`` steps.

    Args:
        real: reference: a dataset name (statistics cached on disk), a ``.npz``, a :class:`FeatureStats`, or any
            image source of :func:`fastgan.metrics.compute_stats`.
        every: score when ``step % every == 0`` (step 0 included unless ``skip_first``).
        n: generated images per evaluation (FID is biased upward at small ``n``: compare runs at equal ``n``).
        batch_size: images per generator call and per Inception pass.
        value_range: range of the generator's output, e.g. ``(-1, 1)`` for tanh.
        kid: also compute KID (keeps raw features of both sides).
        kid_subsets, kid_subset_size: KID settings.
        log: called with a one-line message after each evaluation (default ``print``; None for silence).
        skip_first: do not score at step 0.
        real_kw: extra options for the real side (e.g. ``split``, ``resolution``, ``n``).
        **kw: options of :func:`fastgan.metrics.compute_stats` for both sides (``device``, ``dtype``,
            ``extractor``, ...).
    Attributes:
        history: list of ``(step, result dict)``; the dict has ``fid`` and, with ``kid``, ``kid_mean``/``kid_std``.
    """

    def __init__(self, real, every: int = 1000, n: int = 5000, batch_size: int = 50, value_range=(-1.0, 1.0),
                 kid: bool = False, kid_subsets: int = 100, kid_subset_size: int = 1000,
                 log: Callable[[str], None] | None = print, skip_first: bool = False, real_kw: dict | None = None,
                 **kw):
        if every < 1:
            raise ValueError(f"fastgan: every must be >= 1, got {every}")
        self.every, self.n, self.batch_size, self.value_range = int(every), int(n), int(batch_size), value_range
        self.kid, self.kid_subsets, self.kid_subset_size = kid, kid_subsets, kid_subset_size
        self.log, self.skip_first, self.kw = log, skip_first, kw
        self.max_features = max(DEFAULT_MAX_FEATURES, kid_subset_size) if kid else 0
        self._real_src, self._real_kw = real, dict(real_kw or {})
        self._real: FeatureStats | None = real if isinstance(real, FeatureStats) else None
        self.history: list[tuple[int, dict]] = []

    @property
    def real_stats(self) -> FeatureStats:
        """The reference statistics (computed, or read from the cache, on first use)."""
        if self._real is None:
            opts = dict(self.kw, **self._real_kw)
            opts.setdefault("batch_size", self.batch_size)
            self._real = resolve_stats(self._real_src, label="real", max_features=self.max_features, **opts)
        return self._real

    def due(self, step: int) -> bool:
        """Whether ``step`` is an evaluation step."""
        return step % self.every == 0 and not (self.skip_first and step == 0)

    def compute(self, sample_fn: Callable[[int], torch.Tensor]) -> dict:
        """Score ``n`` fresh samples now.

        Args:
            sample_fn: ``sample_fn(b) -> (b, C, H, W)`` images in ``value_range``; called under ``no_grad``.
                Put the generator in eval mode (and back) yourself if it has batch norm or dropout.
        Returns:
            dict with ``fid`` (and ``kid_mean``, ``kid_std`` if enabled).
        """
        real = self.real_stats
        fake = sample_stats(sample_fn, self.n, batch_size=self.batch_size, value_range=self.value_range,
                            max_features=self.max_features, **self.kw)
        out = {"fid": fid_from_stats(real, fake)}
        if self.kid:
            out["kid_mean"], out["kid_std"] = kid_from_stats(real, fake, self.kid_subsets, self.kid_subset_size)
        return out

    def __call__(self, step: int, sample_fn: Callable[[int], torch.Tensor]) -> dict | None:
        """Score at evaluation steps; return the result dict there, None otherwise."""
        if not self.due(step):
            return None
        out = self.compute(sample_fn)
        self.history.append((step, out))
        if self.log is not None:
            msg = f"step {step}: FID {out['fid']:.3f}"
            if self.kid:
                msg += f"  KID {out['kid_mean']:.5f} +- {out['kid_std']:.5f}"
            self.log(msg + f"  (n={self.n})")
        return out


def make_fid_callback(real, sample_fn: Callable[[int], torch.Tensor], every: int = 1000, **kw
                      ) -> Callable[[int], dict | None]:
    """A ``callback(step)`` for training loops that take step hooks; wraps :class:`FIDLogger`.

    Args:
        real: reference (see :class:`FIDLogger`).
        sample_fn: ``sample_fn(b) -> (b, C, H, W)`` generated images.
        every: evaluation interval in steps.
        **kw: other :class:`FIDLogger` options.
    Returns:
        ``callback(step) -> dict | None``; the logger is reachable as ``callback.logger``.
    """
    logger = FIDLogger(real, every=every, **kw)

    def callback(step: int):
        return logger(step, sample_fn)

    callback.logger = logger
    return callback


def training_fid_logger(real, *, every: int, n: int, real_n: int | None, batch_size: int, resolution: int, device,
                        log: Callable[[str], None] | None = print) -> FIDLogger | None:
    """The :class:`FIDLogger` behind the training commands' ``--fid-every`` (``fastgan train stargan-v2`` and
    ``ddpm``): generated images in [-1, 1], no score at step 0, the real side read at ``resolution`` (``real_n``
    images at most). None when ``every`` is 0, or when the Inception weights are missing: that is said once through
    ``log`` (``print`` when None), and training goes on."""
    if not every:
        return None
    from . import inception_available  # through the package, so a test can stand in for it

    ok, why = inception_available()
    if not ok:
        (log or print)(f"--fid-every: skipped, the Inception weights are not installed ({why})")
        return None
    return FIDLogger(real, every=every, n=n, batch_size=batch_size, value_range=(-1.0, 1.0), skip_first=True,
                     log=log, real_kw={"resolution": resolution, "n": real_n}, device=device)
