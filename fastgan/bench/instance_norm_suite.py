"""Benchmark cases for ``fastgan.ops.instance_norm`` against eager ``F.instance_norm`` and ``torch.compile``.

The matrix (from the issue): shapes 8x64x256x256, 8x256x64x64, 32x512x32x32, 8x512x16x16; fp32 and bf16;
contiguous and channels_last; forward and forward+backward. Weight and bias are affine ``(C,)`` in the input's
dtype. On CUDA the default preset is that whole matrix. On CPU (the reference machine has 2 cores) the default
keeps each C x H x W but uses batch 2 and fp32 only, so a run finishes in a few minutes; ``--full`` runs the
issue's matrix on CPU too.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .suites import HOPPER, SuiteOptions, Target, register_suite, standard_cases, tensor_bytes

EPS = 1e-5
SHAPES = ((8, 64, 256, 256), (8, 256, 64, 64), (32, 512, 32, 32), (8, 512, 16, 16))
DTYPES = (torch.float32, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last")
CPU_BATCH = 2  # CPU default preset: the C x H x W at this batch size

# The goals. H100 times are µs per call (eager / torch.compile measured at 422/142, 49/29, 1019/747).
H100_TARGETS = {
    ("fwd", (8, 64, 256, 256)): 106.0,
    ("fwd", (8, 512, 16, 16)): 8.0,
    ("fwd+bwd", (8, 64, 256, 256)): 300.0,
}
CPU_MIN_SPEEDUP = 1.5  # C++ forward vs F.instance_norm, in one paired run

NOTES = f"""
Bytes floor, with E = N·C·H·W·itemsize and P = C·itemsize (weight and bias have x's dtype):
**fwd** = read x + write y + read weight, bias = 2E + 2P;
**fwd+bwd** = the forward's 2E + 2P plus the backward's read gy + read x + write gx (3E) + read weight + write
grad weight, grad bias (3P) = 5E + 5P. Per-plane statistics saved between forward and backward (2·N·C floats
each way) are not counted. fwd+bwd is timed as one forward plus `torch.autograd.grad(y, (x, weight, bias), gy)`.
eps = {EPS}. On CPU the default preset uses batch {CPU_BATCH} with the issue's C×H×W, fp32 only (`--full` for the
issue's batches and bf16).
"""
FWD_DETAIL = "2E + 2P: read x, write y, read weight and bias"
FWD_BWD_DETAIL = "5E + 5P: forward, then read gy and x, write gx, read weight, write grad weight and grad bias"


def _eager(x, w, b):
    return F.instance_norm(x, weight=w, bias=b, eps=EPS)


def _fastgan(impl: str):
    from .. import ops

    return functools.partial(ops.instance_norm, eps=EPS, impl=impl)


def _make_inputs(shape, dtype, layout: str, mode: str, device: str):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def make(seed: int) -> tuple:
        # Generate on the target device: building 134 MB inputs on the CPU and copying them over is slow.
        g = torch.Generator(device=device).manual_seed(seed)
        c = shape[1]
        x = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        x = x.to(dtype).contiguous(memory_format=fmt)
        w = (1.0 + 0.1 * torch.randn(c, generator=g, device=device)).to(dtype)
        b = (0.1 * torch.randn(c, generator=g, device=device)).to(dtype)
        if mode == "fwd":
            return x, w, b
        gy = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        gy = gy.to(dtype).contiguous(memory_format=fmt)
        return x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), gy

    return make


def bytes_floor(shape, dtype, mode: str) -> int:
    """The fewest bytes one call must move; see :data:`NOTES` for what is counted.

    Args:
        shape: ``(N, C, H, W)``.
        dtype: dtype of x, y, gy, gx, weight and bias.
        mode: ``"fwd"`` or ``"fwd+bwd"``.

    Returns:
        Bytes read plus written.
    """
    e = tensor_bytes(shape, dtype)
    p = tensor_bytes(shape[1:2], dtype)
    return 2 * e + 2 * p if mode == "fwd" else 5 * e + 5 * p


def _targets(shape, dtype, layout: str, mode: str, device: str) -> tuple[Target, ...]:
    if device == "cuda":
        us = H100_TARGETS.get((mode, tuple(shape)))
        if us is not None and dtype == torch.float32 and layout == "contiguous":
            return (Target("max_us", us, "fastgan", HOPPER, "issue goal on the H100"),)
        return ()
    if mode == "fwd" and dtype == torch.float32:
        return (Target("min_speedup", CPU_MIN_SPEEDUP, "fastgan-cpp", "", "issue goal: C++ forward vs eager"),)
    return ()


def matrix(device: str, preset: str) -> list[tuple]:
    """``(mode, shape, dtype, layout)`` combinations for a device and preset.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        preset: ``"quick"``, ``"default"`` or ``"full"``.

    Returns:
        The combinations, forward cases first.
    """
    cpu_small = device == "cpu" and preset != "full"

    def sized(shape):
        return (CPU_BATCH,) + tuple(shape[1:]) if cpu_small else tuple(shape)

    if preset == "quick":
        # The three cases with H100 goals: one large plane, many tiny planes, and the large plane's backward.
        return [
            ("fwd", sized(SHAPES[0]), torch.float32, "contiguous"),
            ("fwd", sized(SHAPES[3]), torch.float32, "contiguous"),
            ("fwd+bwd", sized(SHAPES[0]), torch.float32, "contiguous"),
        ]
    dtypes = (torch.float32,) if cpu_small else DTYPES
    return [
        (mode, sized(shape), dtype, layout)
        for mode in ("fwd", "fwd+bwd")
        for dtype in dtypes
        for shape in SHAPES
        for layout in LAYOUTS
    ]


@register_suite("instance_norm", ops=("instance_norm_fwd", "instance_norm_bwd"), notes=NOTES)
def instance_norm_cases(opts: SuiteOptions):
    """Yield the instance-norm cases for ``opts``.

    Args:
        opts: device, preset, impl filter and whether to include the compile baseline.

    Returns:
        An iterator of :class:`~fastgan.bench.suites.Case`.
    """
    return standard_cases(
        "instance_norm", opts, matrix(opts.device, opts.preset), op="instance_norm_fwd", eager=_eager,
        fastgan=_fastgan, make_inputs=_make_inputs, bytes_floor=bytes_floor,
        bytes_detail=lambda m: FWD_DETAIL if m == "fwd" else FWD_BWD_DETAIL, targets=_targets,
    )
