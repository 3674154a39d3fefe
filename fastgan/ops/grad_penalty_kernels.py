"""The gradient-penalty kernel ops as torch.library ops, with fake implementations and autograd of every order.

Three kernel ops (math in :mod:`fastgan.ops.grad_penalty`; ``c_n`` the per-sample backward factor)::

    grad_penalty_fwd (grad, kind, target)                 -> (p, norm)      p (N,) in grad's dtype, norm float64
    grad_penalty_bwd (gp, grad, norm, kind, target)       -> gx = gp_n c_n g
    grad_penalty_dbwd(ggx, gp, grad, norm, kind, target)  -> (d gx/d grad . ggx, d gx/d gp . ggx)

``norm`` is the forward's per-sample ``||g_n||``, saved so the backward does not read grad a second time; it is
not differentiable (the double backward's grad output already contains the path through it). Autograd: the
backward of ``fwd`` is ``bwd``; the backward of ``bwd`` is ``dbwd`` (both of its inputs gp and grad), so a
gradient penalty's ``.backward()`` runs on the kernels; the backward of ``dbwd`` (third order and up) is autograd
of :func:`reference_dbwd`, which recomputes the norm from grad.

Two triples: ``fastgan::grad_penalty_*`` from the compiled extension (CPU C++; schemas in ``csrc/fastgan.cpp``) and
``fastgan::grad_penalty_*_triton`` defined here around ``fastgan.kernels.grad_penalty``. There is no CUDA C++
kernel: the op is a memory-bound per-sample reduction plus an elementwise pass, which Triton already does at the
bytes floor (one read of grad forward; one read and one write backward).
"""
from __future__ import annotations

import torch

from .. import _backend
from ._family import KernelFamily, check_finite, register_formulas
from .bias_act_kernels import acc_dtype, is_dense

OP_NAMES = ("grad_penalty_fwd", "grad_penalty_bwd", "grad_penalty_dbwd")
TWO_SIDED, HALF_SQUARE = 0, 1  # kind codes: (||g|| - target)^2 (wgan-gp, dragan); ||g||^2 / 2 (r1, r2)


def sample_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` when every sample ``x[n]`` is one run of its memory (a dense layout with dim 0 outermost: contiguous,
    channels_last, any order of the other dims), else a contiguous copy. Outputs are ``empty_like`` of this (the
    C++ side applies the same rule, so fake and real strides agree)."""
    n = x.shape[0]
    if is_dense(x) and (n <= 1 or x.stride(0) == x.numel() // n):
        return x
    return x.contiguous()


def reference_dbwd(ggx, gp, grad, kind: int, target: float):
    """``(d gx/d grad . ggx, d gx/d gp . ggx)`` in plain PyTorch with the norm recomputed from ``grad``, so it is
    differentiable in every input (the third-order path). Computed in grad's acc dtype."""
    acc = acc_dtype(grad.dtype)
    n = grad.shape[0]
    g, v, gpa = grad.reshape(n, -1).to(acc), ggx.reshape(n, -1).to(acc), gp.to(acc)
    d = (g * v).sum(dim=1)
    if kind == HALF_SQUARE:
        g_grad, g_gp = gpa[:, None] * v, d
    else:
        r = torch.linalg.vector_norm(g, dim=1)
        zero = r == 0
        rs = torch.where(zero, torch.ones_like(r), r)  # no 0/0 in the branch torch.where drops
        c = torch.where(zero, torch.zeros_like(r), 2 * (r - target) / rs)
        b = torch.where(zero, torch.zeros_like(r), gpa * (2 * target) * d / rs**3)
        g_grad, g_gp = (gpa * c)[:, None] * v + b[:, None] * g, c * d
    return g_grad.reshape(grad.shape).to(grad.dtype), g_gp.to(gp.dtype)


# ----------------------------------------------------------------------------------------------- fake impls
def fake_fwd(grad, kind, target):
    n = grad.shape[0]
    return grad.new_empty((n,)), grad.new_empty((n,), dtype=torch.float64)


def fake_bwd(gp, grad, norm, kind, target):
    return torch.empty_like(sample_major(grad))


def fake_dbwd(ggx, gp, grad, norm, kind, target):
    return torch.empty_like(sample_major(grad)), gp.new_empty((grad.shape[0],))


# ------------------------------------------------------------------------------------------- Triton ops
def _triton_module():
    return _backend.import_kernels("grad_penalty")  # imports triton; only reached when Triton was selected


# The launchers: the Triton ops' bodies, and the CUDA kernels of the extension's ops (KernelFamily's routing).
def _launch_fwd(grad, kind: int, target: float):
    check_finite("target must be finite", target=target)  # the check traced code defers
    return _triton_module().forward(grad, kind, target)


def _launch_bwd(gp, grad, norm, kind: int, target: float):
    return _triton_module().backward(gp, grad, norm, kind, target)


def _launch_dbwd(ggx, gp, grad, norm, kind: int, target: float):
    return _triton_module().double_backward(ggx, gp, grad, norm, kind, target)


@torch.library.custom_op("fastgan::grad_penalty_fwd_triton", mutates_args=())
def _fwd_triton(grad: torch.Tensor, kind: int, target: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_fwd(grad, kind, target)


@torch.library.custom_op("fastgan::grad_penalty_bwd_triton", mutates_args=())
def _bwd_triton(gp: torch.Tensor, grad: torch.Tensor, norm: torch.Tensor, kind: int, target: float) -> torch.Tensor:
    return _launch_bwd(gp, grad, norm, kind, target)


@torch.library.custom_op("fastgan::grad_penalty_dbwd_triton", mutates_args=())
def _dbwd_triton(ggx: torch.Tensor, gp: torch.Tensor, grad: torch.Tensor, norm: torch.Tensor, kind: int,
                 target: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_dbwd(ggx, gp, grad, norm, kind, target)


_fwd_triton.register_fake(fake_fwd)
_bwd_triton.register_fake(fake_bwd)
_dbwd_triton.register_fake(fake_dbwd)


# --------------------------------------------------------------------------------------------- autograd
def _third_order(ctx, g_ggrad, g_ggp):
    """Backward of ``dbwd``: the vector-Jacobian product of :func:`reference_dbwd` (``torch.func.vjp``, so the
    saved tensors' own history is not walked twice; the result stays differentiable)."""
    ggx, gp, grad = ctx.saved_tensors
    kind, target = ctx.args
    g_ggrad = torch.zeros_like(grad) if g_ggrad is None else g_ggrad
    g_ggp = torch.zeros_like(gp) if g_ggp is None else g_ggp
    _, vjp = torch.func.vjp(lambda a, b, c: reference_dbwd(a, b, c, kind, target), ggx, gp, grad)
    d_ggx, d_gp, d_grad = vjp((g_ggrad, g_ggp))
    return d_ggx, d_gp, d_grad, None, None, None


def attach_autograd(fwd, bwd, dbwd, names: tuple[str, str, str], native: frozenset = frozenset()) -> None:
    """Make ``fwd`` differentiable through ``bwd``, ``bwd`` through ``dbwd``, ``dbwd`` through the reference.
    ``native``: the ops whose same formula the extension registered in C++ (csrc/grad_penalty_autograd.cpp)."""

    def fwd_setup(ctx, inputs, output):
        grad, *ctx.args = inputs
        _p, norm = output
        ctx.mark_non_differentiable(norm)
        ctx.save_for_backward(grad, norm)

    def fwd_backward(ctx, gp, _g_norm):
        grad, norm = ctx.saved_tensors
        return bwd(gp, grad, norm, *ctx.args), None, None

    def bwd_setup(ctx, inputs, output):
        gp, grad, norm, *ctx.args = inputs
        ctx.save_for_backward(gp, grad, norm)

    def bwd_backward(ctx, ggx):
        gp, grad, norm = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None, None, None
        g_grad, g_gp = dbwd(ggx, gp, grad, norm, *ctx.args)
        return (g_gp if ctx.needs_input_grad[0] else None, g_grad if ctx.needs_input_grad[1] else None,
                None, None, None)

    def dbwd_setup(ctx, inputs, output):
        ggx, gp, grad, _norm, *ctx.args = inputs
        ctx.save_for_backward(ggx, gp, grad)

    register_formulas(((names[0], fwd_backward, fwd_setup), (names[1], bwd_backward, bwd_setup),
                       (names[2], _third_order, dbwd_setup)), native)


FAMILY = KernelFamily(
    OP_NAMES, (fake_fwd, fake_bwd, fake_dbwd), attach_autograd, (_fwd_triton, _bwd_triton, _dbwd_triton),
    launchers=(_launch_fwd, _launch_bwd, _launch_dbwd),
)
kernel_ops = FAMILY.ops
register_compiled = FAMILY.register_compiled
