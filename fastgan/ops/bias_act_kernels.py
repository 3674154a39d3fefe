"""The bias-act kernel ops as torch.library ops, with fake implementations and autograd of every order.

Three kernel ops (math in :mod:`fastgan.ops.bias_act`; ``z = x + bias``, ``m`` the clamp's pass-through mask)::

    bias_act_fwd (x, bias, act, alpha, gain, clamp, dim)             -> y   = clamp(gain * f(z))
    bias_act_bwd (gy, x, bias, act, alpha, gain, clamp, dim)         -> gx  = gy * gain * f'(z) * m
    bias_act_dbwd(ggx, gy, x, bias, act, alpha, gain, clamp, dim)    -> gx2 = ggx * gy * gain * f''(z) * m

``grad_bias`` is ``gx`` summed over every dim but ``dim`` (in the accumulation dtype), done here with ``sum``.
Autograd: the backward of ``fwd`` is ``bwd``; the backward of ``bwd`` is ``bwd`` again (for ``gy``: ``gx`` is linear
in ``gy`` with the same factor) and ``dbwd`` (for ``x`` and ``bias``), so second order runs on the kernels too. The
backward of ``dbwd`` (third order and up) is autograd of :func:`fastgan.ops.bias_act.reference_dbwd`.

Two triples: ``fastgan::bias_act_*`` from the compiled extension (CPU C++; schemas in ``csrc/fastgan.cpp``) and
``fastgan::bias_act_*_triton`` defined here around ``fastgan.kernels.bias_act``. There is no CUDA C++ kernel: the op
is elementwise and memory-bound, and the Triton kernel already moves the fewest bytes. On CUDA tensors the Triton
impl takes the extension's ops when it is loaded, with the Triton launchers as their CUDA kernels (autograd in
C++, see :class:`fastgan.ops._family.KernelFamily`); the ``_triton`` custom ops serve the interpreter on CPU and
builds without the extension.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend
from ._family import KernelFamily, register_formulas

OP_NAMES = ("bias_act_fwd", "bias_act_bwd", "bias_act_dbwd")
# Activation name -> the integer code the kernels take.
ACT_CODES = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4, "silu": 5, "gelu": 6}
PIECEWISE_LINEAR = ACT_CODES["lrelu"]  # codes up to this one have f'' = 0


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` when its memory is dense in some dimension order (the kernels read it as it is), else a contiguous
    copy. Outputs are ``torch.empty_like`` of this, so they keep x's layout (the C++ side applies the same rule)."""
    return x if is_dense(x) else x.contiguous()


def is_dense(x: torch.Tensor) -> bool:
    """ATen's ``is_non_overlapping_and_dense``: the dims of size > 1, sorted by stride, step through memory with no
    gap or overlap (so the memory is a permutation of a contiguous tensor)."""
    step = 1
    for size, stride in sorted(((s, st) for s, st in zip(x.shape, x.stride()) if s > 1), key=lambda t: t[1]):
        if stride != step:
            return False
        step *= size
    return True


def reduce_to_bias(gx: torch.Tensor, dim: int, bias: torch.Tensor) -> torch.Tensor:
    """``gx`` summed over every dim but ``dim`` (in the acc dtype), in ``bias``'s dtype."""
    dims = [d for d in range(gx.dim()) if d != dim % gx.dim()]
    g = gx.sum(dim=dims, dtype=acc_dtype(gx.dtype)) if dims else gx.to(acc_dtype(gx.dtype))
    return g.to(bias.dtype)


# ----------------------------------------------------------------------------------------------- fake impls
def fake_fwd(x, bias, act, alpha, gain, clamp, dim):
    return torch.empty_like(dense(x))


def fake_bwd(gy, x, bias, act, alpha, gain, clamp, dim):
    return torch.empty_like(dense(x))


def fake_dbwd(ggx, gy, x, bias, act, alpha, gain, clamp, dim):
    return torch.empty_like(dense(x))


# ------------------------------------------------------------------------------------------- Triton ops
def _triton_module():
    return _backend.import_kernels("bias_act")  # imports triton; only reached when Triton was selected


# The launchers: the Triton ops' bodies, and the CUDA kernels of the extension's ops (KernelFamily's routing).
def _launch_fwd(x, bias, act: int, alpha: float, gain: float, clamp: float, dim: int) -> torch.Tensor:
    # alpha and gain are checked finite in the kernels module (the check traced code defers), once per value
    return _triton_module().forward(x, bias, act, alpha, gain, clamp, dim)


def _launch_bwd(gy, x, bias, act: int, alpha: float, gain: float, clamp: float, dim: int) -> torch.Tensor:
    return _triton_module().backward(gy, x, bias, act, alpha, gain, clamp, dim)


def _launch_dbwd(ggx, gy, x, bias, act: int, alpha: float, gain: float, clamp: float, dim: int) -> torch.Tensor:
    return _triton_module().double_backward(ggx, gy, x, bias, act, alpha, gain, clamp, dim)


@torch.library.custom_op("fastgan::bias_act_fwd_triton", mutates_args=())
def _fwd_triton(x: torch.Tensor, bias: Optional[torch.Tensor], act: int, alpha: float, gain: float, clamp: float,
                dim: int) -> torch.Tensor:
    return _launch_fwd(x, bias, act, alpha, gain, clamp, dim)


@torch.library.custom_op("fastgan::bias_act_bwd_triton", mutates_args=())
def _bwd_triton(gy: torch.Tensor, x: torch.Tensor, bias: Optional[torch.Tensor], act: int, alpha: float,
                gain: float, clamp: float, dim: int) -> torch.Tensor:
    return _launch_bwd(gy, x, bias, act, alpha, gain, clamp, dim)


@torch.library.custom_op("fastgan::bias_act_dbwd_triton", mutates_args=())
def _dbwd_triton(ggx: torch.Tensor, gy: torch.Tensor, x: torch.Tensor, bias: Optional[torch.Tensor], act: int,
                 alpha: float, gain: float, clamp: float, dim: int) -> torch.Tensor:
    return _launch_dbwd(ggx, gy, x, bias, act, alpha, gain, clamp, dim)


_fwd_triton.register_fake(fake_fwd)
_bwd_triton.register_fake(fake_bwd)
_dbwd_triton.register_fake(fake_dbwd)


# --------------------------------------------------------------------------------------------- autograd
def _third_order(ctx, g_gx2):
    """Backward of ``dbwd``: the vector-Jacobian product of the reference formula (``torch.func.vjp`` so the saved
    tensors' own history is not walked twice; the result stays differentiable, so fourth order works too)."""
    from .bias_act import reference_dbwd

    ggx, gy, x, bias = ctx.saved_tensors
    args = ctx.args
    if bias is None:
        _, vjp = torch.func.vjp(lambda a, b, c: reference_dbwd(a, b, c, None, *args), ggx, gy, x)
        g_ggx, g_gy, g_x = vjp(g_gx2)
        g_bias = None
    else:
        _, vjp = torch.func.vjp(lambda a, b, c, d: reference_dbwd(a, b, c, d, *args), ggx, gy, x, bias)
        g_ggx, g_gy, g_x, g_bias = vjp(g_gx2)
    return g_ggx, g_gy, g_x, g_bias, None, None, None, None, None


def attach_autograd(fwd, bwd, dbwd, names: tuple[str, str, str], native: frozenset = frozenset()) -> None:
    """Make ``fwd`` differentiable through ``bwd``, ``bwd`` through ``bwd`` and ``dbwd``, ``dbwd`` through the
    reference."""

    def fwd_setup(ctx, inputs, output):
        x, bias, *ctx.args = inputs
        ctx.save_for_backward(x, bias)

    def fwd_backward(ctx, gy):
        x, bias = ctx.saved_tensors
        gx = bwd(gy, x, bias, *ctx.args)
        gbias = reduce_to_bias(gx, ctx.args[-1], bias) if bias is not None and ctx.needs_input_grad[1] else None
        return gx, gbias, None, None, None, None, None

    def bwd_setup(ctx, inputs, output):
        gy, x, bias, *ctx.args = inputs
        ctx.save_for_backward(gy, x, bias)

    def bwd_backward(ctx, ggx):
        gy, x, bias = ctx.saved_tensors
        ggy = bwd(ggx, x, bias, *ctx.args) if ctx.needs_input_grad[0] else None
        gx2 = gbias2 = None
        want_bias = bias is not None and ctx.needs_input_grad[2]
        if ctx.args[0] <= PIECEWISE_LINEAR:
            # f'' = 0 and the clamp mask is constant almost everywhere: zeros, as eager's double backward of
            # leaky_relu/relu/clamp gives (also for NaN in ggx or gy), without a dbwd kernel reading three tensors.
            gx2 = torch.zeros_like(x) if ctx.needs_input_grad[1] else None
            gbias2 = torch.zeros_like(bias) if want_bias else None
        elif ctx.needs_input_grad[1] or want_bias:
            gx2 = dbwd(ggx, gy, x, bias, *ctx.args)
            if want_bias:
                gbias2 = reduce_to_bias(gx2, ctx.args[-1], bias)
        if ggy is not None and ggy.dtype != gy.dtype:
            ggy = ggy.to(gy.dtype)
        return ggy, gx2, gbias2, None, None, None, None, None

    def dbwd_setup(ctx, inputs, output):
        ggx, gy, x, bias, *ctx.args = inputs
        ctx.save_for_backward(ggx, gy, x, bias)

    register_formulas(((names[0], fwd_backward, fwd_setup), (names[1], bwd_backward, bwd_setup),
                       (names[2], _third_order, dbwd_setup)), native)


FAMILY = KernelFamily(
    OP_NAMES, (fake_fwd, fake_bwd, fake_dbwd), attach_autograd, (_fwd_triton, _bwd_triton, _dbwd_triton),
    launchers=(_launch_fwd, _launch_bwd, _launch_dbwd),
)
kernel_ops = FAMILY.ops
register_compiled = FAMILY.register_compiled
