"""The fused diffusion step as torch.library ops: ``fastgan::diffusion_step`` (C++ CPU kernel, schema in
``csrc/fastgan.cpp``) and ``fastgan::diffusion_step_triton`` (the Triton kernel), with fake implementations; and
their in-kernel-noise twins ``fastgan::diffusion_step_philox`` / ``fastgan::diffusion_step_philox_triton``, which
take a one-element int64 ``seed`` tensor instead of ``noise`` (the noise: :mod:`fastgan.diffusion.philox`).

Sampling usually runs without gradients, but backpropagating through steps is a real use (reward fine-tuning
through a DDIM chain, optimising the initial noise), so every op is differentiable in x, the model outputs and the
given noise: its backward is the vector-Jacobian product of the plain-PyTorch step
(:func:`fastgan.diffusion.steps.fused_step_reference`), itself differentiable. The coefficients and the seed get
no gradient (the schedule is not learned here).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend
from ..ops._layout import canonical, empty_like_layout, is_channels_last, match_layout


NUM_COEF = 7  # coefficients per sample, (a_x, g, r, c_0, b_x, b_m, c_z): fastgan.diffusion.steps; kNumCoef in C++


def _check_coef(x: torch.Tensor, coef: torch.Tensor) -> None:
    """The compiled op's check: the Triton kernel indexes the table unchecked, so a wrong width is refused here."""
    n = x.shape[0] if x.dim() else 0
    if coef.dim() != 2 or coef.shape[1] != NUM_COEF or coef.shape[0] not in (n, 1):
        raise RuntimeError(f"fastgan::diffusion_step: coef must be (N, {NUM_COEF}) = ({n}, {NUM_COEF}) or "
                           f"(1, {NUM_COEF}), got {list(coef.shape)}")


# The launchers: the Triton custom ops' bodies, and on CUDA the kernels of the extension's ops diffusion_step and
# diffusion_step_philox (registered at import by _backend.route_cuda_to_triton: a call then skips the custom-op
# wrapper, which cost ~100 us of host time per step on the H200, more than the step's GPU time ~8 us).
def _launch_step(x, m, u, z, coef, guidance: float, clip: float) -> torch.Tensor:
    _check_coef(x, coef)
    # Flat memory in x's layout: contiguous or channels-last, the batch dimension outermost either way.
    x = canonical(x)
    m = match_layout(m, x)
    u = None if u is None else match_layout(u, x)
    z = None if z is None else match_layout(z, x)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    kernel = _backend.import_kernels("diffusion_step")
    return kernel.step(x, m, u, z, coef.to(acc).contiguous(), guidance, clip)


def _launch_step_philox(x, m, u, seed, coef, guidance: float, clip: float) -> torch.Tensor:
    _check_coef(x, coef)
    x = canonical(x)
    m = match_layout(m, x)
    u = None if u is None else match_layout(u, x)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    kernel = _backend.import_kernels("diffusion_step")
    # The seed stays a device tensor the kernel loads: no .item(), so nothing syncs and a CUDA graph replays it.
    return kernel.step(x, m, u, None, coef.to(acc).contiguous(), guidance, clip,
                       seed=seed.reshape(1).to(torch.int64), channels_last=is_channels_last(x))


LAUNCHERS = {"diffusion_step": _launch_step, "diffusion_step_philox": _launch_step_philox}


@torch.library.custom_op("fastgan::diffusion_step_triton", mutates_args=())
def _step_triton(x: torch.Tensor, m: torch.Tensor, u: Optional[torch.Tensor], z: Optional[torch.Tensor],
                 coef: torch.Tensor, guidance: float, clip: float) -> torch.Tensor:
    return _launch_step(x, m, u, z, coef, guidance, clip)


@torch.library.custom_op("fastgan::diffusion_step_philox_triton", mutates_args=())
def _step_philox_triton(x: torch.Tensor, m: torch.Tensor, u: Optional[torch.Tensor], seed: torch.Tensor,
                        coef: torch.Tensor, guidance: float, clip: float) -> torch.Tensor:
    return _launch_step_philox(x, m, u, seed, coef, guidance, clip)


def _fake_step(x, m, u, z, coef, guidance, clip):
    return empty_like_layout(canonical(x))


_step_triton.register_fake(_fake_step)
_step_philox_triton.register_fake(_fake_step)


def triton_step(x, m, u, z, coef, guidance: float, clip: float) -> torch.Tensor:
    if _ROUTED[0] and x.is_cuda:  # the extension's op with the launcher as its CUDA kernel
        return torch.ops.fastgan.diffusion_step(x, m, u, z, coef, guidance, clip)
    return _step_triton(x, m, u, z, coef, guidance, clip)


def triton_step_philox(x, m, u, seed, coef, guidance: float, clip: float) -> torch.Tensor:
    if _ROUTED[0] and x.is_cuda:
        return torch.ops.fastgan.diffusion_step_philox(x, m, u, seed, coef, guidance, clip)
    return _step_philox_triton(x, m, u, seed, coef, guidance, clip)


# -------------------------------------------------------------------------------------------------- autograd
def _setup(ctx, inputs, output):
    x, m, u, noise_or_seed, coef, ctx.guidance, ctx.clip = inputs
    # The Philox twins take a seed: their noise is a constant of the inputs, so the backward leaves it out.
    z = noise_or_seed if noise_or_seed is not None and noise_or_seed.is_floating_point() else None
    ctx.has_u, ctx.has_z = u is not None, z is not None
    ctx.save_for_backward(x, m, u, z, coef)


def _backward(ctx, grad):
    from .steps import fused_step_reference  # steps imports this module

    x, m, u, z, coef = ctx.saved_tensors
    present = [t for t in (x, m, u, z) if t is not None]

    def step(*ts):
        it = iter(ts)
        xs, ms = next(it), next(it)
        us = next(it) if ctx.has_u else None
        zs = next(it) if ctx.has_z else None
        return fused_step_reference(xs, ms, us, zs, coef, ctx.guidance, ctx.clip)

    _, vjp = torch.func.vjp(step, *present)
    grads = iter(vjp(grad))
    gx, gm = next(grads), next(grads)
    gu = next(grads) if ctx.has_u else None
    gz = next(grads) if ctx.has_z else None
    return gx, gm, gu, gz, None, None, None


def _attach_autograd(name: str) -> None:
    torch.library.register_autograd(name, _backward, setup_context=_setup)


_attach_autograd("fastgan::diffusion_step_triton")
_attach_autograd("fastgan::diffusion_step_philox_triton")


# Looked up once at import (plain containers, so torch.compile reads them without tracing the dispatcher query).
_HAS_PHILOX: dict[str, bool] = {}
_ROUTED = [False]  # whether CUDA calls of the Triton impl take the extension's ops (decided at import)


def register_compiled() -> None:
    """Attach the fake implementations to the extension's ops (called at import when the ops exist), and route
    the Triton impl's CUDA calls through them (:func:`fastgan._backend.route_cuda_to_triton`)."""
    for name in ("diffusion_step", "diffusion_step_philox"):
        if _backend.has_kernel(name, "CPU") or _backend.has_kernel(name, "CUDA"):
            torch.library.register_fake(f"fastgan::{name}")(_fake_step)
            _attach_autograd(f"fastgan::{name}")
    _HAS_PHILOX.update({key: _backend.has_kernel("diffusion_step_philox", key) for key in ("CPU", "CUDA")})
    _ROUTED[0] = _backend.route_cuda_to_triton(LAUNCHERS)


def has_compiled_philox(device: torch.device) -> bool:
    """Whether the extension has the in-kernel-noise op for ``device`` (an extension built before it lacks it)."""
    return _HAS_PHILOX.get("CUDA" if device.type == "cuda" else "CPU", False)


def compiled_step(x, m, u, z, coef, guidance: float, clip: float) -> torch.Tensor:
    # An extension built before the 7-coefficient table is refused at load (_backend.EXTENSION_ABI), not here.
    return torch.ops.fastgan.diffusion_step(x, m, u, z, coef, guidance, clip)


def compiled_step_philox(x, m, u, seed, coef, guidance: float, clip: float) -> torch.Tensor:
    return torch.ops.fastgan.diffusion_step_philox(x, m, u, seed, coef, guidance, clip)


register_compiled()
