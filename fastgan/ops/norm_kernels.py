"""The instance-norm kernel ops as torch.library ops, with fake implementations and autograd of every order.

Three kernel ops make up the family (math in :mod:`fastgan.ops.instance_norm_ref`)::

    instance_norm_fwd (x, scale, shift, eps)                                   -> (y, mean, rstd)
    instance_norm_bwd (gy, x, mean, rstd, scale, eps)                          -> (gx, gscale, gshift)
    instance_norm_dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, eps)   -> (gx2, ggy, gscale2)

``scale``/``shift`` are per (n, c) in the accumulation dtype, so instance norm, AdaIN and per-sample affines all
use them. Each op's autograd formula is the next op: the backward of ``fwd`` is ``bwd`` and the backward of
``bwd`` is ``dbwd`` (fused kernels for first and second order). The backward of ``dbwd`` (third order and up) is
autograd through :func:`reference_dbwd`, which is rarely needed and keeps every order correct.

Two triples exist: ``fastgan::instance_norm_*`` from the compiled extension (CPU and CUDA kernels, schemas in
``csrc/fastgan.cpp``) and ``fastgan::instance_norm_*_triton`` defined here around ``fastgan.kernels``.
"""
from __future__ import annotations


import torch

from .. import _backend
from ._family import KernelFamily, register_formulas
from ._layout import empty_like_layout
from .instance_norm_ref import acc_dtype, plane_dims, reference_dbwd

OP_NAMES = ("instance_norm_fwd", "instance_norm_bwd", "instance_norm_dbwd")


# ----------------------------------------------------------------------------------------------- fake impls
def _stats_like(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[:2], dtype=acc_dtype(x.dtype))


def fake_fwd(x, scale, shift, eps):
    return empty_like_layout(x), _stats_like(x), _stats_like(x)


def fake_bwd(gy, x, mean, rstd, scale, eps):
    return empty_like_layout(x), _stats_like(x), _stats_like(x)


def fake_dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, eps):
    return empty_like_layout(x), empty_like_layout(x, gy.dtype), _stats_like(x)


# ------------------------------------------------------------------------------------------- Triton ops
def _triton_module():
    return _backend.import_kernels("instance_norm")  # imports triton; only reached when Triton was selected


@torch.library.custom_op("fastgan::instance_norm_fwd_triton", mutates_args=())
def _fwd_triton(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _triton_module().forward(x, scale, shift, eps)


@torch.library.custom_op("fastgan::instance_norm_bwd_triton", mutates_args=())
def _bwd_triton(
    gy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _triton_module().backward(gy, x, mean, rstd, scale)


@torch.library.custom_op("fastgan::instance_norm_dbwd_triton", mutates_args=())
def _dbwd_triton(
    ggx: torch.Tensor,
    ggscale: torch.Tensor,
    ggshift: torch.Tensor,
    gy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _triton_module().double_backward(ggx, ggscale, ggshift, gy, x, mean, rstd, scale)


_fwd_triton.register_fake(fake_fwd)
_bwd_triton.register_fake(fake_bwd)
_dbwd_triton.register_fake(fake_dbwd)


# --------------------------------------------------------------------------------------------- autograd
def _dbwd_from_reference(ggx, ggscale, ggshift, gy, x, scale, eps):
    """``reference_dbwd`` with mean/rstd recomputed from ``x``, so it is differentiable in every input."""
    xf = x.to(acc_dtype(x.dtype))
    dims = plane_dims(x)
    mean = xf.mean(dim=dims)
    var = (xf - mean.reshape(mean.shape + (1,) * len(dims))).square().mean(dim=dims)
    return reference_dbwd(ggx, ggscale, ggshift, gy, x, mean, torch.rsqrt(var + eps), scale)


def _third_order(ctx, g_gx2, g_ggy, g_gscale2):
    """Backward of ``dbwd``: the vector-Jacobian product of the reference formula.

    ``torch.func.vjp`` differentiates at the saved values without walking back through their own history (plain
    ``autograd.grad`` would, and would double-count paths into ``x``), and its result stays differentiable in
    the outer graph, so fourth and higher orders work too.
    """
    ggx, ggscale, ggshift, gy, x, scale = ctx.saved_tensors
    eps = ctx.eps
    _, vjp = torch.func.vjp(lambda *a: _dbwd_from_reference(*a, eps), ggx, ggscale, ggshift, gy, x, scale)
    g = vjp((g_gx2, g_ggy, g_gscale2))
    return g[0], g[1], g[2], g[3], g[4], None, None, g[5], None


def attach_autograd(fwd, bwd, dbwd, names: tuple[str, str, str], native: frozenset = frozenset()) -> None:
    """Make ``fwd`` differentiable through ``bwd``, ``bwd`` through ``dbwd`` and ``dbwd`` through the reference."""

    def fwd_setup(ctx, inputs, output):
        x, scale, _shift, ctx.eps = inputs
        _y, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, scale, mean, rstd)

    def fwd_backward(ctx, gy, _g_mean, _g_rstd):
        x, scale, mean, rstd = ctx.saved_tensors
        gx, gscale, gshift = bwd(gy, x, mean, rstd, scale, ctx.eps)
        return gx, gscale, gshift, None

    def bwd_setup(ctx, inputs, output):
        gy, x, mean, rstd, scale, ctx.eps = inputs
        ctx.save_for_backward(gy, x, mean, rstd, scale)

    def bwd_backward(ctx, ggx, ggscale, ggshift):
        gy, x, mean, rstd, scale = ctx.saved_tensors
        # Upstream grads of the (N, C) outputs may be expanded views (e.g. from a sum); kernels take dense ones.
        ggscale, ggshift = ggscale.to(mean.dtype).contiguous(), ggshift.to(mean.dtype).contiguous()
        gx2, ggy, gscale2 = dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, ctx.eps)
        return ggy, gx2, None, None, gscale2, None

    def dbwd_setup(ctx, inputs, output):
        ggx, ggscale, ggshift, gy, x, _mean, _rstd, scale, ctx.eps = inputs
        ctx.save_for_backward(ggx, ggscale, ggshift, gy, x, scale)

    register_formulas(((names[0], fwd_backward, fwd_setup), (names[1], bwd_backward, bwd_setup),
                       (names[2], _third_order, dbwd_setup)), native)


FAMILY = KernelFamily(
    OP_NAMES, (fake_fwd, fake_bwd, fake_dbwd), attach_autograd, (_fwd_triton, _bwd_triton, _dbwd_triton)
)
kernel_ops = FAMILY.ops
register_compiled = FAMILY.register_compiled
_wb: list = []


def compiled_wb():
    """The extension's ``instance_norm_wb`` (torch.nn's weight/bias form, fold and its gradient in C++) with its fake
    attached, or None when the extension lacks it (an older build, or none)."""
    if not _wb:
        op = None
        if _backend.has_kernel("instance_norm_wb", "CompositeExplicitAutograd"):
            FAMILY.compiled()  # the fakes and formulas of the ops it calls
            torch.library.register_fake("fastgan::instance_norm_wb")(
                lambda x, weight, bias, eps: fake_fwd(x, None, None, eps))
            op = torch.ops.fastgan.instance_norm_wb.default
        _wb.append(op)
    return _wb[0]
