"""Spatially-adaptive normalisation (SPADE): ``fastgan.ops.spatial_adaptive_norm``.

``y = IN(x) * (1 + gamma) + beta`` with gamma and beta full ``(N, C, *spatial)`` maps (or broadcastable to x).

Status: on the C++ (CPU) and Triton backends, for contiguous x with x-shaped contiguous (or per-channel) maps,
one fused pass of the group-norm kernel family (one group per channel, the maps applied inside the kernel:
``u = z + z * gamma + beta``), forward and backward; the double backward is one fused op on C++
(``group_norm_dbwd_maps``) and composite on Triton (autograd of the backward's formula in plain torch ops).
Otherwise — channels_last or strided x or maps (which the
group-norm kernels would copy to contiguous), broadcast spatial maps, and the CUDA C++ backend (``impl="cuda"``,
the automatic choice on CUDA where it is built), which has no fused SPADE kernel yet — the normalisation runs on
the instance-norm kernels (native channels-last, fused double backward) and the modulation is one ``addcmul``.
"""
from __future__ import annotations

import torch

from .. import _backend
from ._family import check_eps
from .group_norm import check_map, group_norm, is_per_channel
from .instance_norm import check_norm_input, instance_norm
from .instance_norm_ref import normalized_reference

__all__ = ["spatial_adaptive_norm", "spatial_adaptive_norm_reference"]


def spatial_adaptive_norm_reference(x, gamma, beta=None, eps: float = 1e-5) -> torch.Tensor:
    """SPADE written out in plain PyTorch (``impl="ref"``); computed in float64 for float32/float64 inputs and
    float32 for float16/bfloat16, returned in x's dtype."""
    xhat = normalized_reference(x, eps)
    acc = xhat.dtype
    y = xhat * (1 + gamma.to(acc)) if gamma is not None else xhat
    if beta is not None:
        y = y + beta.to(acc)
    return y.to(x.dtype)


def _fused_pays(x: torch.Tensor, gamma, beta) -> bool:
    """Whether the fused group-norm pass beats instance norm + addcmul: it reads contiguous x and x-shaped maps in
    place, but copies anything else to contiguous first (channels_last SPADE on 2 CPU threads was 4x slower fused
    than through the native channels-last instance-norm kernel); maps without spatial extent fold for free."""
    if not x.is_contiguous():
        return False
    return all(is_per_channel(m, x) or (m.shape == x.shape and m.is_contiguous()) for m in (gamma, beta))


def spatial_adaptive_norm(x, gamma, beta=None, eps: float = 1e-5, *, impl: str | None = None) -> torch.Tensor:
    """SPADE modulation of an instance-normalised x: ``IN(x) * (1 + gamma) + beta``.

    Differentiable to any order w.r.t. x, gamma and beta (first order on fused kernels; see the module's Status),
    as a discriminator or generator under a gradient penalty needs.

    Args:
        x: ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; float16, bfloat16, float32 or float64;
            contiguous or channels_last.
        gamma: per-element scale offset, broadcastable to x (``(N, C, H, W)`` from SPADE's conv, or e.g.
            ``(N, C, 1, 1)``); None means 0 (plain instance norm).
        beta: per-element shift, broadcastable to x; None means 0.
        eps: added to the variance.
        impl: ``"ref"``, ``"cpp"``, ``"cuda"`` or ``"triton"`` for the normalisation; None picks by device.

    Returns:
        Tensor of x's shape and dtype; the memory format follows x (on the instance-norm path, with gamma/beta in
        another format than x, PyTorch's elementwise rules decide).
    """
    check_norm_input(x)
    check_map(gamma, "gamma", x)
    check_map(beta, "beta", x)
    eps = check_eps(eps)
    which = _backend.select("instance_norm_fwd", x.device, impl)
    if which == "ref":
        return spatial_adaptive_norm_reference(x, gamma, beta, eps)
    if which != "cuda" and _fused_pays(x, gamma, beta):
        return group_norm(x, x.shape[1], eps=eps, gamma=gamma, beta=beta, impl=which)
    xhat = instance_norm(x, None, None, eps, impl=which)
    # xhat + xhat * gamma (+ beta): forming 1 + gamma first would round it to bf16/fp16 before the product.
    base = xhat if beta is None else xhat + beta.to(x.dtype)
    return base if gamma is None else torch.addcmul(base, xhat, gamma.to(x.dtype))
