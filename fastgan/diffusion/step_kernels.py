"""The fused diffusion step as torch.library ops: ``fastgan::diffusion_step`` (C++ CPU kernel, schema in
``csrc/fastgan.cpp``) and ``fastgan::diffusion_step_triton`` (the Triton kernel), with fake implementations.

Sampling runs without gradients, so the op has no autograd formula: calling it on tensors that require grad
raises (use the reference, ``impl="ref"``, to differentiate through a step).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend


def _dense_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in x's memory layout (x is contiguous or channels-last)."""
    if t.stride() == x.stride():
        return t
    if x.dim() in (4, 5) and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    ):
        return t.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return t.contiguous()


def _canonical(x: torch.Tensor) -> torch.Tensor:
    """x if the batch dimension is outermost and the memory dense (contiguous or channels-last), else a copy."""
    if x.is_contiguous():
        return x
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    if fmt is not None and x.is_contiguous(memory_format=fmt):
        return x
    return x.contiguous()


@torch.library.custom_op("fastgan::diffusion_step_triton", mutates_args=())
def _step_triton(x: torch.Tensor, m: torch.Tensor, u: Optional[torch.Tensor], z: Optional[torch.Tensor],
                 coef: torch.Tensor, guidance: float, clip: float) -> torch.Tensor:
    x = _canonical(x)
    m = _dense_like(m, x)
    u = None if u is None else _dense_like(u, x)
    z = None if z is None else _dense_like(z, x)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    kernel = _backend.import_kernels("diffusion_step")
    return kernel.step(x, m, u, z, coef.to(acc).contiguous(), guidance, clip)


@_step_triton.register_fake
def _(x, m, u, z, coef, guidance, clip):
    return torch.empty_like(_canonical(x))


def triton_step(x, m, u, z, coef, guidance: float, clip: float) -> torch.Tensor:
    return _step_triton(x, m, u, z, coef, guidance, clip)


def _fake_step(x, m, u, z, coef, guidance, clip):
    return torch.empty_like(_canonical(x))


def register_compiled() -> None:
    """Attach the fake implementation to the extension's op (called at import when the op exists)."""
    if _backend.has_kernel("diffusion_step", "CPU") or _backend.has_kernel("diffusion_step", "CUDA"):
        torch.library.register_fake("fastgan::diffusion_step")(_fake_step)


def compiled_step(x, m, u, z, coef, guidance: float, clip: float) -> torch.Tensor:
    return torch.ops.fastgan.diffusion_step(x, m, u, z, coef, guidance, clip)


register_compiled()
