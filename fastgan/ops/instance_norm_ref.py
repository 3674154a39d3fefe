"""Plain-PyTorch reference for the instance-norm kernel family.

Every backend (CPU C++, Triton, CUDA C++) implements exactly the three kernel-level functions below, and the
tests hold each kernel to them. They work on one "plane" per (n, c): the ``L`` elements of ``x[n, c]``.

Notation for one plane (``r = rstd``, ``xhat = (x - mean) * r``, ``w = scale[n, c]``)::

    forward:   y     = w * xhat + shift[n, c]
    backward:  gscale = sum(gy * xhat),  gshift = sum(gy)
               gx     = w * r * P(gy),   P(z) = z - mean(z) - xhat * mean(z * xhat)

``P`` is symmetric, which is what makes the double backward cheap: the gradient of ``gx`` w.r.t. ``gy`` is the
same projection applied to the upstream gradient ``v`` (= grad of the loss w.r.t. ``gx``). With ``u_w, u_b`` the
upstream gradients of ``gscale, gshift`` and ``m_*`` plane means (``m_g = mean(gy)``, ``m_gx = mean(gy*xhat)``,
``m_v = mean(v)``, ``m_vx = mean(v*xhat)``, ``m_vg = mean(v*gy)``, ``c = m_vg - m_g*m_v - m_gx*m_vx``)::

    d/d gy:    ggy    = w * r * P(v) + u_w * xhat + u_b
    d/d x:     gx2    = -w * r^2 * (c * xhat + m_gx * P(v) + m_vx * P(gy)) + u_w * r * P(gy)
    d/d scale: gscale2 = L * r * c

The scale and shift are per (n, c), so instance norm (per-channel weight), AdaIN (per-sample style) and the
per-channel affine of the later norm ops all run on the same kernels. Statistics, scale and shift are held in the
accumulation dtype: float32, or float64 for float64 inputs.
"""
from __future__ import annotations

import torch

__all__ = [
    "acc_dtype",
    "plane_dims",
    "instance_norm_reference",
    "reference_fwd",
    "reference_bwd",
    "reference_dbwd",
]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated and stored in for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def plane_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial dims of an ``(N, C, *spatial)`` tensor: the dims one plane spans."""
    return tuple(range(2, x.dim()))


def _per_plane(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View an ``(N, C)`` tensor so it broadcasts over ``x``'s spatial dims."""
    return t.reshape(t.shape + (1,) * (x.dim() - 2))


def normalized_reference(x, eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` per (n, c) plane, the part the references of instance norm, AdaIN and SPADE
    share; in float64 for float32/float64 x (the ``impl="ref"`` fallback is as exact as possible) and float32 for
    float16/bfloat16. The caller modulates it in this dtype and casts to x's."""
    acc = torch.float64 if x.dtype in (torch.float32, torch.float64) else torch.float32
    xf = x.to(acc)
    dims = plane_dims(x)
    mean = xf.mean(dim=dims, keepdim=True)
    var = (xf - mean).square().mean(dim=dims, keepdim=True)
    return (xf - mean) * torch.rsqrt(var + eps)


def instance_norm_reference(x, weight=None, bias=None, eps: float = 1e-5):
    """``F.instance_norm`` with batch statistics, written out and differentiable by autograd (``impl="ref"``).

    Args:
        x: ``(N, C, *spatial)`` with 1 to 3 spatial dims.
        weight, bias: optional ``(C,)`` affine parameters.
        eps: added to the variance.

    Returns:
        ``(N, C, *spatial)`` in ``x``'s dtype; computed in float64 for float32/float64 inputs (this is the fallback
        users get without compiled kernels, so it is as exact as possible) and float32 for float16/bfloat16.
    """
    y = normalized_reference(x, eps)
    acc = y.dtype
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.to(acc).reshape(shape)
    if bias is not None:
        y = y + bias.to(acc).reshape(shape)
    return y.to(x.dtype)


def reference_fwd(x, scale, shift, eps: float):
    """Kernel-level forward. Returns ``(y, mean, rstd)``; ``mean``/``rstd`` are ``(N, C)`` in the acc dtype."""
    acc = acc_dtype(x.dtype)
    xf = x.to(acc)
    dims = plane_dims(x)
    mean = xf.mean(dim=dims)
    var = (xf - _per_plane(mean, x)).square().mean(dim=dims)
    rstd = torch.rsqrt(var + eps)
    xhat = (xf - _per_plane(mean, x)) * _per_plane(rstd, x)
    y = xhat * _per_plane(scale.to(acc), x) + _per_plane(shift.to(acc), x)
    return y.to(x.dtype), mean, rstd


def _xhat(x, mean, rstd):
    return (x.to(mean.dtype) - _per_plane(mean, x)) * _per_plane(rstd, x)


def _project(z, xhat, dims):
    """``P(z) = z - mean(z) - xhat * mean(z * xhat)`` per plane, plus the two means."""
    m_z = z.mean(dim=dims, keepdim=True)
    m_zx = (z * xhat).mean(dim=dims, keepdim=True)
    return z - m_z - xhat * m_zx, m_z, m_zx


def reference_bwd(gy, x, mean, rstd, scale):
    """Kernel-level backward. Returns ``(gx, gscale, gshift)``; the last two are ``(N, C)`` in the acc dtype."""
    dims = plane_dims(x)
    xhat = _xhat(x, mean, rstd)
    g = gy.to(mean.dtype)
    p_g, _, _ = _project(g, xhat, dims)
    gx = _per_plane(scale.to(mean.dtype) * rstd, x) * p_g
    return gx.to(x.dtype), (g * xhat).sum(dim=dims), g.sum(dim=dims)


def reference_dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale):
    """Kernel-level double backward: gradients of ``<ggx, gx> + <ggscale, gscale> + <ggshift, gshift>``.

    ``mean``/``rstd`` are treated as the functions of ``x`` they are, so ``gx2`` is the full gradient w.r.t. ``x``.

    Returns:
        ``(gx2, ggy, gscale2)``: like ``x``, like ``gy``, and ``(N, C)`` in the acc dtype.
    """
    acc = mean.dtype
    dims = plane_dims(x)
    length = 1
    for d in dims:
        length *= x.shape[d]
    xhat = _xhat(x, mean, rstd)
    g = gy.to(acc)
    v = ggx.to(acc)
    w = _per_plane(scale.to(acc), x)
    r = _per_plane(rstd, x)
    p_g, m_g, m_gx = _project(g, xhat, dims)
    p_v, m_v, m_vx = _project(v, xhat, dims)
    c = (v * g).mean(dim=dims, keepdim=True) - m_g * m_v - m_gx * m_vx
    u_w = _per_plane(ggscale.to(acc), x)
    u_b = _per_plane(ggshift.to(acc), x)
    ggy = w * r * p_v + u_w * xhat + u_b
    gx2 = -w * r * r * (c * xhat + m_gx * p_v + m_vx * p_g) + u_w * r * p_g
    gscale2 = (length * r * c).reshape(mean.shape)
    return gx2.to(x.dtype), ggy.to(gy.dtype), gscale2
