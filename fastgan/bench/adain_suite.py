"""Benchmark cases for ``fastgan.ops.adain`` against the usual PyTorch formulation and ``torch.compile`` of it.

Eager is ``F.instance_norm(x) * scale + shift`` with ``scale, shift`` of shape ``(N, C, 1, 1)`` (per sample and
channel, as StarGAN v2 and StyleGAN-style generators produce them). The matrix and the H100 goals are the issue's:
forward fp32 8x64x256x256, 32x512x32x32, 8x512x16x16 and bf16 8x64x256x256; forward+backward fp32 8x64x256x256
and 8x512x16x16; contiguous and channels_last. On CPU the default preset keeps C x H x W at batch 2, fp32 only.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .suites import HOPPER, SuiteOptions, Target, register_suite, standard_cases, tensor_bytes

EPS = 1e-5
CPU_BATCH = 2
LAYOUTS = ("contiguous", "channels_last")
# (mode, shape, dtype) -> H100 goal in µs (eager / torch.compile as measured for the issue in the comment).
H100_GOALS = {
    ("fwd", (8, 64, 256, 256), torch.float32): 106.0,  # 422 / 142
    ("fwd", (32, 512, 32, 32), torch.float32): 53.0,  # 292 / 49
    ("fwd", (8, 512, 16, 16), torch.float32): 8.0,  # 49 / 29
    ("fwd", (8, 64, 256, 256), torch.bfloat16): 55.0,  # 328 / 76
    ("fwd+bwd", (8, 64, 256, 256), torch.float32): 300.0,  # 1019 / 747
    ("fwd+bwd", (8, 512, 16, 16), torch.float32): 40.0,  # 377 / 313
}
CPU_MIN_SPEEDUP = 1.5

NOTES = f"""
Eager is `F.instance_norm(x) * scale + shift`, scale and shift `(N, C, 1, 1)`. Bytes floor with E = N·C·H·W·itemsize
and P = N·C·itemsize: **fwd** = read x, write y, read scale and shift = 2E + 2P; **fwd+bwd** = the forward plus
read gy and x, write gx, read scale, write grad scale and grad shift = 5E + 5P. eps = {EPS}. CPU default preset:
batch {CPU_BATCH}, fp32 (`--full` for the issue's sizes and bf16).
"""


def _eager(x, scale, shift):
    return F.instance_norm(x, eps=EPS) * scale + shift


def _fastgan(impl: str):
    from .. import ops

    return functools.partial(ops.adain, eps=EPS, impl=impl)


def _make_inputs(shape, dtype, layout: str, mode: str, device: str):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def make(seed: int) -> tuple:
        g = torch.Generator(device=device).manual_seed(seed)
        x = torch.randn(shape, generator=g, device=device).to(dtype).contiguous(memory_format=fmt)
        per = (shape[0], shape[1], 1, 1)
        scale = (1.0 + 0.1 * torch.randn(per, generator=g, device=device)).to(dtype)
        shift = (0.1 * torch.randn(per, generator=g, device=device)).to(dtype)
        if mode == "fwd":
            return x, scale, shift
        gy = torch.randn(shape, generator=g, device=device).to(dtype).contiguous(memory_format=fmt)
        return x.requires_grad_(), scale.requires_grad_(), shift.requires_grad_(), gy

    return make


def bytes_floor(shape, dtype, mode: str) -> int:
    """Fewest bytes one call moves (see NOTES)."""
    e, p = tensor_bytes(shape, dtype), tensor_bytes(shape[:2], dtype)
    return 2 * e + 2 * p if mode == "fwd" else 5 * e + 5 * p


def matrix(device: str, preset: str) -> list[tuple]:
    """``(mode, shape, dtype, layout)`` for a device and preset."""
    cpu_small = device == "cpu" and preset != "full"
    combos = [(mode, shape, dtype) for (mode, shape, dtype) in H100_GOALS]
    if preset == "quick" and device == "cpu":  # on CUDA quick keeps every issue goal
        combos = [c for c in combos if c[2] == torch.float32][:1] + [c for c in combos if c[0] == "fwd+bwd"][:1]
    if cpu_small:
        combos = [(m, (CPU_BATCH,) + s[1:], d) for (m, s, d) in combos if d == torch.float32]
    layouts = ("contiguous",) if preset == "quick" else LAYOUTS
    return [(m, s, d, lay) for (m, s, d) in combos for lay in layouts]


def _targets(shape, dtype, layout, mode, device) -> tuple[Target, ...]:
    if device == "cuda":
        us = H100_GOALS.get((mode, tuple(shape), dtype))
        if us is not None and layout == "contiguous":
            return (Target("max_us", us, "fastgan", HOPPER, "issue goal on the H100"),)
        return ()
    if mode == "fwd" and dtype == torch.float32:
        return (Target("min_speedup", CPU_MIN_SPEEDUP, "fastgan-cpp", "", "issue goal: C++ vs eager on 2 cores"),)
    return ()


@register_suite("adain", ops=("instance_norm_fwd", "instance_norm_bwd"), notes=NOTES)
def adain_cases(opts: SuiteOptions):
    """Yield the AdaIN cases for ``opts`` (device, preset, impls, compile baseline)."""
    return standard_cases(
        "adain", opts, matrix(opts.device, opts.preset), op="instance_norm_fwd", eager=_eager, fastgan=_fastgan,
        make_inputs=_make_inputs, bytes_floor=bytes_floor, bytes_detail=lambda m: "2E + 2P" if m == "fwd" else "5E + 5P",
        targets=_targets,
    )
