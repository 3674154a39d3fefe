"""Instance normalisation: ``fastgan.ops.instance_norm``."""
from __future__ import annotations

import torch

from .. import _backend
from ._family import FLOAT_DTYPES, check_device_and_dtype, check_eps, check_optional_tensor
from .instance_norm_ref import acc_dtype, instance_norm_reference, plane_dims
from .norm_kernels import compiled_wb, kernel_ops


def check_norm_input(x: torch.Tensor, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a non-empty floating ``(N, C, *spatial)`` tensor with 1-3 spatial dims."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fastgan: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4, 5):
        raise ValueError(
            f"fastgan: {name} must be 3-D, 4-D or 5-D (N, C, *spatial), got {x.dim()}-D of shape {tuple(x.shape)}"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastgan: {name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(
            f"fastgan: {name} is empty (shape {tuple(x.shape)}); normalization needs N, C and every spatial size >= 1"
        )


def _check_param(p, name: str, x: torch.Tensor) -> None:
    check_optional_tensor(p, name)
    if p is None:
        return
    if p.dim() != 1 or p.shape[0] != x.shape[1]:
        raise ValueError(
            f"fastgan: {name} must have shape ({x.shape[1]},) to match x's {x.shape[1]} channels, "
            f"got {tuple(p.shape)}"
        )
    check_device_and_dtype(p, name, x)


def per_plane_affine(x: torch.Tensor, weight, bias) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) scale and shift in the acc dtype from ``weight``/``bias`` of shape ``(C,)`` (instance norm) or
    anything else that broadcasts to ``(N, C)`` (AdaIN's per-sample affine); either may be None."""
    n, c = x.shape[:2]
    acc = acc_dtype(x.dtype)
    return _plane_param(weight, n, c, acc, x.device, 1.0), _plane_param(bias, n, c, acc, x.device, 0.0)


def _plane_param(p, n: int, c: int, acc: torch.dtype, device, fill: float) -> torch.Tensor:
    if p is None:
        return torch.full((n, c), fill, dtype=acc, device=device)
    if p.requires_grad and torch.is_grad_enabled():
        # Expanding in float64 makes autograd add the N per-plane gradients of weight/bias in float64: one rounding
        # at the end instead of one per sample (the (N, C) tensors are tiny).
        return p.to(torch.float64).expand(n, c).to(acc).contiguous()
    # The same values (p -> float64 is exact) in two ops instead of four: they were most of a small call's overhead.
    # Always a fresh tensor: a view of p (fp32, N = 1) would be saved for backward, and an in-place update of a frozen
    # parameter before backward would then fail where the float64 copy let it through.
    return torch.empty((n, c), dtype=acc, device=device).copy_(p.expand(n, c))


def _forward(x, weight, bias, eps, impl):
    """Validate, pick the implementation and run it. Returns ``(y, mean, rstd)``; stats are None for "ref"."""
    check_norm_input(x)
    _check_param(weight, "weight", x)
    _check_param(bias, "bias", x)
    eps = check_eps(eps)
    which = _backend.select("instance_norm_fwd", x.device, impl)
    if which == "ref":
        return instance_norm_reference(x, weight, bias, eps), None, None
    if which != "triton" and (wb := compiled_wb()) is not None:
        # The fold of weight/bias and its gradient in C++ (csrc/instance_norm_wb.cpp): same values, a fraction of
        # the host time of per_plane_affine's Python-dispatched ops and autograd nodes.
        return wb(x, weight, bias, eps)
    scale, shift = per_plane_affine(x, weight, bias)
    return kernel_ops(which).fwd(x, scale, shift, eps)


def instance_norm_stats(x, weight=None, bias=None, eps: float = 1e-5, *, impl: str | None = None):
    """:func:`instance_norm` that also returns the per-plane statistics (for running-stat updates).

    Returns:
        ``(y, mean, var)``: ``y`` as from :func:`instance_norm`; ``mean`` and biased ``var`` of shape ``(N, C)``
        in the acc dtype, detached.
    """
    y, mean, rstd = _forward(x, weight, bias, eps, impl)
    if mean is None:
        with torch.no_grad():
            var, mean = torch.var_mean(x.detach().to(acc_dtype(x.dtype)), dim=plane_dims(x), correction=0)
        return y, mean, var
    return y, mean.detach(), rstd.detach().pow(-2) - float(eps)


def instance_norm(x, weight=None, bias=None, eps: float = 1e-5, *, impl: str | None = None) -> torch.Tensor:
    """Instance normalisation with batch statistics; the same result as ``torch.nn.functional.instance_norm``.

    Each (n, c) plane is normalised by its own mean and biased variance, then scaled and shifted per channel.
    Statistics accumulate in float32 (float64 for float64 input) with a stable two-level variance, so inputs with a
    large mean offset keep their precision. Differentiable to any order; first and second order run on fused
    kernels.

    Args:
        x: ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; float16, bfloat16, float32 or float64;
            contiguous or channels_last (other strides are copied to contiguous first).
        weight: optional ``(C,)`` per-channel scale.
        bias: optional ``(C,)`` per-channel shift.
        eps: added to the variance before the square root.
        impl: ``"ref"``, ``"cpp"``, ``"cuda"`` or ``"triton"`` to pin an implementation; None chooses by device
            (see :func:`fastgan.use_impl`).

    Returns:
        Tensor of ``x``'s shape, dtype and memory format.
    """
    return _forward(x, weight, bias, eps, impl)[0]
