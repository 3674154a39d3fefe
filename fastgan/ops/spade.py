"""Spatially-adaptive normalisation (SPADE): ``fastgan.ops.spatial_adaptive_norm``.

``y = IN(x) * (1 + gamma) + beta`` with gamma and beta full ``(N, C, *spatial)`` maps (or broadcastable to x).

Status: the normalisation runs on the fused instance-norm kernels (forward, backward and double backward of every
backend); the per-pixel modulation is one ``addcmul`` and one add on top, so a call makes one more pass over the
normalised tensor than a fully fused kernel would. The fused SPADE kernel (statistics, modulation and its
backward in the kernel family of instance norm) is still to be written; the API and the module will not change.
"""
from __future__ import annotations

import torch

from .. import _backend
from .instance_norm import FLOAT_DTYPES, check_norm_input, instance_norm
from .instance_norm_ref import plane_dims

__all__ = ["spatial_adaptive_norm", "spatial_adaptive_norm_reference"]


def _check_map(m, name: str, x: torch.Tensor) -> None:
    if m is None:
        return
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"fastgan: {name} must be a torch.Tensor or None, got {type(m).__name__}")
    ok = m.dim() <= x.dim()
    if ok:
        try:
            ok = torch.broadcast_shapes(m.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"fastgan: {name} must be broadcastable to x's shape {tuple(x.shape)} (e.g. (N, C, H, W), "
            f"(N, C, 1, 1) or (1, C, H, W)), got {tuple(m.shape)}"
        )
    if m.device != x.device:
        raise ValueError(f"fastgan: {name} is on {m.device} but x is on {x.device}; move both to one device")
    if m.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastgan: {name} must be a floating tensor, got {m.dtype}")


def spatial_adaptive_norm_reference(x, gamma, beta=None, eps: float = 1e-5) -> torch.Tensor:
    """SPADE written out in plain PyTorch (``impl="ref"``); computed in float64 for float32/float64 inputs and
    float32 for float16/bfloat16, returned in x's dtype."""
    acc = torch.float64 if x.dtype in (torch.float32, torch.float64) else torch.float32
    xf = x.to(acc)
    dims = plane_dims(x)
    mean = xf.mean(dim=dims, keepdim=True)
    xhat = (xf - mean) * torch.rsqrt((xf - mean).square().mean(dim=dims, keepdim=True) + eps)
    y = xhat * (1 + gamma.to(acc)) if gamma is not None else xhat
    if beta is not None:
        y = y + beta.to(acc)
    return y.to(x.dtype)


def spatial_adaptive_norm(x, gamma, beta=None, eps: float = 1e-5, *, impl: str | None = None) -> torch.Tensor:
    """SPADE modulation of an instance-normalised x: ``IN(x) * (1 + gamma) + beta``.

    Differentiable to any order w.r.t. x, gamma and beta (the normalisation's first and second order on fused
    kernels), as a discriminator or generator under a gradient penalty needs.

    Args:
        x: ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; float16, bfloat16, float32 or float64;
            contiguous or channels_last.
        gamma: per-element scale offset, broadcastable to x (``(N, C, H, W)`` from SPADE's conv, or e.g.
            ``(N, C, 1, 1)``); None means 0 (plain instance norm).
        beta: per-element shift, broadcastable to x; None means 0.
        eps: added to the variance.
        impl: ``"ref"``, ``"cpp"``, ``"cuda"`` or ``"triton"`` for the normalisation; None picks by device.

    Returns:
        Tensor of x's shape and dtype; the memory format follows x (with gamma/beta in another format, PyTorch's
        elementwise rules decide).
    """
    check_norm_input(x)
    _check_map(gamma, "gamma", x)
    _check_map(beta, "beta", x)
    eps = float(eps)
    if not eps >= 0.0:
        raise ValueError(f"fastgan: eps must be >= 0, got {eps}")
    which = _backend.select("instance_norm_fwd", x.device, impl)
    if which == "ref":
        return spatial_adaptive_norm_reference(x, gamma, beta, eps)
    xhat = instance_norm(x, None, None, eps, impl=which)
    # xhat + xhat * gamma (+ beta): forming 1 + gamma first would round it to bf16/fp16 before the product.
    base = xhat if beta is None else xhat + beta.to(x.dtype)
    return base if gamma is None else torch.addcmul(base, xhat, gamma.to(x.dtype))
