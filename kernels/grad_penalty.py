"""Triton kernels of the fused gradient-penalty reduction: forward, backward and double backward.

With ``g_n`` the n-th sample of ``grad`` (``M = numel / N`` elements), ``s_n = ||g_n||^2``, ``r_n = sqrt(s_n)``,
``t = target`` and the upstream gradients ``gp`` (N,) and ``v`` (grad-shaped)::

    forward          p_n = (r_n - t)^2                          kind 0 (two-sided: wgan-gp, dragan)
                     p_n = s_n / 2                              kind 1 (r1, r2);  norm_n = r_n  (float64)
    backward         gx  = gp_n c_n g_n                         c_n = 2 (r_n - t) / r_n, 0 where r_n = 0; kind 1: 1
    double backward  d_n = <g_n, v_n>
                     d gx / d grad . v = gp_n (c_n v_n + 2 t d_n / r_n^3 g_n)       kind 1: gp_n v_n
                     d gx / d gp   . v = c_n d_n                                     kind 1: d_n
                     (a zero-norm sample of kind 0 gets 0 for both: the 0 subgradient, extended)

Launches. The reductions (``s_n`` in the forward, ``d_n`` in the double backward) run one program per
(group of BLOCK_N samples, chunk of a sample): a program sums a [BLOCK_N, BLOCK_M] tile over its chunk in a loop.
Many tiny samples share a program (BLOCK_N > 1); few large samples are cut into S chunks so that the grid still
fills the GPU, and then a second small launch adds the S partial sums of each sample in order (deterministic, no
atomics). With S = 1 the reduction program finishes the sample itself (one launch). The elementwise passes are one
flat launch over memory, the sample of offset ``i`` being ``i // M``; their per-sample coefficients are computed
in the kernel from gp, norm and d (N values each, cached), not in extra host-side launches.

Memory is read as it is when every sample is one run of memory (any dense layout with dim 0 outermost:
contiguous, channels_last, ...); the launcher copies other strides to contiguous. Offsets are int64.
Accumulation is float32 (float64 for float64 input), as a GPU kernel does; the per-sample epilogues (square root,
subtraction of the target, N values) are float64, and so is the target, passed in a tensor (a Python float kernel
argument would be float32). The elementwise passes compute in float32 (float64 for float64 input), with
``r - t`` taken in float64. Bytes: forward reads grad once; backward reads grad and writes
gx; double backward reads grad and v twice (reduction, then elementwise) and writes one output.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import cdiv, on_input_device
from ._math import LAUNCH
from ._params import join64, split64

__all__ = ["forward", "backward", "double_backward"]

BLOCK = 1024  # elements per program of the elementwise passes
TILE = 2048  # elements of one reduction tile [BLOCK_N, BLOCK_M]
PROGRAMS = 4 * 132  # reduction programs wanted to fill the GPU (4 per SM of an H100/H200); also used off-GPU
SQUARES, DOTS = 0, 1  # reduction modes


@triton.jit
def _coef(r64, t64, ACC: tl.constexpr):
    """(zero-norm mask, r with 1 where it is 0, c_n) of the module docstring (kind 0), in ACC. r - t is taken in
    float64 (the norm is saved in float64): near the target it cancels, and rounding r to float32 first would
    cost most of c's digits there."""
    zero = r64 == 0.0
    rs = tl.where(zero, 1.0, r64.to(ACC))
    c = tl.where(zero, 0.0, 2.0 * (r64 - t64).to(ACC) / rs)
    return zero, rs, c


@triton.jit
def _finish(total, rows, rmask, P, NORM, DOT, GGP, t, MODE: tl.constexpr, KIND: tl.constexpr):
    """Per-sample outputs from the sums: (p, norm) for SQUARES, (d, g_gp) for DOTS. In float64 (N values): the
    sum is rounded once, not again by the square root and the subtraction of the target."""
    if MODE == 0:
        total = total.to(tl.float64)
        r = tl.sqrt(total)
        if KIND == 0:
            p = (r - t) * (r - t)
        else:
            p = 0.5 * total
        # via float32: the interpreter converts float64 to bfloat16 wrongly (garbage); the extra rounding can only
        # matter at an exact float32 tie.
        if P.dtype.element_ty != tl.float64:
            p = p.to(tl.float32)
        tl.store(P + rows, p.to(P.dtype.element_ty), mask=rmask)
        tl.store(NORM + rows, r.to(tl.float64), mask=rmask)
    else:
        if KIND == 0:
            r = tl.load(NORM + rows, mask=rmask, other=1.0)
            zero, rs, c = _coef(r, t, tl.float64)
            ggp = c * total.to(tl.float64)
        else:
            ggp = total
        tl.store(DOT + rows, total, mask=rmask)
        if GGP.dtype.element_ty != tl.float64:
            ggp = ggp.to(tl.float32)
        tl.store(GGP + rows, ggp.to(GGP.dtype.element_ty), mask=rmask)


@triton.jit
def _reduce_kernel(G, V, PART, P, NORM, DOT, GGP, t_hi, t_mid, t_lo, N, M, chunk, S, MODE: tl.constexpr,
                   KIND: tl.constexpr, FINAL: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_M: tl.constexpr):
    """Sum of g^2 (SQUARES) or g v (DOTS) over chunk program_id(1) of samples [pid * BLOCK_N, + BLOCK_N)."""
    t = join64(t_hi, t_mid, t_lo, tl.float64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    s = tl.program_id(1)
    c0 = s.to(tl.int64) * chunk
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=ACC)
    for c in range(0, chunk, BLOCK_M):
        cols = c0 + c + tl.arange(0, BLOCK_M)
        mask = rmask[:, None] & (cols < M)[None, :]
        offs = rows[:, None] * M + cols[None, :]
        x = tl.load(G + offs, mask=mask, other=0.0).to(ACC)
        if MODE == 0:
            acc += x * x
        else:
            acc += x * tl.load(V + offs, mask=mask, other=0.0).to(ACC)
    total = tl.sum(acc, axis=1)
    if FINAL:
        _finish(total, rows, rmask, P, NORM, DOT, GGP, t, MODE, KIND)
    else:
        tl.store(PART + rows * S + s, total, mask=rmask)


@triton.jit
def _finalize_kernel(PART, P, NORM, DOT, GGP, t_hi, t_mid, t_lo, N, S, MODE: tl.constexpr,
                     KIND: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """Adds the S partial sums of each sample (in chunk order within a lane) and finishes the sample."""
    t = join64(t_hi, t_mid, t_lo, tl.float64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    acc = tl.zeros([BLOCK_N, BLOCK_S], dtype=ACC)
    for s0 in range(0, S, BLOCK_S):
        cols = s0 + tl.arange(0, BLOCK_S)
        mask = rmask[:, None] & (cols < S)[None, :]
        acc += tl.load(PART + rows[:, None] * S + cols[None, :], mask=mask, other=0.0)
    _finish(tl.sum(acc, axis=1), rows, rmask, P, NORM, DOT, GGP, t, MODE, KIND)


@triton.jit
def _apply_kernel(G, V, GP, NORM, DOT, OUT, t_hi, t_mid, t_lo, numel, M, MODE: tl.constexpr,
                  KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """MODE 0: OUT = backward's gx; MODE 1: OUT = the double backward's gradient w.r.t. grad."""
    t64 = join64(t_hi, t_mid, t_lo, tl.float64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    n = offs // M
    gp = tl.load(GP + n, mask=mask, other=0.0).to(ACC)
    if MODE == 1:
        v = tl.load(V + offs, mask=mask, other=0.0).to(ACC)
    if KIND == 1:
        if MODE == 0:
            out = gp * tl.load(G + offs, mask=mask, other=0.0).to(ACC)
        else:
            out = gp * v
    else:
        g = tl.load(G + offs, mask=mask, other=0.0).to(ACC)
        zero, rs, c = _coef(tl.load(NORM + n, mask=mask, other=1.0), t64, ACC)
        if MODE == 0:
            out = (gp * c) * g
        else:
            d = tl.load(DOT + n, mask=mask, other=0.0).to(ACC)
            b = tl.where(zero, 0.0, gp * (2.0 * t64.to(ACC)) * d / (rs * rs * rs))
            out = (gp * c) * v + b * g
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------ launchers
def _sample_major(x: torch.Tensor) -> torch.Tensor:
    from fastgan.ops.grad_penalty_kernels import sample_major

    return sample_major(x)


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _plan(N: int, M: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_M, chunk, S): the reduction tile, elements per chunk (a multiple of BLOCK_M), chunks."""
    block_m = min(TILE, triton.next_power_of_2(M))
    block_n = max(1, min(triton.next_power_of_2(N), TILE // block_m))
    groups = cdiv(N, block_n)
    chunk = cdiv(M, block_m) * block_m  # one chunk: the whole sample
    if groups < PROGRAMS and M > block_m:
        want = cdiv(PROGRAMS, groups)
        chunk = max(block_m, cdiv(cdiv(M, want), block_m) * block_m)
    return block_n, block_m, chunk, cdiv(M, chunk)


def _reduce(mode: int, g, v, kind: int, target: float, p=None, norm=None, dot=None, ggp=None):
    N = g.shape[0]
    M = g.numel() // N
    block_n, block_m, chunk, S = _plan(N, M)
    groups = cdiv(N, block_n)
    v = g if v is None else v
    part = torch.empty(N * S if S > 1 else 1, dtype=_acc(g), device=g.device)
    p, norm, dot, ggp = (part if t is None else t for t in (p, norm, dot, ggp))  # unused outputs: any pointer
    _reduce_kernel[(groups, S)](g, v, part, p, norm, dot, ggp, *split64(target), N, M, chunk, S, MODE=mode,
                                KIND=kind, FINAL=S == 1, ACC=_tl_acc(g), BLOCK_N=block_n, BLOCK_M=block_m,
                                num_warps=4, **LAUNCH)
    if S > 1:
        block_s = min(64, triton.next_power_of_2(S))
        fin_n = max(1, min(triton.next_power_of_2(N), 1024 // block_s))
        _finalize_kernel[(cdiv(N, fin_n),)](part, p, norm, dot, ggp, *split64(target), N, S, MODE=mode,
                                                   KIND=kind, ACC=_tl_acc(g), BLOCK_N=fin_n, BLOCK_S=block_s,
                                                   num_warps=4, **LAUNCH)


def _tl_acc(x: torch.Tensor):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _like(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A grad-shaped ``t`` in g's dtype and strides."""
    if t.dtype == g.dtype and t.stride() == g.stride():
        return t
    return torch.empty_like(g).copy_(t)


@on_input_device
def forward(grad: torch.Tensor, kind: int, target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, norm)``: p (N,) in grad's dtype, the norms (N,) in float64."""
    g = _sample_major(grad)
    N = g.shape[0]
    p = torch.empty(N, dtype=g.dtype, device=g.device)
    norm = torch.empty(N, dtype=torch.float64, device=g.device)
    _reduce(SQUARES, g, None, kind, target, p=p, norm=norm)
    return p, norm


@on_input_device
def backward(gp: torch.Tensor, grad: torch.Tensor, norm: torch.Tensor, kind: int, target: float) -> torch.Tensor:
    """``gx = gp_n c_n g`` in grad's dtype and (sample-major) layout."""
    g = _sample_major(grad)
    out = torch.empty_like(g)
    _apply_kernel[(cdiv(g.numel(), BLOCK),)](
        g, g, gp.contiguous(), norm.contiguous(), norm, out, *split64(target), g.numel(), g.numel() // g.shape[0],
        MODE=0, KIND=kind, ACC=_tl_acc(g), BLOCK=BLOCK, num_warps=4, **LAUNCH)
    return out


@on_input_device
def double_backward(ggx: torch.Tensor, gp: torch.Tensor, grad: torch.Tensor, norm: torch.Tensor, kind: int,
                    target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g_grad, g_gp)``: the backward's derivative applied to ``ggx``, w.r.t. grad and gp."""
    g = _sample_major(grad)
    v = _like(ggx, g)
    N = g.shape[0]
    gp, norm = gp.contiguous(), norm.contiguous()
    dot = torch.empty(N, dtype=_acc(g), device=g.device)
    g_gp = torch.empty(N, dtype=gp.dtype, device=g.device)
    _reduce(DOTS, g, v, kind, target, norm=norm, dot=dot, ggp=g_gp)
    out = torch.empty_like(g)
    _apply_kernel[(cdiv(g.numel(), BLOCK),)](g, v, gp, norm, dot, out, *split64(target), g.numel(),
                                                    g.numel() // N,
                                                    MODE=1, KIND=kind, ACC=_tl_acc(g), BLOCK=BLOCK, num_warps=4,
                                                    **LAUNCH)
    return out, g_gp
