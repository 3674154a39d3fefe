"""Streaming feature statistics and the Fréchet distance between two Gaussians.

:class:`FeatureStats` accumulates the mean and covariance of features batch by batch in float64, so a dataset of any
size is scored without holding its images (or its features) in memory. It can also keep a bounded, uniformly drawn
sample of the raw features, which KID needs (its polynomial kernel is not a function of mean and covariance).
"""
from __future__ import annotations

import json

import numpy as np
import torch


class FeatureStats:
    """Running mean/covariance of ``(B, D)`` feature batches, plus an optional reservoir of raw features.

    Sums are taken of ``x - shift`` where ``shift`` is the first batch's mean: with features of similar magnitude
    to their spread the naive ``E[xx^T] - mu mu^T`` would still be fine in float64, but shifting costs nothing and
    keeps the covariance accurate when the mean is large.

    Args:
        max_features: how many raw features to keep for KID (0: none). Beyond that a seeded reservoir sample keeps
            a uniform random subset of everything seen.
        seed: seed of the reservoir sampler.
    Attributes:
        n: number of features seen.
        features: ``(M, D)`` float32 CPU tensor of kept features, ``M <= max_features`` (None if none kept).
        meta: free-form dict saved with the statistics (dataset, split, resolution, network, ...).
    """

    def __init__(self, max_features: int = 0, seed: int = 0):
        self.n = 0
        self.max_features = int(max_features)
        self._shift = self._s1 = self._s2 = None
        self._kept: list[torch.Tensor] = []
        self._reservoir: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(int(seed))
        self._sqrt_cov = None
        self._fixed = None  # (mu, sigma) when loaded from a file with no count (pytorch-fid's format)
        self.meta: dict = {}

    @property
    def dim(self) -> int | None:
        return None if self._shift is None else int(self._shift.numel())

    def update(self, feats: torch.Tensor) -> "FeatureStats":
        """Add a batch.

        Args:
            feats: ``(B, D)`` features, any float dtype and device (sums stay on that device, in float64).
        Returns:
            self.
        """
        if feats.dim() != 2:
            raise ValueError(f"fastgan: features must be (B, D), got {tuple(feats.shape)}")
        if self._fixed is not None:
            raise ValueError("fastgan: cannot add features to statistics loaded without a sample count")
        if feats.shape[0] == 0:
            return self
        x = feats.detach().to(torch.float64)
        if self._shift is None:
            self._shift = x.mean(0)
            self._s1 = torch.zeros_like(self._shift)
            self._s2 = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        elif x.shape[1] != self._shift.numel():
            raise ValueError(f"fastgan: feature dim {x.shape[1]} differs from earlier batches' {self.dim}")
        x = x.to(self._shift.device) - self._shift
        self._s1 += x.sum(0)
        self._s2.addmm_(x.T, x)
        self._keep(feats.detach().to("cpu", torch.float32))
        self.n += x.shape[0]
        self._sqrt_cov = None
        return self

    def _keep(self, f: torch.Tensor) -> None:
        if self.max_features <= 0:
            return
        have = sum(t.shape[0] for t in self._kept) if self._reservoir is None else self.max_features
        if self._reservoir is None and have + f.shape[0] <= self.max_features:
            self._kept.append(f.clone())
            return
        if self._reservoir is None:  # switch from "keep everything" to reservoir sampling (Algorithm R)
            self._reservoir = torch.cat(self._kept + [f[: self.max_features - have]])
            self._kept = []
            seen, f = self.n + (self.max_features - have), f[self.max_features - have:]
        else:
            seen = self.n
        # Row t (0-based count of rows seen before it) replaces a random slot with probability max/(t+1).
        t = torch.arange(seen, seen + f.shape[0], dtype=torch.float64)
        j = (torch.rand(f.shape[0], generator=self._gen, dtype=torch.float64) * (t + 1)).long()
        for row in torch.nonzero(j < self.max_features).flatten().tolist():
            self._reservoir[j[row]] = f[row]

    @property
    def features(self) -> torch.Tensor | None:
        if self._reservoir is not None:
            return self._reservoir
        return torch.cat(self._kept) if self._kept else None

    @property
    def mean(self) -> torch.Tensor:
        """``(D,)`` float64 CPU mean."""
        if self._fixed is not None:
            return self._fixed[0]
        self._need(1)
        return (self._shift + self._s1 / self.n).cpu()

    @property
    def cov(self) -> torch.Tensor:
        """``(D, D)`` float64 CPU unbiased covariance (divides by ``n - 1``, as numpy's ``np.cov``)."""
        if self._fixed is not None:
            return self._fixed[1]
        self._need(2)
        m = self._s1 / self.n
        c = (self._s2 - self.n * torch.outer(m, m)) / (self.n - 1)
        return ((c + c.T) * 0.5).cpu()

    def _need(self, k: int) -> None:
        if self.n < k:
            raise ValueError(f"fastgan: statistics need at least {k} feature(s), have {self.n}")

    def sqrt_cov(self) -> torch.Tensor:
        """Symmetric PSD square root of :attr:`cov`, cached (a fixed reference set pays for it once)."""
        if self._sqrt_cov is None:
            self._sqrt_cov = psd_sqrt(self.cov)
        return self._sqrt_cov

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add another accumulator's data (e.g. from another process). Kept features are concatenated, then
        subsampled to ``max_features``. Returns self."""
        if other.n == 0:
            return self
        if self._fixed is not None or other._fixed is not None:
            raise ValueError("fastgan: cannot merge statistics loaded without a sample count")
        if self.n == 0:
            self._shift = other._shift.clone()
            self._s1 = torch.zeros_like(other._s1)
            self._s2 = torch.zeros_like(other._s2)
        delta = (other._shift - self._shift.to(other._shift.device)).to(self._shift.device)
        s1o, s2o = other._s1.to(self._shift.device), other._s2.to(self._shift.device)
        # Re-centre the other sums on our shift: sum(x - a) = sum(x - b) + n(b - a), and likewise for outer sums.
        self._s2 += s2o + torch.outer(s1o, delta) + torch.outer(delta, s1o) + other.n * torch.outer(delta, delta)
        self._s1 += s1o + other.n * delta
        n_before = self.n
        self.n += other.n
        mine, theirs = self.features, other.features
        if self.max_features > 0 and theirs is not None:
            # Weight each kept feature by how many seen features it stands for, so the merged sample stays close
            # to uniform over both sides (exactly uniform when both kept everything).
            parts = [] if mine is None else [(mine, n_before)]
            parts.append((theirs, other.n))
            both = torch.cat([p for p, _ in parts])
            if both.shape[0] > self.max_features:
                w = torch.cat([torch.full((p.shape[0],), cnt / p.shape[0], dtype=torch.float64) for p, cnt in parts])
                both = both[torch.multinomial(w, self.max_features, replacement=False, generator=self._gen)]
            self._kept, self._reservoir = [both], None
        self._sqrt_cov = None
        return self

    @classmethod
    def from_moments(cls, mu, sigma, n: int | None, features=None) -> "FeatureStats":
        """Statistics from a mean ``(D,)``, covariance ``(D, D)`` and count.

        Args:
            mu: ``(D,)`` mean.
            sigma: ``(D, D)`` unbiased covariance.
            n: number of samples behind them; None if unknown (pytorch-fid's files), in which case the result can
                be scored against but not updated or merged.
            features: optional ``(M, D)`` kept raw features (for KID).
        """
        s = cls(max_features=0 if features is None else len(features))
        mu = torch.as_tensor(np.asarray(mu), dtype=torch.float64)
        sigma = torch.as_tensor(np.asarray(sigma), dtype=torch.float64)
        if n is None:
            s._fixed = (mu, sigma)
            s._shift = mu  # only so that .dim works
        else:
            if n < 2:
                raise ValueError(f"fastgan: need n >= 2 samples for a covariance, got {n}")
            s._shift, s._s1, s.n = mu.clone(), torch.zeros_like(mu), int(n)
            s._s2 = sigma * (int(n) - 1)
        if features is not None:
            s._kept = [torch.as_tensor(np.asarray(features), dtype=torch.float32)]
        return s

    def save(self, path: str) -> None:
        """Write an ``.npz`` with ``mu``, ``sigma`` (pytorch-fid's keys, so either tool can read it), ``n``,
        ``features`` (if kept) and ``meta`` (JSON)."""
        arrays = {"mu": self.mean.numpy(), "sigma": self.cov.numpy(), "n": np.int64(self.n),
                  "meta": np.array(json.dumps(self.meta, sort_keys=True))}
        if self.features is not None:
            arrays["features"] = self.features.numpy()
        with open(path, "wb") as f:  # a file object stops numpy from appending ".npz" to a path without it
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str) -> "FeatureStats":
        """Read an ``.npz`` written by :meth:`save`, or pytorch-fid's (``mu``/``sigma`` only: count unknown)."""
        with np.load(path, allow_pickle=False) as z:
            n = int(z["n"]) if "n" in z else None
            s = cls.from_moments(z["mu"], z["sigma"], n, z["features"] if "features" in z else None)
            s.meta = json.loads(str(z["meta"])) if "meta" in z else {}
        return s

    def __repr__(self) -> str:
        kept = 0 if self.features is None else self.features.shape[0]
        return f"FeatureStats(n={self.n}, dim={self.dim}, kept_features={kept}, meta={self.meta})"


def psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via ``eigh`` in float64.

    Round-off eigenvalues (covariances from fewer samples than dimensions are singular) are set to zero rather than
    producing NaNs or complex parts, which is what makes this stable where a general ``sqrtm`` of the
    non-symmetric product needs an epsilon fallback.

    Args:
        a: ``(D, D)`` symmetric PSD matrix.
    Returns:
        ``(D, D)`` float64 symmetric ``R`` with ``R @ R ~= a``.
    """
    a = torch.as_tensor(a, dtype=torch.float64)
    w, v = torch.linalg.eigh((a + a.T) * 0.5)
    return (v * _sqrt_eigenvalues(w)) @ v.T


def _sqrt_eigenvalues(w: torch.Tensor) -> torch.Tensor:
    """Square roots of a PSD matrix's eigenvalues, with those below the numerical-rank tolerance set to zero.

    Round-off leaves the null space of a singular covariance with eigenvalues of about ``+-eps * max(w)``; their
    square roots (~1e-7 each in float64) would add up over hundreds of dimensions to a visible bias (a set scored
    against itself would not give ~0). Below ``D * eps * max(w)`` an eigenvalue is indistinguishable from zero, so
    dropping it loses nothing real.
    """
    tol = w.numel() * torch.finfo(torch.float64).eps * float(w.abs().max()) if w.numel() else 0.0
    return torch.where(w > tol, w, torch.zeros_like(w)).sqrt()


def frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma1=None) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``, where ``tr((S1 S2)^(1/2))`` is computed as the sum
    of square roots of the eigenvalues of the symmetric PSD matrix ``R S2 R`` with ``R = S1^(1/2)`` (it is similar to
    ``S1 S2``, so the eigenvalues agree), all in float64.

    Args:
        mu1, mu2: ``(D,)`` means (array or tensor).
        sigma1, sigma2: ``(D, D)`` covariances.
        sqrt_sigma1: optional precomputed ``S1^(1/2)`` (see :meth:`FeatureStats.sqrt_cov`).
    Returns:
        The distance as a Python float (may be slightly negative, ~1e-10 relative, for identical inputs).
    """
    mu1, mu2 = (torch.as_tensor(np.asarray(m) if not torch.is_tensor(m) else m, dtype=torch.float64).cpu()
                for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s) if not torch.is_tensor(s) else s, dtype=torch.float64).cpu()
              for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"fastgan: shape mismatch: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}")
    r = psd_sqrt(s1) if sqrt_sigma1 is None else torch.as_tensor(sqrt_sigma1, dtype=torch.float64).cpu()
    m = r @ s2 @ r
    tr_covmean = _sqrt_eigenvalues(torch.linalg.eigvalsh((m + m.T) * 0.5)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2.0 * tr_covmean)


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> float:
    """Fréchet distance between two :class:`FeatureStats` (reuses ``real``'s cached covariance square root)."""
    return frechet_distance(real.mean, real.cov, fake.mean, fake.cov, sqrt_sigma1=real.sqrt_cov())
