"""The fused diffusion step as torch.library ops: ``fastgan::diffusion_step`` (C++ CPU kernel, schema in
``csrc/fastgan.cpp``) and ``fastgan::diffusion_step_triton`` (the Triton kernel), with fake implementations.

Sampling runs without gradients, so the op has no autograd formula: calling it on tensors that require grad
raises (use the reference, ``impl="ref"``, to differentiate through a step).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend
from ..ops._layout import canonical, empty_like_layout, match_layout


@torch.library.custom_op("fastgan::diffusion_step_triton", mutates_args=())
def _step_triton(x: torch.Tensor, m: torch.Tensor, u: Optional[torch.Tensor], z: Optional[torch.Tensor],
                 coef: torch.Tensor, guidance: float, clip: float) -> torch.Tensor:
    # Flat memory in x's layout: contiguous or channels-last, the batch dimension outermost either way.
    x = canonical(x)
    m = match_layout(m, x)
    u = None if u is None else match_layout(u, x)
    z = None if z is None else match_layout(z, x)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    kernel = _backend.import_kernels("diffusion_step")
    return kernel.step(x, m, u, z, coef.to(acc).contiguous(), guidance, clip)


def _fake_step(x, m, u, z, coef, guidance, clip):
    return empty_like_layout(canonical(x))


_step_triton.register_fake(_fake_step)


def triton_step(x, m, u, z, coef, guidance: float, clip: float) -> torch.Tensor:
    return _step_triton(x, m, u, z, coef, guidance, clip)


def register_compiled() -> None:
    """Attach the fake implementation to the extension's op (called at import when the op exists)."""
    if _backend.has_kernel("diffusion_step", "CPU") or _backend.has_kernel("diffusion_step", "CUDA"):
        torch.library.register_fake("fastgan::diffusion_step")(_fake_step)


def compiled_step(x, m, u, z, coef, guidance: float, clip: float) -> torch.Tensor:
    return torch.ops.fastgan.diffusion_step(x, m, u, z, coef, guidance, clip)


register_compiled()
