"""Benchmark cases for ``fastgan.ops.bias_act`` against the usual PyTorch formulation and ``torch.compile`` of it.

Eager is StyleGAN's default layer epilogue written the usual way, ``F.leaky_relu(x + b.view(1, C, 1, 1), 0.2) *
sqrt(2)`` (three passes over memory: add, activation, scale). Shapes: 8x512x32x32 and 8x64x256x256 (8M and 33M
elements), fp32 and bf16, forward and forward+backward (gradients of x and bias), contiguous and channels_last.
On CPU the default preset keeps C x H x W at batch 2, fp32 only.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .suites import SuiteOptions, Target, floor_share_target, register_suite, standard_cases, tensor_bytes

CPU_BATCH = 2
LAYOUTS = ("contiguous", "channels_last")
SHAPES = ((8, 512, 32, 32), (8, 64, 256, 256))
DTYPES = (torch.float32, torch.bfloat16)
MODES = ("fwd", "fwd+bwd")
CPU_MIN_SPEEDUP = 1.5
GAIN = math.sqrt(2.0)

NOTES = f"""
Eager is `F.leaky_relu(x + b.view(1, C, 1, 1), 0.2) * sqrt(2)` (StyleGAN's lrelu epilogue: add, activation and gain as
three passes). Bytes floor with E = N·C·H·W·itemsize and P = C·itemsize: **fwd** = read x, write y, read the bias =
2E + P; **fwd+bwd** = the forward plus read gy and x, write gx, write grad bias = 5E + 2P. GPU goal (issue 3): >= 80%
of the copy-ceiling floor at >= 8M elements, checked as a time at the H100's 3.0 TB/s. CPU default preset: batch
{CPU_BATCH}, fp32 (`--full` for the full sizes and bf16).
"""


def _eager(x, b):
    return F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2) * GAIN


def _fastgan(impl: str):
    from .. import ops

    return functools.partial(ops.bias_act, act="lrelu", gain=GAIN, impl=impl)


def _make_inputs(shape, dtype, layout: str, mode: str, device: str):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def make(seed: int) -> tuple:
        g = torch.Generator(device=device).manual_seed(seed)
        x = torch.randn(shape, generator=g, device=device).to(dtype).contiguous(memory_format=fmt)
        b = (0.1 * torch.randn(shape[1], generator=g, device=device)).to(dtype)
        if mode == "fwd":
            return x, b
        gy = torch.randn(shape, generator=g, device=device).to(dtype).contiguous(memory_format=fmt)
        return x.requires_grad_(), b.requires_grad_(), gy

    return make


def bytes_floor(shape, dtype, mode: str) -> int:
    """Fewest bytes one call moves (see NOTES)."""
    e, p = tensor_bytes(shape, dtype), tensor_bytes(shape[1:2], dtype)
    return 2 * e + p if mode == "fwd" else 5 * e + 2 * p


def matrix(device: str, preset: str) -> list[tuple]:
    """``(mode, shape, dtype, layout)`` for a device and preset."""
    combos = [(m, s, d) for m in MODES for s in SHAPES for d in DTYPES]
    if preset == "quick":  # on CUDA also the 33.5M-element shape, where the 80%-of-floor goal applies
        quick = SHAPES[:1] if device == "cpu" else SHAPES[:2]
        combos = [(m, s, torch.float32) for s in quick for m in MODES]
    if device == "cpu" and preset != "full":
        combos = [(m, (CPU_BATCH,) + s[1:], d) for (m, s, d) in combos if d == torch.float32]
    layouts = ("contiguous",) if preset == "quick" else LAYOUTS
    return [(m, s, d, lay) for (m, s, d) in combos for lay in layouts]


def _targets(shape, dtype, layout, mode, device) -> tuple[Target, ...]:
    if device == "cpu" and mode == "fwd" and dtype == torch.float32:
        return (Target("min_speedup", CPU_MIN_SPEEDUP, "fastgan-cpp", "", "C++ vs eager (three passes) on CPU"),)
    if device == "cuda":  # issue goal: >= 80% of the floor at >= 8M elements
        return floor_share_target(bytes_floor(shape, dtype, mode), math.prod(shape), min_numel=8_000_000)
    return ()


@register_suite("bias_act", ops=("bias_act_fwd", "bias_act_bwd"), notes=NOTES)
def bias_act_cases(opts: SuiteOptions):
    """Yield the bias_act cases for ``opts`` (device, preset, impls, compile baseline)."""
    return standard_cases(
        "bias_act", opts, matrix(opts.device, opts.preset), op="bias_act_fwd", eager=_eager, fastgan=_fastgan,
        make_inputs=_make_inputs, bytes_floor=bytes_floor, bytes_detail=lambda m: "2E + P" if m == "fwd" else "5E + 2P",
        targets=_targets,
    )


SILU_NOTES = f"""
The diffusion UNet's epilogue: eager is `F.silu(x + b.view(1, C, 1, 1))` (two passes). Bytes floor as for lrelu:
**fwd** 2E + P, **fwd+bwd** 5E + 2P. The fused kernel's gradients compute in float64 (see `fastgan.ops.bias_act`:
automatic selection on CPU keeps PyTorch's math when autograd records the call, so `fastgan-cpp` fwd+bwd here is
the kernel pinned). CPU default preset: batch {CPU_BATCH}, fp32, contiguous (`--full` adds bf16 and channels_last).
"""


def _eager_silu(x, b):
    return F.silu(x + b.view(1, -1, 1, 1))


def _fastgan_silu(impl: str):
    from .. import ops

    return functools.partial(ops.bias_act, act="silu", impl=impl)


def _silu_matrix(device: str, preset: str) -> list[tuple]:
    combos = matrix(device, preset)
    if preset != "full":
        combos = [c for c in combos if c[3] == "contiguous"]
    return combos


def _silu_targets(shape, dtype, layout, mode, device) -> tuple[Target, ...]:
    if device == "cpu" and mode == "fwd" and dtype == torch.float32:
        return (Target("min_speedup", 1.0, "fastgan-cpp", "", "fused C++ forward not slower than eager on CPU"),)
    return ()


@register_suite("bias_act_silu", ops=("bias_act_fwd", "bias_act_bwd"), notes=SILU_NOTES)
def bias_act_silu_cases(opts: SuiteOptions):
    """Yield the bias + SiLU cases for ``opts``."""
    return standard_cases(
        "bias_act_silu", opts, _silu_matrix(opts.device, opts.preset), op="bias_act_fwd", eager=_eager_silu,
        fastgan=_fastgan_silu, make_inputs=_make_inputs, bytes_floor=bytes_floor,
        bytes_detail=lambda m: "2E + P" if m == "fwd" else "5E + 2P", targets=_silu_targets,
    )


# ------------------------------------------------------------------------ the other activations, forward only
OTHER_ACTS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu}


def _other_notes(act: str) -> str:
    return f"""
bias + {act} forward, measured so that every activation bias_act offers has a row (the suites above cover lrelu and
silu). eager is `{act}(x + b.view(1, C, 1, 1))` (two passes); bytes floor 2E + P. No goal: the CPU kernels' tanh
and gelu (a normal CDF: an exp, a division and two polynomials) cost more arithmetic per element than eager's, so
whether fusing the bias add wins depends on the CPU and the size. CPU default preset: batch {CPU_BATCH}, fp32,
contiguous.
"""


def _register_other(act: str) -> None:
    fn = OTHER_ACTS[act]

    def eager(x, b):
        return fn(x + b.view(1, -1, 1, 1))

    def fastgan(impl: str):
        from .. import ops

        return functools.partial(ops.bias_act, act=act, impl=impl)

    def combos(device: str, preset: str) -> list[tuple]:
        return [c for c in _silu_matrix(device, preset) if c[0] == "fwd"]

    @register_suite(f"bias_act_{act}", ops=("bias_act_fwd",), notes=_other_notes(act))
    def cases(opts: SuiteOptions):
        return standard_cases(
            f"bias_act_{act}", opts, combos(opts.device, opts.preset), op="bias_act_fwd", eager=eager,
            fastgan=fastgan, make_inputs=_make_inputs, bytes_floor=bytes_floor, bytes_detail=lambda m: "2E + P",
            targets=lambda *a: (),
        )


for _act in OTHER_ACTS:
    _register_other(_act)
