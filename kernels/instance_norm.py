"""Triton kernels of the instance-norm family: forward, backward and double backward over (n, c) planes.

The launchers :func:`forward`, :func:`backward` and :func:`double_backward` return exactly what
``reference_fwd``/``reference_bwd``/``reference_dbwd`` in :mod:`fastgan.ops.instance_norm_ref` return (the math
and its derivation are there); :mod:`fastgan.ops.norm_kernels` wraps them as ``fastgan::instance_norm_*_triton``.

Layouts (:mod:`fastgan.ops._layout`) are read as they are, never transposed. Every program owns a tile
``[BLOCK_L, BLOCK_C]``: BLOCK_L positions (rows) of BLOCK_C planes (columns). Element (n, c, l) lives at::

    contiguous:     (n*C + c) * L + l    the tile is contiguous down its columns (axis 0). All N*C planes are one
                                         axis (the kernel sees N=1, C=N*C), so many small planes share a program.
    channels-last:  (n*L + l) * C + c    the tile is contiguous along its rows (axis 1): each row is one coalesced
                                         load of BLOCK_C channels, and a program owns BLOCK_C planes of sample n.

Three strategies, picked per call by :func:`_plan` from the shape alone (no autotuning):

    single  the whole plane fits in one tile: x (and gy, ggx) are read once and kept in registers.
    loop    a program loops over its planes in BLOCK_L-row chunks: a reduction pass, then an elementwise pass that
            walks the chunks backwards, so the chunks it read last (still in L2) are read again first.
    split   too few plane groups to fill the GPU (few large planes; channels-last with small N*C): L is cut into
            S ranges; a PARTIAL launch writes per-range partial statistics, an APPLY launch merges them and does
            the elementwise pass of its range.

Statistics are accumulated in float32 (float64 for float64 inputs), the dtype of mean/rstd/scale/shift.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastgan.ops._layout import canonical, empty_like_layout, is_channels_last, match_layout
from fastgan.ops.instance_norm_ref import acc_dtype

from ._device import cdiv, on_input_device
from ._math import LAUNCH
from ._params import join64, split64

__all__ = ["forward", "backward", "double_backward"]

# Kernel modes (constexpr MODE): one launch does everything, or the two launches of the split strategy.
FUSED = tl.constexpr(0)
PARTIAL = tl.constexpr(1)
APPLY = tl.constexpr(2)

# Heuristic knobs, module-level so tests can shrink them and drive the loop and split paths with tiny inputs.
SINGLE_BUDGET = 16384  # fp32 elements a single-tile program keeps in registers, over its inputs and one output
LOOP_BUDGET = 4096  # fp32 elements loaded per loop iteration over all inputs: ~16 KB in flight per program
PACK_TARGET = 2048  # contiguous small planes: elements per program when several planes share one
ROW_BYTES = 128  # channels-last: bytes of C in one tile row, one full 128-byte memory transaction
PROGRAMS_PER_SM = 2  # a looping plan with fewer plane groups than this per SM splits L across programs
CPU_SMS = 132  # SMs assumed off-GPU (the interpreter): an H100's, so CPU tests run the plans the GPU runs


# ------------------------------------------------------------------------------------------------ jit helpers
@triton.jit
def _coords(C, CB, L, L_SPLIT, BLOCK_C: tl.constexpr, IDX64: tl.constexpr):
    """This program's sample n, channels c [BLOCK_C] with their validity mask (and that mask for range 0 only),
    its range index s and its rows [l0, l1)."""
    pid = tl.program_id(0)
    s = tl.program_id(1)
    n = pid // CB
    c = (pid % CB) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    first = cmask & ((c * 0 + s) == 0)  # writes the (N, C) outputs: range 0 only (a vector compare, because the
    # interpreter turns bool-vector & bool-scalar into int32, which tl.store rejects as a mask)
    if IDX64:  # element offsets reach 2**31: do all address arithmetic in int64
        n = tl.cast(n, tl.int64)
        c = c.to(tl.int64)
    l0 = s * L_SPLIT
    l1 = tl.minimum(l0 + L_SPLIT, L)
    return n, c, cmask, first, s, l0, l1


@triton.jit
def _tile(ptr, n, c, cmask, l, l1, C, L, ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr, ROW_MASK: tl.constexpr):
    """Load rows ``l`` of planes (n, c) as an ACC tile; also return the offsets and mask for the matching store.

    Full chunks pass ROW_MASK=False: a mask that varies along L would stop the contiguous layout's loads from
    being vectorised, and only the last (tail) chunk of a range needs one.
    """
    if CHANNELS_LAST:
        offs = (n * L + l[:, None]) * C + c[None, :]
    else:
        offs = (n * C + c[None, :]) * L + l[:, None]
    if ROW_MASK:
        mask = (l < l1)[:, None] & cmask[None, :]
    else:
        mask = cmask[None, :]  # loads and stores broadcast it over the rows
    return tl.load(ptr + offs, mask=mask, other=0.0).to(ACC), offs, mask


@triton.jit
def _colsum(t, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Column sums of a [BLOCK_L, BLOCK_C] tile, in two explicit levels: groups of 16 rows, then the groups.

    A flat tl.sum over axis 0 leaves the summation order to the backend; the interpreter (numpy) adds the rows
    one after another, whose rounding error grows with BLOCK_L and was up to 12x eager's on 91-row planes. Two
    levels bound it by 16 + BLOCK_L / 16 additions on every backend.
    """
    if BLOCK_L >= 32:
        return tl.sum(tl.sum(tl.reshape(t, [BLOCK_L // 16, 16, BLOCK_C]), 1), 0)
    else:
        return tl.sum(t, 0)


@triton.jit
def _chan(na, ma, m2a, nb, mb, m2b):
    """Chan et al.'s merge of (count, mean, M2) of two disjoint sets: n = na + nb, d = mb - ma,
    mean = ma + d * nb/n,  M2 = M2a + M2b + d^2 * na*nb/n. Exact in real arithmetic and stable in floating point."""
    frac = nb / (na + nb)
    d = mb - ma
    return ma + d * frac, m2a + m2b + d * d * (na * frac)


@triton.jit
def _welford(X, n, c, cmask, l0, l1, C, L, ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr,
             BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Statistics of each column over rows [l0, l1), reading x once: (k, mean - k, M2 = sum((x - mean)^2)).

    The data is shifted by k = the mean of its first chunk (one extra chunk read, from cache), so every running
    mean below is O(std) rather than O(|mean|): unshifted, Welford's running mean is rounded at ulp(1e4) on every
    update for x + 1e4, and M2 inherits that; and mean = k + (mean - k) is then rounded about once.
    Each of the BLOCK_L lanes runs Welford's update over the full chunks; all lanes have seen the same count i,
    so 1/i is one scalar:  d = x - m;  m += d / i;  M2 += d * (x - m).
    The lanes (equal counts i) merge as m = avg(m_j), M2 = sum(M2_j) + i * sum((m_j - m)^2); the partial tail
    chunk is reduced two-pass in registers and merged with :func:`_chan`. No sum of squares is ever formed.
    """
    rows = tl.arange(0, BLOCK_L)
    x0, _o0, _m0 = _tile(X, n, c, cmask, l0 + rows, l1, C, L, ACC, CHANNELS_LAST, True)
    k = (_colsum(x0, BLOCK_L, BLOCK_C) / tl.cast(tl.minimum(l1 - l0, BLOCK_L), ACC))[None, :]  # the first chunk's mean
    n_full = (l1 - l0) // BLOCK_L
    m = tl.zeros([BLOCK_L, BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_L, BLOCK_C], ACC)
    for i in range(n_full):
        x, _, _ = _tile(X, n, c, cmask, l0 + i * BLOCK_L + rows, l1, C, L, ACC, CHANNELS_LAST, False)
        d = (x - k) - m
        m += d * (1.0 / tl.cast(i + 1, ACC))
        m2 += d * ((x - k) - m)
    mean_a = _colsum(m, BLOCK_L, BLOCK_C) / BLOCK_L
    dm = m - mean_a[None, :]
    m2_a = _colsum(m2, BLOCK_L, BLOCK_C) + tl.cast(n_full, ACC) * _colsum(dm * dm, BLOCK_L, BLOCK_C)
    # Tail: the last (l1 - l0) % BLOCK_L rows (possibly none).
    nb = (l1 - l0) - n_full * BLOCK_L
    x, _, mask = _tile(X, n, c, cmask, l0 + n_full * BLOCK_L + rows, l1, C, L, ACC, CHANNELS_LAST, True)
    x = tl.where(mask, x - k, 0.0)
    mean_b = _colsum(x, BLOCK_L, BLOCK_C) / tl.cast(tl.maximum(nb, 1), ACC)
    xc = tl.where(mask, x - mean_b[None, :], 0.0)
    mean, m2 = _chan(tl.cast(n_full * BLOCK_L, ACC), mean_a, m2_a, tl.cast(nb, ACC), mean_b, _colsum(xc * xc, BLOCK_L, BLOCK_C))
    return k.reshape([BLOCK_C]), mean, m2


@triton.jit
def _sum_partials(PART, k, stat, cmask, S, NC, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Sum over the S ranges of partial sum number k; PART is (K, S, N*C)."""
    total = tl.zeros([BLOCK_C], ACC)
    for j in range(S):
        total += tl.load(PART + (k * S + j) * NC + stat, mask=cmask, other=0.0)
    return total


# ------------------------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_kernel(X, Y, SCALE, SHIFT, MEAN, RSTD, PART, C, CB, L, L_SPLIT, S, NC, eps_hi, eps_mid, eps_lo,
                CHANNELS_LAST: tl.constexpr, MODE: tl.constexpr, SINGLE: tl.constexpr, BLOCK_L: tl.constexpr,
                BLOCK_C: tl.constexpr, IDX64: tl.constexpr):
    """Forward of each plane of L elements::

        mean = sum(x) / L,    var = sum((x - mean)^2) / L
        rstd = 1 / sqrt(var + eps)
        y    = (x - mean) * (rstd * scale) + shift       (centred first: no cancellation at large offsets)

    The mean is carried as k + mean_rel (a shift k near it and a small correction) until y is written, so
    x - mean is not limited by the rounding of mean to the acc dtype. Single tile: k = sum(x)/L, then the
    corrected two-pass algorithm: mean_rel = sum(x - k)/L, M2 = sum((x - k - mean_rel)^2). Loop: _welford.
    MODE FUSED does it all; PARTIAL writes range s's (k, mean_rel, M2) to PART[0..2, s]; APPLY shifts every
    range to range 0's k and Chan-merges them (every range but the last holds L_SPLIT rows), then writes y on
    range s and, for range 0, mean and rstd. eps arrives as split64's float32 triple (Triton passes Python
    floats as float32), so the float64 sum sees it exactly.
    """
    ACC: tl.constexpr = MEAN.dtype.element_ty
    n, c, cmask, first, s, l0, l1 = _coords(C, CB, L, L_SPLIT, BLOCK_C, IDX64)
    stat = n * C + c
    rows = tl.arange(0, BLOCK_L)
    if MODE == APPLY:
        k = tl.load(PART + stat, mask=cmask, other=0.0)
        mean_rel = tl.zeros([BLOCK_C], ACC)
        m2 = tl.zeros([BLOCK_C], ACC)
        for j in range(S):
            nb = tl.cast(tl.minimum(L_SPLIT, L - j * L_SPLIT), ACC)
            mb = (tl.load(PART + j * NC + stat, mask=cmask, other=0.0) - k) + \
                tl.load(PART + (S + j) * NC + stat, mask=cmask, other=0.0)
            m2b = tl.load(PART + (2 * S + j) * NC + stat, mask=cmask, other=0.0)
            mean_rel, m2 = _chan(tl.cast(j * L_SPLIT, ACC), mean_rel, m2, nb, mb, m2b)
    elif SINGLE:
        x, offs, mask = _tile(X, n, c, cmask, rows, L, C, L, ACC, CHANNELS_LAST, True)
        k = _colsum(x, BLOCK_L, BLOCK_C) / L
        xc = tl.where(mask, x - k[None, :], 0.0)
        mean_rel = _colsum(xc, BLOCK_L, BLOCK_C) / L  # what rounding k lost
        xc = tl.where(mask, xc - mean_rel[None, :], 0.0)
        m2 = _colsum(xc * xc, BLOCK_L, BLOCK_C)
    else:
        k, mean_rel, m2 = _welford(X, n, c, cmask, l0, l1, C, L, ACC, CHANNELS_LAST, BLOCK_L, BLOCK_C)

    if MODE == PARTIAL:
        tl.store(PART + s * NC + stat, k, mask=cmask)
        tl.store(PART + (S + s) * NC + stat, mean_rel, mask=cmask)
        tl.store(PART + (2 * S + s) * NC + stat, m2, mask=cmask)
    else:
        # rstd in float64 whatever ACC: a per-plane scalar (cheap even where float64 is slow), and it leaves the
        # rounding of M2 as the only error (float32 would add four roundings: /L, +eps, sqrt, 1/).
        var_eps = tl.cast(m2, tl.float64) / L + join64(eps_hi, eps_mid, eps_lo, tl.float64)
        rstd = tl.cast(1.0 / tl.sqrt(var_eps), ACC)
        tl.store(MEAN + stat, k + mean_rel, mask=first)
        tl.store(RSTD + stat, rstd, mask=first)
        a = (rstd * tl.load(SCALE + stat, mask=cmask, other=0.0))[None, :]
        b = tl.load(SHIFT + stat, mask=cmask, other=0.0)[None, :]
        OUT: tl.constexpr = Y.dtype.element_ty
        if SINGLE:
            tl.store(Y + offs, (xc * a + b).to(OUT), mask=mask)
        else:
            n_full = (l1 - l0) // BLOCK_L
            k = k[None, :]
            mean_rel = mean_rel[None, :]
            xt, offt, maskt = _tile(X, n, c, cmask, l0 + n_full * BLOCK_L + rows, l1, C, L, ACC, CHANNELS_LAST, True)
            tl.store(Y + offt, (((xt - k) - mean_rel) * a + b).to(OUT), mask=maskt)
            for i in range(n_full):  # backwards: the last chunks read are the likeliest still in L2
                l = l0 + (n_full - 1 - i) * BLOCK_L + rows
                x, offs, mask = _tile(X, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, False)
                tl.store(Y + offs, (((x - k) - mean_rel) * a + b).to(OUT), mask=mask)


# ------------------------------------------------------------------------------------------------ backward
@triton.jit
def _kahan(total, comp, v):
    """Kahan's compensated sum: the lane holds total - comp to about twice the working precision. Plain lane
    sums over many chunks were 2-4x less accurate than eager's cascade summation on 8K-element planes."""
    y = v - comp
    t = total + y
    return t, (t - total) - y


@triton.jit
def _bwd_terms(GY, X, n, c, cmask, l, l1, mean, rstd, C, L,
               ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr, ROW_MASK: tl.constexpr):
    """One chunk's summands: gy and gy * (x - mean) (times rstd once, after the sum: one rounding fewer a term)."""
    x, _, _ = _tile(X, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    g, _, _ = _tile(GY, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    return g, g * (x - mean)


@triton.jit
def _bwd_out(GY, X, GX, n, c, cmask, l, l1, mean, rstd, k, m_g, m_gx, C, L,
             ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr, ROW_MASK: tl.constexpr):
    """gx = k * (gy - m_g - xhat * m_gx) on one chunk (k = scale * rstd)."""
    x, offs, mask = _tile(X, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    g, _, _ = _tile(GY, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    tl.store(GX + offs, (k * (g - m_g - (x - mean) * rstd * m_gx)).to(GX.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(GY, X, MEAN, RSTD, SCALE, GX, GSCALE, GSHIFT, PART, C, CB, L, L_SPLIT, S, NC,
                CHANNELS_LAST: tl.constexpr, MODE: tl.constexpr, SINGLE: tl.constexpr, BLOCK_L: tl.constexpr,
                BLOCK_C: tl.constexpr, IDX64: tl.constexpr):
    """Backward of each plane, with xhat = (x - mean) * rstd::

        gshift = sum(gy),   gscale = sum(gy * xhat)
        gx     = scale * rstd * (gy - gshift / L - xhat * gscale / L)

    Two plain sums (mean and rstd are given), kept per lane across chunks and reduced once. MODE as in the
    forward: PARTIAL writes range s's two sums, APPLY adds the S partials and writes gx on range s.
    """
    ACC: tl.constexpr = MEAN.dtype.element_ty
    n, c, cmask, first, s, l0, l1 = _coords(C, CB, L, L_SPLIT, BLOCK_C, IDX64)
    stat = n * C + c
    rows = tl.arange(0, BLOCK_L)
    n_full = (l1 - l0) // BLOCK_L  # full chunks of this range; a partial tail chunk may follow
    mean = tl.load(MEAN + stat, mask=cmask, other=0.0)[None, :]
    r1 = tl.load(RSTD + stat, mask=cmask, other=0.0)
    rstd = r1[None, :]
    if MODE == APPLY:
        s_g = _sum_partials(PART, 0, stat, cmask, S, NC, ACC, BLOCK_C)
        s_gx = _sum_partials(PART, 1, stat, cmask, S, NC, ACC, BLOCK_C)
    elif SINGLE:
        x, offs, mask = _tile(X, n, c, cmask, rows, L, C, L, ACC, CHANNELS_LAST, True)
        g, _, _ = _tile(GY, n, c, cmask, rows, L, C, L, ACC, CHANNELS_LAST, True)
        xhat = (x - mean) * rstd
        s_g = _colsum(g, BLOCK_L, BLOCK_C)
        s_gx = _colsum(g * (x - mean), BLOCK_L, BLOCK_C) * r1
    else:
        t_g = tl.zeros([BLOCK_L, BLOCK_C], ACC)
        t_gx = tl.zeros([BLOCK_L, BLOCK_C], ACC)
        c_g = tl.zeros([BLOCK_L, BLOCK_C], ACC)
        c_gx = tl.zeros([BLOCK_L, BLOCK_C], ACC)
        for i in range(n_full):
            g, gxh = _bwd_terms(GY, X, n, c, cmask, l0 + i * BLOCK_L + rows, l1, mean, rstd, C, L, ACC,
                                CHANNELS_LAST, False)
            t_g, c_g = _kahan(t_g, c_g, g)
            t_gx, c_gx = _kahan(t_gx, c_gx, gxh)
        g, gxh = _bwd_terms(GY, X, n, c, cmask, l0 + n_full * BLOCK_L + rows, l1, mean, rstd, C, L, ACC,
                            CHANNELS_LAST, True)  # the tail chunk
        s_g = _colsum((t_g - c_g) + g, BLOCK_L, BLOCK_C)
        s_gx = _colsum((t_gx - c_gx) + gxh, BLOCK_L, BLOCK_C) * r1

    if MODE == PARTIAL:
        tl.store(PART + s * NC + stat, s_g, mask=cmask)
        tl.store(PART + (S + s) * NC + stat, s_gx, mask=cmask)
    else:
        tl.store(GSCALE + stat, s_gx, mask=first)
        tl.store(GSHIFT + stat, s_g, mask=first)
        k = rstd * tl.load(SCALE + stat, mask=cmask, other=0.0)[None, :]
        m_g = (s_g / L)[None, :]
        m_gx = (s_gx / L)[None, :]
        OUT: tl.constexpr = GX.dtype.element_ty
        if SINGLE:
            tl.store(GX + offs, (k * (g - m_g - xhat * m_gx)).to(OUT), mask=mask)
        else:  # the tail chunk first, then the full chunks backwards (see the forward)
            _bwd_out(GY, X, GX, n, c, cmask, l0 + n_full * BLOCK_L + rows, l1, mean, rstd, k, m_g, m_gx, C, L,
                     ACC, CHANNELS_LAST, True)
            for i in range(n_full):
                _bwd_out(GY, X, GX, n, c, cmask, l0 + (n_full - 1 - i) * BLOCK_L + rows, l1, mean, rstd, k, m_g,
                         m_gx, C, L, ACC, CHANNELS_LAST, False)


# ----------------------------------------------------------------------------------------- double backward
@triton.jit
def _dbwd_terms(GGX, GY, X, n, c, cmask, l, l1, mean, rstd, C, L,
                ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr, ROW_MASK: tl.constexpr):
    """One chunk's summands: gy, gy*(x - mean), v, v*(x - mean) and v*gy (v = ggx)."""
    x, _, _ = _tile(X, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    g, _, _ = _tile(GY, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    v, _, _ = _tile(GGX, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    xc = x - mean  # the xhat sums are taken over x - mean and scaled by rstd once, as in the backward
    return g, g * xc, v, v * xc, v * g


@triton.jit
def _dbwd_out(x, g, v, offs, mask, GX2, GGY, mean, rstd, w, u_w, u_b, m_g, m_gx, m_v, m_vx, cc):
    """Write the two elementwise outputs of the double backward (ggy, gx2) for one tile; see _dbwd_kernel."""
    xhat = (x - mean) * rstd
    p_g = g - m_g - xhat * m_gx
    p_v = v - m_v - xhat * m_vx
    ggy = w * rstd * p_v + u_w * xhat + u_b
    gx2 = u_w * rstd * p_g - w * rstd * rstd * (cc * xhat + m_gx * p_v + m_vx * p_g)
    tl.store(GGY + offs, ggy.to(GGY.dtype.element_ty), mask=mask)
    tl.store(GX2 + offs, gx2.to(GX2.dtype.element_ty), mask=mask)


@triton.jit
def _dbwd_chunk(GGX, GY, X, GX2, GGY, n, c, cmask, l, l1, mean, rstd, w, u_w, u_b, m_g, m_gx, m_v, m_vx, cc, C, L,
                ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr, ROW_MASK: tl.constexpr):
    """Load one chunk of x, gy, ggx and write its ggy and gx2."""
    x, offs, mask = _tile(X, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    g, _, _ = _tile(GY, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    v, _, _ = _tile(GGX, n, c, cmask, l, l1, C, L, ACC, CHANNELS_LAST, ROW_MASK)
    _dbwd_out(x, g, v, offs, mask, GX2, GGY, mean, rstd, w, u_w, u_b, m_g, m_gx, m_v, m_vx, cc)


@triton.jit
def _dbwd_kernel(GGX, GGSCALE, GGSHIFT, GY, X, MEAN, RSTD, SCALE, GX2, GGY, GSCALE2, PART,
                 C, CB, L, L_SPLIT, S, NC, CHANNELS_LAST: tl.constexpr, MODE: tl.constexpr, SINGLE: tl.constexpr,
                 BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, IDX64: tl.constexpr):
    """Double backward of each plane: the gradients of <ggx, gx> + <ggscale, gscale> + <ggshift, gshift>.

    With v = ggx, u_w = ggscale, u_b = ggshift, w = scale, r = rstd, xhat = (x - mean) * r, the plane means
    m_g = mean(gy), m_gx = mean(gy*xhat), m_v = mean(v), m_vx = mean(v*xhat), m_vg = mean(v*gy) and the
    projection P(z) = z - m_z - xhat * m_zx::

        cc      = m_vg - m_g*m_v - m_gx*m_vx
        ggy     = w*r*P(v) + u_w*xhat + u_b
        gx2     = -w*r^2 * (cc*xhat + m_gx*P(v) + m_vx*P(gy)) + u_w*r*P(gy)
        gscale2 = L*r*cc

    Five plain sums, then one elementwise pass. MODE as in the forward (PART holds the five sums).
    """
    ACC: tl.constexpr = MEAN.dtype.element_ty
    n, c, cmask, first, s, l0, l1 = _coords(C, CB, L, L_SPLIT, BLOCK_C, IDX64)
    stat = n * C + c
    rows = tl.arange(0, BLOCK_L)
    n_full = (l1 - l0) // BLOCK_L  # full chunks of this range; a partial tail chunk may follow
    mean = tl.load(MEAN + stat, mask=cmask, other=0.0)[None, :]
    r1 = tl.load(RSTD + stat, mask=cmask, other=0.0)
    rstd = r1[None, :]
    if MODE == APPLY:
        s_g = _sum_partials(PART, 0, stat, cmask, S, NC, ACC, BLOCK_C)
        s_gx = _sum_partials(PART, 1, stat, cmask, S, NC, ACC, BLOCK_C)
        s_v = _sum_partials(PART, 2, stat, cmask, S, NC, ACC, BLOCK_C)
        s_vx = _sum_partials(PART, 3, stat, cmask, S, NC, ACC, BLOCK_C)
        s_vg = _sum_partials(PART, 4, stat, cmask, S, NC, ACC, BLOCK_C)
    elif SINGLE:
        x, offs, mask = _tile(X, n, c, cmask, rows, L, C, L, ACC, CHANNELS_LAST, True)
        g, _, _ = _tile(GY, n, c, cmask, rows, L, C, L, ACC, CHANNELS_LAST, True)
        v, _, _ = _tile(GGX, n, c, cmask, rows, L, C, L, ACC, CHANNELS_LAST, True)
        s_g = _colsum(g, BLOCK_L, BLOCK_C)
        s_gx = _colsum(g * (x - mean), BLOCK_L, BLOCK_C) * r1
        s_v = _colsum(v, BLOCK_L, BLOCK_C)
        s_vx = _colsum(v * (x - mean), BLOCK_L, BLOCK_C) * r1
        s_vg = _colsum(v * g, BLOCK_L, BLOCK_C)
    else:
        z = tl.zeros([BLOCK_L, BLOCK_C], ACC)
        t_g, t_gx, t_v, t_vx, t_vg = z, z, z, z, z  # Kahan totals and compensations, as in the backward
        c_g, c_gx, c_v, c_vx, c_vg = z, z, z, z, z
        for i in range(n_full):
            g, gxh, v, vxh, vg = _dbwd_terms(GGX, GY, X, n, c, cmask, l0 + i * BLOCK_L + rows, l1, mean, rstd, C, L,
                                             ACC, CHANNELS_LAST, False)
            t_g, c_g = _kahan(t_g, c_g, g)
            t_gx, c_gx = _kahan(t_gx, c_gx, gxh)
            t_v, c_v = _kahan(t_v, c_v, v)
            t_vx, c_vx = _kahan(t_vx, c_vx, vxh)
            t_vg, c_vg = _kahan(t_vg, c_vg, vg)
        g, gxh, v, vxh, vg = _dbwd_terms(GGX, GY, X, n, c, cmask, l0 + n_full * BLOCK_L + rows, l1, mean, rstd, C, L,
                                         ACC, CHANNELS_LAST, True)  # the tail chunk
        s_g = _colsum((t_g - c_g) + g, BLOCK_L, BLOCK_C)
        s_gx = _colsum((t_gx - c_gx) + gxh, BLOCK_L, BLOCK_C) * r1
        s_v = _colsum((t_v - c_v) + v, BLOCK_L, BLOCK_C)
        s_vx = _colsum((t_vx - c_vx) + vxh, BLOCK_L, BLOCK_C) * r1
        s_vg = _colsum((t_vg - c_vg) + vg, BLOCK_L, BLOCK_C)

    if MODE == PARTIAL:
        tl.store(PART + s * NC + stat, s_g, mask=cmask)
        tl.store(PART + (S + s) * NC + stat, s_gx, mask=cmask)
        tl.store(PART + (2 * S + s) * NC + stat, s_v, mask=cmask)
        tl.store(PART + (3 * S + s) * NC + stat, s_vx, mask=cmask)
        tl.store(PART + (4 * S + s) * NC + stat, s_vg, mask=cmask)
    else:
        m_g = s_g / L
        m_gx = s_gx / L
        m_v = s_v / L
        m_vx = s_vx / L
        cc_l = s_vg - s_g * m_v - s_gx * m_vx  # L * cc, from the sums: one rounding fewer on gscale2
        tl.store(GSCALE2 + stat, r1 * cc_l, mask=first)
        cc = cc_l / L
        m_g = m_g[None, :]
        m_gx = m_gx[None, :]
        m_v = m_v[None, :]
        m_vx = m_vx[None, :]
        cc = cc[None, :]
        w = tl.load(SCALE + stat, mask=cmask, other=0.0)[None, :]
        u_w = tl.load(GGSCALE + stat, mask=cmask, other=0.0)[None, :]
        u_b = tl.load(GGSHIFT + stat, mask=cmask, other=0.0)[None, :]
        if SINGLE:
            _dbwd_out(x, g, v, offs, mask, GX2, GGY, mean, rstd, w, u_w, u_b, m_g, m_gx, m_v, m_vx, cc)
        else:  # the tail chunk first, then the full chunks backwards (see the forward)
            _dbwd_chunk(GGX, GY, X, GX2, GGY, n, c, cmask, l0 + n_full * BLOCK_L + rows, l1, mean, rstd, w, u_w, u_b,
                        m_g, m_gx, m_v, m_vx, cc, C, L, ACC, CHANNELS_LAST, True)
            for i in range(n_full):
                _dbwd_chunk(GGX, GY, X, GX2, GGY, n, c, cmask, l0 + (n_full - 1 - i) * BLOCK_L + rows, l1, mean, rstd,
                            w, u_w, u_b, m_g, m_gx, m_v, m_vx, cc, C, L, ACC, CHANNELS_LAST, False)


# --------------------------------------------------------------------------------------------- launchers
class _Plan(NamedTuple):
    channels_last: bool
    n: int  # samples as the kernel sees them (1 for contiguous: the planes are flattened)
    c: int  # planes per sample as the kernel sees them
    length: int  # L
    block_l: int
    block_c: int
    single: bool
    splits: int
    l_split: int  # rows per range (a multiple of block_l); L when splits == 1
    num_warps: int
    idx64: bool


def _pow2_floor(v: int) -> int:
    return 1 << (max(int(v), 1).bit_length() - 1)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return CPU_SMS


def _plan(x: torch.Tensor, n_in: int) -> _Plan:
    """Tile sizes and strategy for ``x`` (canonical) when a kernel reads ``n_in`` tensors of x's shape."""
    N, C = x.shape[:2]
    L = math.prod(x.shape[2:])
    cl = is_channels_last(x)
    acc_bytes = 8 if x.dtype == torch.float64 else 4
    single_max = _pow2_floor(SINGLE_BUDGET * 4 // acc_bytes // (n_in + 1))  # elements per input tile
    loop_tile = _pow2_floor(LOOP_BUDGET * 4 // acc_bytes // n_in)
    min_groups = PROGRAMS_PER_SM * _sm_count(x.device)
    p2l = triton.next_power_of_2(L)
    if cl:
        n, c = N, C
        block_c = min(triton.next_power_of_2(C), max(1, ROW_BYTES // x.element_size()))
        single = p2l * block_c <= single_max
        block_l = p2l if single else max(1, loop_tile // block_c)
    else:
        n, c = 1, N * C
        single = p2l <= single_max
        if single:  # pack planes up to PACK_TARGET elements, but keep enough programs to fill the GPU
            block_l = p2l
            block_c = min(triton.next_power_of_2(c), max(1, _pow2_floor(PACK_TARGET // p2l)))
            while block_c > 1 and cdiv(c, block_c) < min_groups:
                block_c //= 2
        else:
            block_l, block_c = loop_tile, 1
    splits, l_split = 1, L
    groups = n * cdiv(c, block_c)
    if not single and groups < min_groups:
        # Aim at ~2x min_groups programs, each range at least two chunks long.
        splits = min(cdiv(2 * min_groups, groups), cdiv(L, 2 * block_l))
        l_split = cdiv(cdiv(L, max(splits, 1)), block_l) * block_l
        splits = cdiv(L, l_split)
        if splits == 1:
            l_split = L
    num_warps = min(16, _pow2_floor(block_l * block_c * n_in // 512))
    return _Plan(cl, n, c, L, block_l, block_c, single, splits, l_split, num_warps, x.numel() >= 2**31)


def _launch(kernel, plan: _Plan, tensors: tuple, n_part: int, acc: torch.dtype, *extra, **constexprs) -> None:
    """Run ``kernel`` under ``plan``: one FUSED launch, or PARTIAL then APPLY through a (n_part, S, N*C) buffer."""
    x = tensors[0]
    nc = x.shape[0] * x.shape[1]
    cb = cdiv(plan.c, plan.block_c)
    grid = (plan.n * cb, plan.splits)
    meta = dict(CHANNELS_LAST=plan.channels_last, BLOCK_L=plan.block_l, BLOCK_C=plan.block_c, IDX64=plan.idx64,
                num_warps=plan.num_warps, **LAUNCH, **constexprs)
    scalars = (plan.c, cb, plan.length, plan.l_split, plan.splits, nc) + extra
    if plan.splits == 1:
        kernel[grid](*tensors, x, *scalars, MODE=FUSED.value, SINGLE=plan.single, **meta)  # PART unused
        return
    part = torch.empty((n_part, plan.splits, nc), dtype=acc, device=x.device)
    for mode in (PARTIAL.value, APPLY.value):
        kernel[grid](*tensors, part, *scalars, MODE=mode, SINGLE=False, **meta)


def _per_plane(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """An (N, C) input as the kernels index it: contiguous, in the acc dtype (a no-op in the usual case)."""
    return t.to(acc).contiguous()


@on_input_device
def forward(x, scale, shift, eps):
    """``reference_fwd``: returns ``(y, mean, rstd)``; y in x's layout and dtype, stats (N, C) in the acc dtype."""
    x = canonical(x)
    acc = acc_dtype(x.dtype)
    y = empty_like_layout(x)
    mean = torch.empty(x.shape[:2], dtype=acc, device=x.device)
    rstd = torch.empty_like(mean)
    if x.numel() == 0:
        mean.fill_(math.nan)  # the mean of an empty plane, as the reference has it
        rstd.fill_(math.nan)
        return y, mean, rstd
    _launch(_fwd_kernel, _plan(x, 1), (x, y, _per_plane(scale, acc), _per_plane(shift, acc), mean, rstd), 3, acc,
            *split64(eps))
    return y, mean, rstd


@on_input_device
def backward(gy, x, mean, rstd, scale):
    """``reference_bwd``: returns ``(gx, gscale, gshift)``; gx like x, the sums (N, C) in the acc dtype."""
    x = canonical(x)
    gy = match_layout(gy, x)
    acc = acc_dtype(x.dtype)
    gx = empty_like_layout(x)
    gscale = torch.zeros(x.shape[:2], dtype=acc, device=x.device)
    gshift = torch.zeros_like(gscale)
    if x.numel() == 0:
        return gx, gscale, gshift
    _launch(_bwd_kernel, _plan(x, 2),
            (gy, x, _per_plane(mean, acc), _per_plane(rstd, acc), _per_plane(scale, acc), gx, gscale, gshift),
            2, acc)
    return gx, gscale, gshift


@on_input_device
def double_backward(ggx, ggscale, ggshift, gy, x, mean, rstd, scale):
    """``reference_dbwd``: returns ``(gx2, ggy, gscale2)``; gx2 like x, ggy like x in gy's dtype, gscale2 (N, C)."""
    x = canonical(x)
    gy = match_layout(gy, x)
    ggx = match_layout(ggx, x)
    acc = acc_dtype(x.dtype)
    gx2 = empty_like_layout(x)
    ggy = empty_like_layout(x, gy.dtype)
    gscale2 = torch.empty(x.shape[:2], dtype=acc, device=x.device)
    if x.numel() == 0:
        gscale2.fill_(0.0 if x.shape[0] * x.shape[1] == 0 else math.nan)  # L * r * c with c a mean over nothing
        return gx2, ggy, gscale2
    stats = tuple(_per_plane(t, acc) for t in (ggscale, ggshift))
    _launch(_dbwd_kernel, _plan(x, 3),
            (ggx, *stats, gy, x, _per_plane(mean, acc), _per_plane(rstd, acc), _per_plane(scale, acc), gx2, ggy,
             gscale2), 5, acc)
    return gx2, ggy, gscale2
