"""Kernel Inception Distance: the unbiased squared MMD with the cubic polynomial kernel, over random subsets.

``k(x, y) = (x . y / D + 1)^3`` (Bińkowski et al., 2018). Unlike FID, KID has an unbiased estimator, so two samples
from one distribution score ~0 whatever the sample size; its mean and standard deviation over ``subsets`` random
subsets are reported, the std telling whether a difference is meaningful.
"""
from __future__ import annotations

import math

import torch


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef0: float = 1.0) -> torch.Tensor:
    """``(x @ y.T / D + coef0) ** degree``.

    Args:
        x: ``(N, D)``; y: ``(M, D)``.
    Returns:
        ``(N, M)`` kernel matrix in the inputs' dtype.
    """
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int = 3) -> float:
    """Unbiased estimate of MMD^2 between the distributions of ``x`` and ``y`` with the polynomial kernel.

    Diagonal terms ``k(x_i, x_i)`` are excluded from the within-set means, which is what removes the bias.

    Args:
        x: ``(m, D)``, y: ``(n, D)`` features (converted to float64), ``m, n >= 2``.
    Returns:
        The estimate (can be slightly negative when the distributions match).
    """
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"fastgan: KID needs at least 2 features per side, got {m} and {n}")
    kxx = polynomial_kernel(x, x, degree)
    kyy = polynomial_kernel(y, y, degree)
    kxy = polynomial_kernel(x, y, degree)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0, degree: int = 3) -> tuple[float, float]:
    """KID mean and standard deviation over random subsets.

    Each of ``subsets`` rounds draws ``subset_size`` features without replacement from each side (a seeded generator,
    so results are reproducible) and computes :func:`mmd2_unbiased`. ``subset_size`` is capped at the smaller
    side's count, as torch-fidelity and clean-fid do.

    Args:
        real: ``(N, D)`` features; fake: ``(M, D)`` features.
        subsets: number of subsets.
        subset_size: features per subset and side.
        seed: generator seed.
        degree: polynomial kernel degree.
    Returns:
        ``(mean, std)`` of the subset estimates (std is the population std over subsets; 0 for one subset).
    """
    real = torch.as_tensor(real).to("cpu", torch.float64)
    fake = torch.as_tensor(fake).to("cpu", torch.float64)
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"fastgan: features must be (N, D) with equal D, got {tuple(real.shape)}, "
                         f"{tuple(fake.shape)}")
    size = min(int(subset_size), real.shape[0], fake.shape[0])
    g = torch.Generator().manual_seed(int(seed))
    values = []
    for _ in range(max(1, int(subsets))):
        ir = torch.randperm(real.shape[0], generator=g)[:size]
        jf = torch.randperm(fake.shape[0], generator=g)[:size]
        values.append(mmd2_unbiased(real[ir], fake[jf], degree))
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return mean, std
