"""Memory layouts the kernels accept, shared by every backend and by the fake (meta) implementations.

Kernels read ``(N, C, *spatial)`` tensors in one of two dense layouts: contiguous (each (n, c) plane is one run of
memory) or channels-last (``(N, *spatial, C)`` in memory, as ``torch.channels_last`` / ``channels_last_3d``; for
3-D inputs, ``x.transpose(1, 2).contiguous().transpose(1, 2)``). Anything else is copied to contiguous first.
Outputs follow the input's layout, so channels_last models stay channels_last. The C++ side
(``csrc/layout.h``) applies the same rule, so fake and real outputs have the same strides.
"""
from __future__ import annotations

import torch


def _cl_perm(dim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, dim)) + (1,)


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is channels-last dense and not also plain contiguous."""
    return x.dim() >= 3 and not x.is_contiguous() and x.permute(_cl_perm(x.dim())).is_contiguous()


def canonical(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when a kernel can read it as it is, else a contiguous copy."""
    return x if x.is_contiguous() or is_channels_last(x) else x.contiguous()


def layout_strides(shape, channels_last: bool) -> tuple[int, ...]:
    """Dense strides of ``shape`` in the contiguous or channels-last layout."""
    dim = len(shape)
    order = _cl_perm(dim) if channels_last else tuple(range(dim))
    strides = [0] * dim
    step = 1
    for d in reversed(order):
        strides[d] = step
        step *= max(int(shape[d]), 1)
    return tuple(strides)


def empty_like_layout(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised tensor shaped like ``x`` in the layout the kernels give ``x``'s outputs."""
    return torch.empty_strided(
        x.shape, layout_strides(x.shape, is_channels_last(x)), dtype=dtype or x.dtype, device=x.device
    )


def match_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` (same shape as ``like``) in ``like``'s kernel layout; ``like`` must already be canonical."""
    if is_channels_last(like):
        perm = _cl_perm(t.dim())
        return t if t.permute(perm).is_contiguous() else t.permute(perm).contiguous().permute(_inverse(perm))
    return t.contiguous()


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)
