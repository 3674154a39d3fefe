"""Fused per-sample gradient-penalty reduction: ``fastgan.ops.grad_penalty``.

Given the critic's input gradient ``grad`` of shape ``(N, ...)`` and ``g_n = grad[n].flatten()``::

    two-sided (wgan-gp, dragan)   p_n = (||g_n||_2 - target)^2
    half squared norm (r1, r2)    p_n = 0.5 * ||g_n||_2^2

Derivatives the kernels implement (``gp`` the upstream gradient of ``p``, ``v`` the one of ``gx``,
``r = ||g_n||``, ``d = <g_n, v_n>``, ``t = target``)::

    backward          gx = gp_n c_n g_n                  c_n = 2 (r - t) / r  (two-sided),  1  (r1/r2)
    double backward   d gx / d g  . v = gp_n (c_n v_n + 2 t d / r^3 g_n)       (r1/r2: gp_n v_n)
                      d gx / d gp . v = c_n d                                   (r1/r2: d)

At ``r = 0`` the two-sided penalty has a cone point: the kernels use the subgradient 0 there, as torch's
``vector_norm`` backward does (``c_n = 0``, so ``gx = 0`` for that sample), and extend it to the second order
(both double-backward terms are 0). Plain autograd of the reference formula gives NaN for that sample's second
derivative with respect to grad (torch's norm double backward divides 0 by 0). A training step needs only the
first (the critic weights' gradient flows through gx), so it stays finite either way; what differentiates the
penalty twice with respect to grad (gradgradcheck, a penalty on the penalty's gradient) sees NaN with the reference.

The forward reads grad once (per-sample sums of squares, accumulated in float64 by the C++ kernel and float32 by
the Triton one), the backward reads it once more and writes ``gx``; the per-sample norms are saved between them.
"""
from __future__ import annotations


import torch

from .. import _backend
from ._family import check_finite, check_float_tensor
from .bias_act_kernels import acc_dtype
from .grad_penalty_kernels import HALF_SQUARE, TWO_SIDED, kernel_ops

KINDS = ("wgan-gp", "dragan", "r1", "r2")
KIND_CODES = {"wgan-gp": TWO_SIDED, "dragan": TWO_SIDED, "r1": HALF_SQUARE, "r2": HALF_SQUARE}


def canonical_kind(kind: str) -> str:
    """``kind`` as one of :data:`KINDS`: any case, ``_`` for ``-``, and ``"wgangp"`` accepted."""
    if not isinstance(kind, str):
        raise ValueError(f"gradient penalty kind must be a string, one of {KINDS}; got {kind!r}")
    k = kind.strip().lower().replace("_", "-")
    if k == "wgangp":
        k = "wgan-gp"
    if k not in KINDS:
        raise ValueError(f"unknown gradient penalty kind {kind!r}; expected one of {', '.join(KINDS)}")
    return k


def grad_penalty_reference(grad: torch.Tensor, kind: str = "wgan-gp", target: float = 1.0) -> torch.Tensor:
    """:func:`grad_penalty` in plain PyTorch, differentiable by autograd (``impl="ref"``). Computes in float32
    (float64 for float64 input) and returns grad's dtype."""
    flat = grad.reshape(grad.shape[0], -1).to(acc_dtype(grad.dtype))
    if KIND_CODES[canonical_kind(kind)] == HALF_SQUARE:
        p = 0.5 * flat.square().sum(dim=1)
    else:
        p = (torch.linalg.vector_norm(flat, ord=2, dim=1) - target).square()
    return p.to(grad.dtype)


def _check(grad, kind, target) -> tuple[int, float]:
    check_float_tensor(grad, "grad")
    if grad.dim() == 0:
        raise ValueError("fastgan: grad must have a batch dimension (N, ...), got a 0-d tensor")
    if grad.numel() == 0:
        raise ValueError(f"fastgan: grad is empty (shape {tuple(grad.shape)}); grad_penalty needs N >= 1 samples "
                         "of at least one element")
    code = KIND_CODES[canonical_kind(kind)]
    target = float(target)
    check_finite("target must be finite", target=target)
    return code, target


def grad_penalty(grad: torch.Tensor, kind: str = "wgan-gp", target: float = 1.0, *,
                 impl: str | None = None) -> torch.Tensor:
    """Per-sample gradient penalty ``p_n`` of the critic's input gradient, one fused pass over ``grad``.

    ``kind="wgan-gp"`` or ``"dragan"``: ``(||g_n||_2 - target)^2``; ``kind="r1"`` or ``"r2"``:
    ``0.5 * ||g_n||_2^2`` (``target`` ignored), with ``g_n = grad[n].flatten()``. Differentiable to any order: the
    backward (``d p / d grad``, what a penalty's ``.backward()`` needs) and its derivative (the double backward,
    for gradient checks and higher-order terms) run on fused kernels, third order and up through the reference.

    Args:
        grad: ``(N, ...)``, any rank >= 1 (``(N,)`` is N one-element samples), float16, bfloat16, float32 or
            float64. Any strides: a dense layout with dim 0 outermost (contiguous, channels_last) is read as it is,
            others are copied to contiguous first.
        kind: ``"wgan-gp"`` | ``"dragan"`` | ``"r1"`` | ``"r2"`` (any case, ``_`` for ``-``).
        target: the norm the two-sided penalty pulls towards; finite.
        impl: ``"ref"``, ``"cpp"`` or ``"triton"`` to pin an implementation; None chooses by device (CPU: C++,
            CUDA: Triton — there is no CUDA C++ kernel; see :func:`fastgan.use_impl`).

    Returns:
        ``(N,)`` in grad's dtype (as the plain-PyTorch formula returns), computed in float64 (C++) or float32
        (Triton; float64 for float64 grad) from a single rounding of each sample's sum. A sample containing NaN
        gives NaN. For float16 a penalty above 65504 is ``inf``: pass a float32 grad if that can happen.
    """
    code, target = _check(grad, kind, target)
    which = _backend.select("grad_penalty_fwd", grad.device, impl)
    if which == "ref":
        return grad_penalty_reference(grad, kind, target)
    p, _norm = kernel_ops(which, grad.device.type).fwd(grad, code, target)
    return p
