"""Adaptive instance normalisation: ``fastgan.ops.adain`` and ``fastgan.ops.adain_transfer``.

AdaIN is instance norm whose affine is chosen per sample: ``y = scale[n, c] * xhat + shift[n, c]``. The instance
norm kernels already take a per-(n, c) scale and shift (instance norm proper just repeats its ``(C,)`` weight over
the batch), so AdaIN runs on exactly the same fused forward, backward and double backward kernels of every backend
(CPU C++, Triton, CUDA C++) with the same dtypes, layouts and accuracy; only the checks and the shapes of the
affine differ. Gradients reach ``scale`` and ``shift`` per sample, and the backward is differentiable again.
"""
from __future__ import annotations

import torch

from .. import _backend
from ._family import check_device_and_dtype, check_eps, check_optional_tensor
from .instance_norm import check_norm_input, per_plane_affine
from .instance_norm_ref import acc_dtype, normalized_reference, plane_dims
from .norm_kernels import kernel_ops

__all__ = ["adain", "adain_transfer", "adain_reference"]


def _as_per_plane(p, name: str, x: torch.Tensor) -> torch.Tensor | None:
    """``p`` as an ``(N, C)`` view, accepting ``(N, C)``, ``(N, C, 1, ...)`` (StarGAN v2's ``view(N, C, 1, 1)``)
    and anything else that broadcasts to ``(N, C)`` such as ``(C,)`` or ``(1, C)``; a clear error otherwise."""
    check_optional_tensor(p, name)
    if p is None:
        return None
    n, c = x.shape[:2]
    q = p
    while q.dim() > 2 and q.shape[-1] == 1:  # trailing spatial singletons of a (N, C, 1, 1) map
        q = q.squeeze(-1)
    # `a == 1 or a == b`, not `a in (1, b)`: Dynamo evaluates tuple membership of symbolic sizes as False.
    if q.dim() > 2 or not all(a == 1 or a == b for a, b in zip(q.shape[::-1], (c, n))):
        raise ValueError(
            f"fastgan: {name} must have shape (N, C) = ({n}, {c}) (or (N, C, 1, ...), or broadcast to it, e.g. "
            f"({c},)) to match x of shape {tuple(x.shape)}, got {tuple(p.shape)}"
        )
    check_device_and_dtype(p, name, x)
    return q


def adain_reference(x, scale, shift=None, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN written out in plain PyTorch, differentiable by autograd (``impl="ref"``).

    Args:
        x: ``(N, C, *spatial)`` with 1 to 3 spatial dims.
        scale: ``(N, C)`` per-sample, per-channel scale (or None for 1).
        shift: ``(N, C)`` per-sample, per-channel shift (or None for 0).
        eps: added to the variance.

    Returns:
        ``(N, C, *spatial)`` in x's dtype, computed in float64 for float32/float64 inputs and float32 for
        float16/bfloat16.
    """
    y = normalized_reference(x, eps)
    acc = y.dtype
    view = x.shape[:2] + (1,) * (x.dim() - 2)
    if scale is not None:
        y = y * scale.to(acc).expand(x.shape[:2]).reshape(view)
    if shift is not None:
        y = y + shift.to(acc).expand(x.shape[:2]).reshape(view)
    return y.to(x.dtype)


def adain(x, scale, shift=None, eps: float = 1e-5, *, impl: str | None = None) -> torch.Tensor:
    """Adaptive instance norm: ``scale[n, c] * (x - mean_nc) / sqrt(var_nc + eps) + shift[n, c]``, fused.

    Statistics and normalisation run in one kernel (the instance-norm kernels, which take a per-(n, c) affine).
    For StarGAN v2's ``(1 + gamma) * IN(x) + beta`` pass ``scale = 1 + gamma``: an (N, C) addition, not a pass
    over x. Differentiable to any order w.r.t. x, scale and shift; first and second order on fused kernels.

    Args:
        x: ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; float16, bfloat16, float32 or float64;
            contiguous or channels_last (the output keeps the layout).
        scale: ``(N, C)`` (or ``(N, C, 1, 1)``, or anything broadcasting to ``(N, C)`` such as ``(C,)``);
            None means 1.
        shift: like ``scale``; None means 0.
        eps: added to the variance before the square root.
        impl: ``"ref"``, ``"cpp"``, ``"cuda"`` or ``"triton"`` to pin an implementation; None picks by device.

    Returns:
        Tensor of x's shape, dtype and memory format.
    """
    check_norm_input(x)
    scale = _as_per_plane(scale, "scale", x)
    shift = _as_per_plane(shift, "shift", x)
    eps = check_eps(eps)
    which = _backend.select("instance_norm_fwd", x.device, impl)
    if which == "ref":
        return adain_reference(x, scale, shift, eps)
    s, b = per_plane_affine(x, scale, shift)  # (N, C) in the acc dtype, broadcast in float64
    return kernel_ops(which).fwd(x, s, b, eps)[0]


def adain_transfer(content, style, eps: float = 1e-5, *, impl: str | None = None) -> torch.Tensor:
    """Huang & Belongie's AdaIN style transfer: normalise ``content`` per (n, c) and give it ``style``'s
    per-channel mean and standard deviation, ``std(style) * (content - mean_c) / std_c + mean(style)``.

    Both standard deviations are ``sqrt(biased var + eps)`` (the common PyTorch implementation of the paper uses
    the unbiased variance for the style: the two differ by a factor ``sqrt(L / (L - 1))``, 0.2% at 16x16).
    The style statistics come from one ``torch.var_mean`` reduction and are differentiable, so a style loss can
    backpropagate into ``style`` too.

    Args:
        content: ``(N, C, *spatial)`` features to restyle.
        style: ``(N, C, *spatial')`` or ``(1, C, *spatial')`` (one style for the batch); its spatial size may differ
            from content's.
        eps: added to both variances.
        impl: as in :func:`adain`.

    Returns:
        Tensor like ``content``.
    """
    check_norm_input(content, "content")
    check_norm_input(style, "style")
    if style.dim() != content.dim() or style.shape[1] != content.shape[1] or style.shape[0] not in (
        1,
        content.shape[0],
    ):
        raise ValueError(
            f"fastgan: style must be (N, C, ...) or (1, C, ...) with content's rank and C; content is "
            f"{tuple(content.shape)}, style is {tuple(style.shape)}"
        )
    var, mean = torch.var_mean(style.to(acc_dtype(style.dtype)), dim=plane_dims(style), correction=0)
    return adain(content, torch.sqrt(var + float(eps)), mean, eps, impl=impl)
