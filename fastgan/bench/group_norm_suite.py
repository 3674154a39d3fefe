"""Benchmark cases for ``fastgan.ops.group_norm`` with ``act="silu"`` (a diffusion UNet's GroupNorm(32) + SiLU)
against eager ``F.silu(F.group_norm(...))`` and ``torch.compile`` of it.

Shapes are UNet-like: 64x128x32x32, 64x256x16x16, 8x512x64x64, all with 32 groups; fp32 and bf16; contiguous and
channels_last; forward, forward+backward and a gradient penalty through the layer (its double backward). On CUDA the default preset is that whole matrix (the CUDA path is
Triton: there is no CUDA C++ group-norm kernel). On CPU (the reference machine has 2 cores) the default keeps each
C x H x W but uses batch 2 and fp32 only; ``--full`` runs the whole matrix on CPU too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .suites import SuiteOptions, register_suite, standard_cases, tensor_bytes

EPS = 1e-5
GROUPS = 32
SHAPES = ((64, 128, 32, 32), (64, 256, 16, 16), (8, 512, 64, 64))
DTYPES = (torch.float32, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last")
CPU_BATCH = 2  # CPU default preset: the C x H x W above at this batch size

NOTES = f"""
GroupNorm({GROUPS}) + SiLU. Bytes floor, with E = N·C·H·W·itemsize and P = C·itemsize (weight and bias have x's
dtype): **fwd** = read x + write y + read weight, bias = 2E + 2P; **fwd+bwd** = the forward's 2E + 2P plus the
backward's read gy + read x + write gx (3E) + read weight + write grad weight, grad bias (3P) = 5E + 5P. Per-group
statistics saved between forward and backward are not counted. fwd+bwd is timed as one forward plus
`torch.autograd.grad(y, (x, weight, bias), gy)`. eps = {EPS}. fastgan's C++ kernels read channels_last input in
place; its Triton kernels copy it to contiguous (and the output back), moving 2E more than the floor. On CPU the default preset uses
batch {CPU_BATCH} with the listed C×H×W, fp32 only (`--full` for the listed batches and bf16).
**penalty** (the forward, then `torch.autograd.grad` of ||d<y, gy>/dx||^2 w.r.t. x, weight and bias, as a WGAN-GP
or R1 step through the layer does) = the forward's and backward's 5E + 5P plus the double backward's read x, gy and
the gradient of gx, write grad x (4E) and write grad weight, grad bias (2P) = 9E + 7P; the penalty's own squared
sum is not counted. CPU default preset: contiguous fp32 only. No compile column: torch.compile refuses double
backward.
"""
FWD_DETAIL = "2E + 2P: read x, write y, read weight and bias"
FWD_BWD_DETAIL = "5E + 5P: forward, then read gy and x, write gx, read weight, write grad weight and grad bias"
PENALTY_DETAIL = "9E + 7P: forward and backward, then read x, gy and grad gx, write grad x, grad weight and grad bias"
DETAILS = {"fwd": FWD_DETAIL, "fwd+bwd": FWD_BWD_DETAIL, "penalty": PENALTY_DETAIL}


def _eager(x, w, b):
    return F.silu(F.group_norm(x, GROUPS, w, b, EPS))


def _fastgan(impl: str):
    from .. import ops

    def run(x, w, b):
        return ops.group_norm(x, GROUPS, w, b, EPS, act="silu", impl=impl)

    return run


def _make_inputs(shape, dtype, layout: str, mode: str, device: str):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def make(seed: int) -> tuple:
        g = torch.Generator(device=device).manual_seed(seed)
        c = shape[1]
        x = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype).contiguous(memory_format=fmt)
        w = (1.0 + 0.1 * torch.randn(c, generator=g, device=device)).to(dtype)
        b = (0.1 * torch.randn(c, generator=g, device=device)).to(dtype)
        if mode == "fwd":
            return x, w, b  # fwd+bwd and penalty: gradients of x, weight and bias against gy
        gy = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)
        return x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), gy.contiguous(memory_format=fmt)

    return make


def bytes_floor(shape, dtype, mode: str) -> int:
    """The fewest bytes one call must move (see :data:`NOTES`): ``2E + 2P`` (fwd), ``5E + 5P`` (fwd+bwd) or
    ``9E + 7P`` (penalty)."""
    e = tensor_bytes(shape, dtype)
    p = tensor_bytes(shape[1:2], dtype)
    return {"fwd": 2 * e + 2 * p, "fwd+bwd": 5 * e + 5 * p, "penalty": 9 * e + 7 * p}[mode]


def _targets(shape, dtype, layout: str, mode: str, device: str) -> tuple:
    return ()  # no goals set by the issue yet


def matrix(device: str, preset: str) -> list[tuple]:
    """``(mode, shape, dtype, layout)`` combinations for a device and preset, forward cases first."""
    cpu_small = device == "cpu" and preset != "full"

    def sized(shape):
        return (CPU_BATCH,) + tuple(shape[1:]) if cpu_small else tuple(shape)

    if preset == "quick":
        return [("fwd", sized(SHAPES[0]), torch.float32, "contiguous"),
                ("fwd+bwd", sized(SHAPES[0]), torch.float32, "contiguous")]
    dtypes = (torch.float32,) if cpu_small else DTYPES
    penalty_layouts = ("contiguous",) if cpu_small else LAYOUTS
    return ([(mode, sized(shape), dtype, layout)
             for mode in ("fwd", "fwd+bwd") for dtype in dtypes for shape in SHAPES for layout in LAYOUTS]
            + [("penalty", sized(shape), dtype, layout)
               for dtype in dtypes for shape in SHAPES for layout in penalty_layouts])


@register_suite("group_norm", ops=("group_norm_fwd", "group_norm_bwd"), notes=NOTES)
def group_norm_cases(opts: SuiteOptions):
    """Yield the GroupNorm(32) + SiLU cases for ``opts``."""
    return standard_cases(
        "group_norm", opts, matrix(opts.device, opts.preset), op="group_norm_fwd", eager=_eager, fastgan=_fastgan,
        make_inputs=_make_inputs, bytes_floor=bytes_floor,
        bytes_detail=DETAILS.__getitem__, targets=_targets,
    )
