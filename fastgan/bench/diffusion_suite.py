"""Benchmark cases for one DDPM / DDIM sampling step (``fastgan.diffusion``) against an eager step and
``torch.compile`` of it.

Eager is the step as diffusers' schedulers compute it, one PyTorch op per term (predicted x0, posterior mean,
noise scale, sum), with the step's scalars as Python floats and the noise passed in, so every impl does the same
arithmetic on the same noise. fastgan computes per-sample coefficients on the device (a few tiny ops) and then
one fused element pass. Shapes and H100 goals are the issue's: DDPM 64x3x64x64 <= 6 µs, 4x3x512x512 <= 16 µs,
DDIM 64x3x64x64 <= 6 µs, fp32.
"""
from __future__ import annotations

import functools

import torch

from .suites import HOPPER, SuiteOptions, Target, register_suite, standard_cases, tensor_bytes

T_STEP = 500
H100_GOALS = {("ddpm", (64, 3, 64, 64)): 6.0, ("ddpm", (4, 3, 512, 512)): 16.0, ("ddim", (64, 3, 64, 64)): 6.0}

NOTES = """
One denoising step at t = 500 of a 1000-step linear schedule, eps prediction, fp32, noise passed in. Bytes floor
with E = numel·itemsize: **DDPM** = read x_t, model output and noise, write x_prev = 4E; **DDIM** (eta = 0, no
noise) = 3E. Eager is diffusers' formulation, one op per term; fastgan's impls: `cpp` the C++ one-pass step (CPU), `triton`
the one-kernel step (GPU), `ref` the same formula in plain PyTorch with one output buffer updated in place.
These cases pass the noise in (`noise=`) so that every impl computes the same numbers and the correctness check
applies; that is why DDPM's floor counts reading it. Without `noise=`, fastgan draws the noise inside the kernel
(Philox, seeded from the generator): that step's floor is 3E (no noise tensor written or read), against eager's
`torch.randn` + formula at 5E (write and read the noise); it is not timed here because the harness checks each impl
against eager's output, and the two draw different (equally distributed) noise.
"""


def _schedule():
    from ..diffusion import NoiseSchedule

    return NoiseSchedule.linear(1000)


@functools.lru_cache(maxsize=None)
def _scalars():
    s = _schedule()
    ab, abp = s.alphas_cumprod[T_STEP].item(), s.alphas_cumprod[T_STEP - 1].item()
    ab_ddim_prev = s.alphas_cumprod[T_STEP - 20].item()
    return ab, abp, ab_ddim_prev


def _eager_ddpm(x, eps, z):
    ab, abp, _ = _scalars()
    alpha, beta = ab / abp, 1 - ab / abp
    x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
    mean = (abp**0.5 * beta / (1 - ab)) * x0 + (alpha**0.5 * (1 - abp) / (1 - ab)) * x
    return mean + ((1 - abp) / (1 - ab) * beta) ** 0.5 * z


def _eager_ddim(x, eps):
    ab, _, abp = _scalars()
    x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
    return abp**0.5 * x0 + (1 - abp) ** 0.5 * eps


def _fastgan(kind: str):
    def make(impl: str):
        from .. import diffusion

        sched = _schedule()
        if kind == "ddpm":
            return lambda x, eps, z: diffusion.ddpm_step(x, eps, T_STEP, sched, noise=z, impl=impl)
        return lambda x, eps: diffusion.ddim_step(x, eps, T_STEP, T_STEP - 20, sched, impl=impl)

    return make


def _make_inputs(kind: str):
    def outer(shape, dtype, layout, mode, device):
        def make(seed: int) -> tuple:
            g = torch.Generator(device=device).manual_seed(seed)
            ts = [torch.randn(shape, generator=g, device=device).to(dtype) for _ in range(3 if kind == "ddpm" else 2)]
            return tuple(ts)

        return make

    return outer


def _cases(kind: str, opts: SuiteOptions):
    shapes = [s for (k, s) in H100_GOALS if k == kind]
    if opts.device == "cpu" and opts.preset != "full":
        shapes = [(min(s[0], 16),) + s[1:] for s in shapes]
    if opts.preset == "quick" and opts.device == "cpu":  # on CUDA quick keeps every issue goal
        shapes = shapes[:1]
    combos = [("fwd", s, torch.float32, "contiguous") for s in shapes]
    n_streams = 4 if kind == "ddpm" else 3

    def targets(shape, dtype, layout, mode, device):
        us = H100_GOALS.get((kind, tuple(shape)))
        if device == "cuda" and us is not None:
            return (Target("max_us", us, "fastgan", HOPPER, "issue goal on the H100"),)
        if device == "cpu":
            return (Target("min_speedup", 2.0, "fastgan-cpp", "", "issue goal: C++ step vs eager on 2 cores"),)
        return ()

    return standard_cases(
        f"{kind}_step", opts, combos, op="diffusion_step", eager=_eager_ddpm if kind == "ddpm" else _eager_ddim,
        fastgan=_fastgan(kind), make_inputs=_make_inputs(kind),
        bytes_floor=lambda shape, dtype, mode: n_streams * tensor_bytes(shape, dtype),
        bytes_detail=lambda mode: f"{n_streams}E", targets=targets,
    )


@register_suite("ddpm_step", ops=("diffusion_step",), notes=NOTES)
def ddpm_cases(opts: SuiteOptions):
    """Yield the DDPM-step cases (CPU default preset: batch capped at 16)."""
    return _cases("ddpm", opts)


@register_suite("ddim_step", ops=("diffusion_step",), notes=NOTES)
def ddim_cases(opts: SuiteOptions):
    """Yield the DDIM-step cases (eta = 0, t 500 -> 480)."""
    return _cases("ddim", opts)
