"""The fused diffusion step as torch.library ops: ``fastgan::diffusion_step`` (C++ CPU kernel, schema in
``csrc/fastgan.cpp``) and ``fastgan::diffusion_step_triton`` (the Triton kernel), with fake implementations; and
their in-kernel-noise twins ``fastgan::diffusion_step_philox`` / ``fastgan::diffusion_step_philox_triton``, which
take a one-element int64 ``seed`` tensor instead of ``noise`` (the noise: :mod:`fastgan.diffusion.philox`).

Sampling runs without gradients, so the op has no autograd formula: calling it on tensors that require grad
raises (use the reference, ``impl="ref"``, to differentiate through a step).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend
from ..ops._layout import canonical, empty_like_layout, is_channels_last, match_layout


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


@torch.library.custom_op("fastgan::diffusion_step_philox_triton", mutates_args=())
def _step_philox_triton(x: torch.Tensor, m: torch.Tensor, u: Optional[torch.Tensor], seed: torch.Tensor,
                        coef: torch.Tensor, guidance: float, clip: float) -> torch.Tensor:
    x = canonical(x)
    m = match_layout(m, x)
    u = None if u is None else match_layout(u, x)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    kernel = _backend.import_kernels("diffusion_step")
    # The seed stays a device tensor the kernel loads: no .item(), so nothing syncs and a CUDA graph replays it.
    return kernel.step(x, m, u, None, coef.to(acc).contiguous(), guidance, clip,
                       seed=seed.reshape(1).to(torch.int64), channels_last=is_channels_last(x))


def _fake_step(x, m, u, z, coef, guidance, clip):
    return empty_like_layout(canonical(x))


_step_triton.register_fake(_fake_step)
_step_philox_triton.register_fake(_fake_step)


def triton_step(x, m, u, z, coef, guidance: float, clip: float) -> torch.Tensor:
    return _step_triton(x, m, u, z, coef, guidance, clip)


def triton_step_philox(x, m, u, seed, coef, guidance: float, clip: float) -> torch.Tensor:
    return _step_philox_triton(x, m, u, seed, coef, guidance, clip)


# Looked up once at import (a plain dict, so torch.compile reads it without tracing the dispatcher query).
_HAS_PHILOX: dict[str, bool] = {}


def register_compiled() -> None:
    """Attach the fake implementations to the extension's ops (called at import when the ops exist)."""
    for name in ("diffusion_step", "diffusion_step_philox"):
        if _backend.has_kernel(name, "CPU") or _backend.has_kernel(name, "CUDA"):
            torch.library.register_fake(f"fastgan::{name}")(_fake_step)
    _HAS_PHILOX.update({key: _backend.has_kernel("diffusion_step_philox", key) for key in ("CPU", "CUDA")})


def has_compiled_philox(device: torch.device) -> bool:
    """Whether the extension has the in-kernel-noise op for ``device`` (an extension built before it lacks it)."""
    return _HAS_PHILOX.get("CUDA" if device.type == "cuda" else "CPU", False)


def compiled_step(x, m, u, z, coef, guidance: float, clip: float) -> torch.Tensor:
    return torch.ops.fastgan.diffusion_step(x, m, u, z, coef, guidance, clip)


def compiled_step_philox(x, m, u, seed, coef, guidance: float, clip: float) -> torch.Tensor:
    return torch.ops.fastgan.diffusion_step_philox(x, m, u, seed, coef, guidance, clip)


register_compiled()
