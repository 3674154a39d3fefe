"""Triton kernels of group norm with a per-(n, c) affine and a fused activation: forward, backward and (without
modulation maps) double backward.

The launchers :func:`forward`, :func:`backward` and :func:`double_backward` return what ``reference_fwd``,
``reference_bwd`` and ``reference_dbwd`` in :mod:`fastgan.ops.group_norm_kernels` return (the math is there); that
module wraps them as ``fastgan::group_norm_*_triton``. With maps the double backward is composite (see there).

One program per (n, g) group. The group is one contiguous run of ``M = Cg * L`` elements (channel after channel),
walked in tiles ``[BLOCK_C, BLOCK_L]`` (BLOCK_C channels of the group by BLOCK_L positions): a tile's rows are
contiguous, and a row is one channel, so the per-(n, c) affine and the per-channel backward sums are row-wise.
Channels-last and other strided inputs are copied to contiguous first (a native channels-last path, and
splitting a large group over several programs, are future work).

Statistics are accumulated in float32 (float64 for float64 input) in tile-shaped accumulators, reduced once;
the (N, C) affine and its gradients are float64 (stored from the ACC sums).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastgan.ops._layout import is_channels_last, match_layout
from fastgan.ops.instance_norm_ref import acc_dtype

from ._device import on_input_device
from ._math import LAUNCH, div_, exp_
from ._params import join64, split64

__all__ = ["forward", "backward", "double_backward"]

# Heuristic knobs, module-level so tests can shrink them and drive the multi-tile loops with tiny inputs.
TILE = 2048  # elements per tile
MAX_BLOCK_L = 1024  # positions per tile row

LINEAR, RELU, LRELU, SILU = 0, 1, 2, 5  # bias_act's activation codes


@triton.jit
def _act(z, alpha, ACT: tl.constexpr):
    """f(z); NaN propagates through relu/lrelu (``z < 0`` is false for NaN)."""
    if ACT == 1:
        return tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        return tl.where(z < 0, z * alpha, z)
    elif ACT == 5:
        return div_(z, 1.0 + exp_(-z))
    else:
        return z


@triton.jit
def _act_d1(z, alpha, ACT: tl.constexpr):
    """f'(z): relu 1 above 0 else 0, lrelu 1 above 0 else alpha, silu s * (1 + z * (1 - s)) with s = sigmoid(z)."""
    if ACT == 1:
        return tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        return tl.where(z > 0, 1.0, alpha)
    elif ACT == 5:
        s = div_(1.0, 1.0 + exp_(-z))
        return s * (1.0 + z * (1.0 - s))
    else:
        return z * 0.0 + 1.0


@triton.jit
def _tile(ptr, base, c0, l0, Cg, L, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Load channels [c0, c0 + BLOCK_C) x positions [l0, l0 + BLOCK_L) of a group as ACC; also the offsets, the
    mask and the channel indices within the group (for the per-channel affine)."""
    rc = c0 + tl.arange(0, BLOCK_C)
    rl = l0 + tl.arange(0, BLOCK_L)
    mask = (rc < Cg)[:, None] & (rl < L)[None, :]
    offs = base + rc[:, None] * L + rl[None, :]
    return tl.load(ptr + offs, mask=mask, other=0.0).to(ACC), offs, mask, rc


@triton.jit
def _group(Cg, L, IDX64: tl.constexpr):
    """This program's group p = n*G + g, its M = Cg*L elements and their offset, and Cg and L to index with.

    IDX64 (an input of 2**31 elements or more, or N*C*3 sums of 2**31 or more): all of them int64, Cg and L too, so
    that a group of 2**31 elements or more (Cg and L each fit int32, their product does not) has right offsets
    ``rc * L + rl`` and a right M. tl.cast, not ``.to``: Triton passes an integer argument equal to 1 as a constant."""
    p = tl.program_id(0)
    if IDX64:
        p = p.to(tl.int64)
        Cg = tl.cast(Cg, tl.int64)
        L = tl.cast(L, tl.int64)
    M = Cg * L
    return p, M, p * M, Cg, L


@triton.jit
def _fwd_kernel(X, Y, SCALE, SHIFT, GAMMA, BETA, MEAN, RSTD, G, Cg, L, eps_hi, eps_mid, eps_lo, alpha_hi,
                alpha_mid, alpha_lo, ACT: tl.constexpr, MOD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
                IDX64: tl.constexpr):
    """Forward of group p = n*G + g over its M = Cg*L elements::

        k    = sum(x) / M                               (pass 1: a shift near the mean)
        s1   = sum(x - k),  s2 = sum((x - k)^2)         (pass 2)
        mean = k + s1/M,    var = (s2 - s1^2/M) / M,    rstd = 1 / sqrt(var + eps)
        z    = ((x - k) - s1/M) * (rstd * scale[n, c]) + shift[n, c]          (pass 3)
        y    = f(z),  or with the maps (MOD)  y = f(z + z * gamma + beta)

    The shift k makes s1 tiny, so the corrected two-pass variance loses nothing to cancellation, and x - mean is
    formed as (x - k) - s1/M, not limited by mean's rounding. rstd is computed in float64 (a per-group scalar);
    eps and alpha arrive as split64's float32 triples (Triton passes Python floats as float32).
    """
    ACC: tl.constexpr = MEAN.dtype.element_ty
    alpha = join64(alpha_hi, alpha_mid, alpha_lo, ACC)
    p, M, base, Cg, L = _group(Cg, L, IDX64)
    acc = tl.zeros([BLOCK_C, BLOCK_L], ACC)
    for c0 in range(0, Cg, BLOCK_C):
        for l0 in range(0, L, BLOCK_L):
            x, _, _, _ = _tile(X, base, c0, l0, Cg, L, ACC, BLOCK_C, BLOCK_L)
            acc += x
    k = tl.sum(tl.sum(acc, 1), 0) / M
    a1 = tl.zeros([BLOCK_C, BLOCK_L], ACC)
    a2 = tl.zeros([BLOCK_C, BLOCK_L], ACC)
    for c0 in range(0, Cg, BLOCK_C):
        for l0 in range(0, L, BLOCK_L):
            x, _, mask, _ = _tile(X, base, c0, l0, Cg, L, ACC, BLOCK_C, BLOCK_L)
            d = tl.where(mask, x - k, 0.0)
            a1 += d
            a2 += d * d
    s1 = tl.sum(tl.sum(a1, 1), 0)
    s2 = tl.sum(tl.sum(a2, 1), 0)
    mean_rel = s1 / M
    m2 = tl.cast(s2, tl.float64) - tl.cast(s1, tl.float64) * tl.cast(mean_rel, tl.float64)
    var_eps = tl.maximum(m2, 0.0) / M + join64(eps_hi, eps_mid, eps_lo, tl.float64)
    rstd = tl.cast(1.0 / tl.sqrt(var_eps), ACC)
    tl.store(MEAN + p, k + mean_rel)
    tl.store(RSTD + p, rstd)
    OUT: tl.constexpr = Y.dtype.element_ty
    for c0 in range(0, Cg, BLOCK_C):
        for l0 in range(0, L, BLOCK_L):
            x, offs, mask, rc = _tile(X, base, c0, l0, Cg, L, ACC, BLOCK_C, BLOCK_L)
            cm = rc < Cg
            # the affine is float64 (see group_norm_kernels): one rounding of rstd * scale to ACC
            a = (tl.cast(rstd, tl.float64) * tl.load(SCALE + p * Cg + rc, mask=cm, other=0.0)).to(ACC)
            b = tl.load(SHIFT + p * Cg + rc, mask=cm, other=0.0).to(ACC)
            z = ((x - k) - mean_rel) * a[:, None] + b[:, None]
            if MOD:
                z = z + z * tl.load(GAMMA + offs, mask=mask, other=0.0).to(ACC)
                z = z + tl.load(BETA + offs, mask=mask, other=0.0).to(ACC)
            tl.store(Y + offs, _act(z, alpha, ACT).to(OUT), mask=mask)


@triton.jit
def _gz_tile(GY, X, GAMMA, BETA, base, c0, l0, Cg, L, mean, rstd, a, b, alpha, ACC: tl.constexpr,
             ACT: tl.constexpr, MOD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """On one tile: gz (the gradient reaching z = xhat * scale + shift), x - mean, the offsets and mask, and with
    the maps also gu = gy * f'(u) and z (for ggamma = gu * z, gbeta = gu)."""
    x, offs, mask, _ = _tile(X, base, c0, l0, Cg, L, ACC, BLOCK_C, BLOCK_L)
    g, _, _, _ = _tile(GY, base, c0, l0, Cg, L, ACC, BLOCK_C, BLOCK_L)
    xc = x - mean
    z = xc * rstd * a[:, None] + b[:, None]
    if MOD:
        gm = tl.load(GAMMA + offs, mask=mask, other=0.0).to(ACC)
        if ACT != 0:
            u = z + z * gm + tl.load(BETA + offs, mask=mask, other=0.0).to(ACC)
            g = g * _act_d1(u, alpha, ACT)
        gu = g
        g = gu + gu * gm
    else:
        if ACT != 0:
            g = g * _act_d1(z, alpha, ACT)
        gu = g
    return tl.where(mask, g, 0.0), tl.where(mask, xc, 0.0), offs, mask, gu, z


@triton.jit
def _bwd_kernel(GY, X, MEAN, RSTD, SCALE, SHIFT, GAMMA, BETA, GX, GSCALE, GSHIFT, GGAMMA, GBETA, G, Cg, L, alpha_hi,
                alpha_mid, alpha_lo, ACT: tl.constexpr, MOD: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_L: tl.constexpr, IDX64: tl.constexpr):
    """Backward of group p, with xhat = (x - mean) * rstd, gz = gy * f'(xhat * scale + shift)::

        gshift[n, c] = sum_L(gz),   gscale[n, c] = rstd * sum_L(gz * (x - mean))        (pass 1, per channel)
        m_h  = sum_c scale_c * gshift_c / M,   m_hx = sum_c scale_c * gscale_c / M
        gx   = rstd * (scale[n, c] * gz - m_h - xhat * m_hx)                           (pass 2)

    With the maps (MOD), gu = gy * f'(z + z * gamma + beta) and gz = gu + gu * gamma; pass 2 also writes
    ggamma = gu * z and, for a non-linear f, gbeta = gu.
    """
    ACC: tl.constexpr = MEAN.dtype.element_ty
    alpha = join64(alpha_hi, alpha_mid, alpha_lo, ACC)
    p, M, base, Cg, L = _group(Cg, L, IDX64)
    mean = tl.load(MEAN + p)
    rstd = tl.load(RSTD + p)
    h = tl.zeros([BLOCK_C], ACC)
    hx = tl.zeros([BLOCK_C], ACC)
    for c0 in range(0, Cg, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        cm = rc < Cg
        a = tl.load(SCALE + p * Cg + rc, mask=cm, other=0.0).to(ACC)
        b = tl.load(SHIFT + p * Cg + rc, mask=cm, other=0.0).to(ACC)
        t_g = tl.zeros([BLOCK_C, BLOCK_L], ACC)
        t_gx = tl.zeros([BLOCK_C, BLOCK_L], ACC)
        for l0 in range(0, L, BLOCK_L):
            gz, xc, _, _, _, _ = _gz_tile(GY, X, GAMMA, BETA, base, c0, l0, Cg, L, mean, rstd, a, b, alpha, ACC, ACT,
                                          MOD, BLOCK_C, BLOCK_L)
            t_g += gz
            t_gx += gz * xc
        s_g = tl.sum(t_g, 1)
        s_gx = tl.sum(t_gx, 1) * rstd
        tl.store(GSHIFT + p * Cg + rc, s_g, mask=cm)
        tl.store(GSCALE + p * Cg + rc, s_gx, mask=cm)
        h += a * s_g
        hx += a * s_gx
    m_h = tl.sum(h, 0) / M
    m_hx = tl.sum(hx, 0) / M
    OUT: tl.constexpr = GX.dtype.element_ty
    for c0 in range(0, Cg, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        cm = rc < Cg
        a = tl.load(SCALE + p * Cg + rc, mask=cm, other=0.0).to(ACC)
        b = tl.load(SHIFT + p * Cg + rc, mask=cm, other=0.0).to(ACC)
        for l0 in range(0, L, BLOCK_L):
            gz, xc, offs, mask, gu, z = _gz_tile(GY, X, GAMMA, BETA, base, c0, l0, Cg, L, mean, rstd, a, b, alpha,
                                                 ACC, ACT, MOD, BLOCK_C, BLOCK_L)
            gx = rstd * (a[:, None] * gz - m_h - xc * rstd * m_hx)
            tl.store(GX + offs, gx.to(OUT), mask=mask)
            if MOD:
                tl.store(GGAMMA + offs, (gu * z).to(OUT), mask=mask)
                if ACT != 0:
                    tl.store(GBETA + offs, gu.to(OUT), mask=mask)


@triton.jit
def _act_d2(z, ACT: tl.constexpr):
    """f''(z): 0 for the piecewise-linear activations, silu s (1 - s) (2 + z (1 - 2 s))."""
    if ACT == 5:
        s = div_(1.0, 1.0 + exp_(-z))
        return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    else:
        return z * 0.0


@triton.jit
def _dbwd_tile(V, GY, X, base, c0, l0, Cg, L, mean, mean64, rstd, rstd64, a, b, alpha, ZACC: tl.constexpr,
               ACT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """On one tile, in float64: v (= ggx), gy, f'(z), gz = gy * f'(z), xhat = (x - mean64) * rstd64 (0 outside the
    mask), z, the offsets and mask. z and f'(z) are computed in ZACC from the stored mean exactly as the backward's
    _gz_tile has them (the same relu/lrelu masks); a, b are that tile's per-channel affine in ZACC."""
    x, offs, mask, _ = _tile(X, base, c0, l0, Cg, L, ZACC, BLOCK_C, BLOCK_L)
    # 16-bit values widen through float32 (exact); direct bfloat16 <-> float64 casts gave NaN in the interpreter
    g, _, _, _ = _tile(GY, base, c0, l0, Cg, L, tl.float32 if ZACC == tl.float32 else tl.float64, BLOCK_C, BLOCK_L)
    v, _, _, _ = _tile(V, base, c0, l0, Cg, L, tl.float32 if ZACC == tl.float32 else tl.float64, BLOCK_C, BLOCK_L)
    g = g.to(tl.float64)
    v = v.to(tl.float64)
    z = (x - mean) * rstd * a[:, None] + b[:, None]
    d1 = _act_d1(z, alpha, ACT).to(tl.float64)
    xh = tl.where(mask, (x.to(tl.float64) - mean64) * rstd64, 0.0)
    gz = tl.where(mask, g * d1, 0.0)
    return v, g, d1, gz, xh, z.to(tl.float64), offs, mask


@triton.jit
def _dbwd_chan(SCALE, SHIFT, UW, UB, p, Cg, c0, ZACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channels [c0, c0 + BLOCK_C) of group p: indices, mask, scale (float64), shift (ZACC, for z), ggscale and
    ggshift (float64)."""
    rc = c0 + tl.arange(0, BLOCK_C)
    cm = rc < Cg
    a = tl.load(SCALE + p * Cg + rc, mask=cm, other=0.0)
    b = tl.load(SHIFT + p * Cg + rc, mask=cm, other=0.0).to(ZACC)
    uw = tl.load(UW + p * Cg + rc, mask=cm, other=0.0)
    ub = tl.load(UB + p * Cg + rc, mask=cm, other=0.0)
    return rc, cm, a, b, uw, ub


@triton.jit
def _dbwd_kernel(V, UW, UB, GY, X, MEAN, RSTD, SCALE, SHIFT, SUMS, GGY, GX2, GSCALE2, GSHIFT2, G, Cg, L, eps_hi,
                 eps_mid, eps_lo, alpha_hi, alpha_mid, alpha_lo, ACT: tl.constexpr, BLOCK_C: tl.constexpr,
                 BLOCK_L: tl.constexpr, IDX64: tl.constexpr):
    """Double backward of group p without maps (v = ggx, uw = ggscale, ub = ggshift; the formulas and the names
    m_v, B2, A2, Q, Rz, T in group_norm_kernels' docstring)::

        per channel  G = sum gz, Gx = sum gz xhat, V = sum v, Vx = sum v xhat, VG = sum v gz   (pass 1, to SUMS)
        group means  m_h, A2, m_v, B2 of h = a gz, h xhat, v, v xhat;  C = mean(v * gx)
        g_scale = r (VG - m_v G - B2 Gx) [+ sum Rz xhat],  g_shift = [sum Rz]   ([...]: SiLU's pass 2)
        g_grad_y = f'(z) Q,  g_x = r (T - mean T - xhat mean(T xhat)) - r xhat C                 (pass 3)

    Sums and the elementwise combination are float64 (ACC): the combination cancels (g_x is a projection of terms
    scaled by rstd^2). Pass 1 also sums x - mean: its mean delta corrects the stored mean's rounding, which on
    2-element groups put the penalty gradient 20 float32 ulps off (eager CPU: under one). The kernel is
    memory-bound either way. rstd is recomputed in float64 from the same pass (sum of xhat^2): the stored float
    rstd's rounding, amplified by rstd^2 in the combination, was most of the remaining error.
    """
    ZACC: tl.constexpr = MEAN.dtype.element_ty
    ACC: tl.constexpr = tl.float64
    alpha = join64(alpha_hi, alpha_mid, alpha_lo, ZACC)
    p, M, base, Cg, L = _group(Cg, L, IDX64)
    mean = tl.load(MEAN + p)
    rz_acc = tl.load(RSTD + p)
    r_s = rz_acc.to(ACC)
    d_acc = tl.zeros([BLOCK_C], ACC)
    d2_acc = tl.zeros([BLOCK_C], ACC)
    h_acc = tl.zeros([BLOCK_C], ACC)
    a2_acc = tl.zeros([BLOCK_C], ACC)
    v_acc = tl.zeros([BLOCK_C], ACC)
    b2_acc = tl.zeros([BLOCK_C], ACC)
    vh_acc = tl.zeros([BLOCK_C], ACC)
    u_acc = tl.zeros([BLOCK_C], ACC)
    ux_acc = tl.zeros([BLOCK_C], ACC)
    for c0 in range(0, Cg, BLOCK_C):
        rc, cm, a, b, uw, _ub0 = _dbwd_chan(SCALE, SHIFT, UW, UB, p, Cg, c0, ZACC, BLOCK_C)
        t_g = tl.zeros([BLOCK_C, BLOCK_L], ACC)
        t_gx = tl.zeros([BLOCK_C, BLOCK_L], ACC)
        t_v = tl.zeros([BLOCK_C, BLOCK_L], ACC)
        t_vx = tl.zeros([BLOCK_C, BLOCK_L], ACC)
        t_vg = tl.zeros([BLOCK_C, BLOCK_L], ACC)
        t_d = tl.zeros([BLOCK_C, BLOCK_L], ACC)
        t_d2 = tl.zeros([BLOCK_C, BLOCK_L], ACC)
        for l0 in range(0, L, BLOCK_L):
            v, _, _, gz, xh, _, _, _ = _dbwd_tile(V, GY, X, base, c0, l0, Cg, L, mean, mean.to(ACC), rz_acc, r_s,
                                                  a.to(ZACC), b, alpha, ZACC, ACT, BLOCK_C, BLOCK_L)
            t_d += xh
            t_d2 += xh * xh
            t_g += gz
            t_gx += gz * xh
            t_v += v
            t_vx += v * xh
            t_vg += v * gz
        s_g = tl.sum(t_g, 1)
        s_gx = tl.sum(t_gx, 1)
        s_vg = tl.sum(t_vg, 1)
        tl.store(SUMS + (p * Cg + rc) * 3, s_g, mask=cm)
        tl.store(SUMS + (p * Cg + rc) * 3 + 1, s_gx, mask=cm)
        tl.store(SUMS + (p * Cg + rc) * 3 + 2, s_vg, mask=cm)
        h_acc += a * s_g
        a2_acc += a * s_gx
        v_acc += tl.sum(t_v, 1)
        b2_acc += tl.sum(t_vx, 1)
        vh_acc += a * s_vg
        u_acc += uw * s_g
        ux_acc += uw * s_gx
        d_acc += tl.sum(t_d, 1)
        d2_acc += tl.sum(t_d2, 1)
    # The pass used the stored mean and rstd (xhat_s = (x - mean) * r_s). With delta = mean(xhat_s), the exact
    # statistics are mean_e = mean + delta / r_s and r = 1 / sqrt(var + eps), var = (mean(xhat_s^2) - delta^2)
    # / r_s^2; the exact xhat = kr * (xhat_s - delta), kr = r / r_s, so sum(. * xhat) = kr * (sum(. * xhat_s)
    # - delta * sum(.)).
    delta = tl.sum(d_acc, 0) / M
    var = tl.maximum(tl.sum(d2_acc, 0) / M - delta * delta, 0.0) / (r_s * r_s)
    r = 1.0 / tl.sqrt(var + join64(eps_hi, eps_mid, eps_lo, tl.float64))
    kr = r / r_s
    m_h = tl.sum(h_acc, 0) / M
    a2 = kr * (tl.sum(a2_acc, 0) - delta * tl.sum(h_acc, 0)) / M
    m_v = tl.sum(v_acc, 0) / M
    b2 = kr * (tl.sum(b2_acc, 0) - delta * tl.sum(v_acc, 0)) / M
    cc = r * (tl.sum(vh_acc, 0) / M - m_v * m_h - b2 * a2)
    mt = -r * (m_v * a2 + m_h * b2) + tl.sum(u_acc, 0) / M
    mtx = -2.0 * r * a2 * b2 + kr * (tl.sum(ux_acc, 0) - delta * tl.sum(u_acc, 0)) / M
    mean_e = mean.to(ACC) + delta / r_s
    # SUMS is read back below by other threads of this program than those that stored it: a block barrier (it also
    # makes the stores visible); today's later reductions happen to place one, nothing guarantees it.
    tl.debug_barrier()
    for c0 in range(0, Cg, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        cm = rc < Cg
        s_g = tl.load(SUMS + (p * Cg + rc) * 3, mask=cm, other=0.0)
        s_gx = tl.load(SUMS + (p * Cg + rc) * 3 + 1, mask=cm, other=0.0)
        s_vg = tl.load(SUMS + (p * Cg + rc) * 3 + 2, mask=cm, other=0.0)
        gs = r * (s_vg - m_v * s_g - b2 * kr * (s_gx - delta * s_g))
        rz_s = tl.zeros([BLOCK_C], ACC)
        rzx_s = tl.zeros([BLOCK_C], ACC)
        if ACT == 5:
            _q1, _q2, a, b, uw, ub = _dbwd_chan(SCALE, SHIFT, UW, UB, p, Cg, c0, ZACC, BLOCK_C)
            t_r = tl.zeros([BLOCK_C, BLOCK_L], ACC)
            t_rx = tl.zeros([BLOCK_C, BLOCK_L], ACC)
            for l0 in range(0, L, BLOCK_L):
                v, g, _, _, xh, z, _, mask = _dbwd_tile(V, GY, X, base, c0, l0, Cg, L, mean, mean_e, rz_acc, r,
                                                        a.to(ZACC), b, alpha, ZACC, ACT, BLOCK_C, BLOCK_L)
                q = a[:, None] * (r * (v - m_v - b2 * xh)) + uw[:, None] * xh + ub[:, None]
                rz = tl.where(mask, q * g * _act_d2(z, ACT), 0.0)
                t_r += rz
                t_rx += rz * xh
            rz_s = tl.sum(t_r, 1)
            rzx_s = tl.sum(t_rx, 1)
            mt += tl.sum(a * rz_s, 0) / M
            mtx += tl.sum(a * rzx_s, 0) / M
        tl.store(GSCALE2 + p * Cg + rc, gs + rzx_s, mask=cm)
        tl.store(GSHIFT2 + p * Cg + rc, rz_s, mask=cm)
    OUT: tl.constexpr = GX2.dtype.element_ty
    for c0 in range(0, Cg, BLOCK_C):
        _, _, a, b, uw, ub = _dbwd_chan(SCALE, SHIFT, UW, UB, p, Cg, c0, ZACC, BLOCK_C)
        for l0 in range(0, L, BLOCK_L):
            v, g, d1, gz, xh, z, offs, mask = _dbwd_tile(V, GY, X, base, c0, l0, Cg, L, mean, mean_e, rz_acc, r,
                                                         a.to(ZACC), b, alpha, ZACC, ACT, BLOCK_C, BLOCK_L)
            q = a[:, None] * (r * (v - m_v - b2 * xh)) + uw[:, None] * xh + ub[:, None]
            t = uw[:, None] * gz - r * (v * a2 + a[:, None] * gz * b2)
            if ACT == 5:
                t += a[:, None] * (q * g * _act_d2(z, ACT))
            ggy = d1 * q
            gx2 = r * t - r * mt - r * (mtx + cc) * xh
            if OUT != tl.float64:  # through float32, as the loads
                ggy = ggy.to(tl.float32)
                gx2 = gx2.to(tl.float32)
            tl.store(GGY + offs, ggy.to(OUT), mask=mask)
            tl.store(GX2 + offs, gx2.to(OUT), mask=mask)


# --------------------------------------------------------------------------------------------- launchers
def _blocks(cg: int, length: int) -> tuple[int, int]:
    block_l = min(triton.next_power_of_2(length), MAX_BLOCK_L)
    block_c = max(1, min(triton.next_power_of_2(cg), TILE // block_l))
    return block_c, block_l


def _meta(x: torch.Tensor, groups: int) -> tuple[int, int, dict]:
    cg = x.shape[1] // groups
    length = math.prod(x.shape[2:])
    block_c, block_l = _blocks(cg, length)
    warps = min(8, max(1, block_c * block_l // 256))
    # int64 indexing also where the double backward's (N*C, 3) sums outgrow int32 (x of 2**30 elements can do that)
    idx64 = x.numel() >= 2**31 or x.shape[0] * x.shape[1] * 3 >= 2**31
    return cg, length, dict(BLOCK_C=block_c, BLOCK_L=block_l, IDX64=idx64, num_warps=warps, **LAUNCH)


def _maps(gamma, beta, x):
    """The maps as contiguous tensors in x's dtype (x itself stands in for the pointers when there are none)."""
    if gamma is None:
        return x, x, False
    return gamma.to(x.dtype).contiguous(), beta.to(x.dtype).contiguous(), True


@on_input_device
def forward(x, scale, shift, gamma, beta, groups: int, eps: float, act: int, alpha: float):
    """``reference_fwd``: ``(y, mean, rstd)``; y in x's layout and dtype, stats ``(N, G)`` in the acc dtype."""
    cl = is_channels_last(x)
    xc = x.contiguous()
    gm, bm, mod = _maps(gamma, beta, xc)
    acc = acc_dtype(x.dtype)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # dense strides even where x has size-1 dims
    mean = torch.empty((x.shape[0], groups), dtype=acc, device=x.device)
    rstd = torch.empty_like(mean)
    cg, length, meta = _meta(xc, groups)
    f64 = torch.float64
    _fwd_kernel[(x.shape[0] * groups,)](
        xc, y, scale.to(f64).contiguous(), shift.to(f64).contiguous(), gm, bm, mean, rstd, groups, cg, length,
        *split64(eps), *split64(alpha), ACT=int(act), MOD=mod, **meta)
    return (match_layout(y, x) if cl else y), mean, rstd


@on_input_device
def backward(gy, x, mean, rstd, scale, shift, gamma, beta, act: int, alpha: float):
    """``reference_bwd``: ``(gx, gscale, gshift, ggamma, gbeta)``; gx and the map gradients like x (0 elements where
    the op returns none), the sums ``(N, C)`` in float64."""
    cl = is_channels_last(x)
    xc = x.contiguous()
    gm, bm, mod = _maps(gamma, beta, xc)
    gyc = gy.to(x.dtype).contiguous()
    acc = acc_dtype(x.dtype)
    groups = mean.shape[1]
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    gscale = torch.empty(x.shape[:2], dtype=torch.float64, device=x.device)
    gshift = torch.empty_like(gscale)
    ggamma = torch.empty_like(gx) if mod else x.new_empty((0,))  # two distinct tensors: outputs may not alias
    gbeta = torch.empty_like(gx) if mod and act != 0 else x.new_empty((0,))
    cg, length, meta = _meta(xc, groups)
    f64 = torch.float64
    _bwd_kernel[(x.shape[0] * groups,)](
        gyc, xc, mean.to(acc).contiguous(), rstd.to(acc).contiguous(), scale.to(f64).contiguous(),
        shift.to(f64).contiguous(), gm, bm, gx, gscale, gshift, ggamma if mod else gx, gbeta if gbeta.numel() else gx,
        groups, cg, length, *split64(alpha), ACT=int(act), MOD=mod, **meta)

    def layout(t):
        return match_layout(t, x) if cl and t.numel() else t

    return layout(gx), gscale, gshift, layout(ggamma), layout(gbeta)


@on_input_device
def double_backward(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, shift, eps: float, act: int, alpha: float):
    """``reference_dbwd`` without maps: ``(g_gy, g_x, g_scale, g_shift)``; the first two like x, the sums
    ``(N, C)`` in float64."""
    cl = is_channels_last(x)
    xc = x.contiguous()
    acc = acc_dtype(x.dtype)
    groups = mean.shape[1]
    ggy = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    gx2 = torch.empty_like(ggy)
    gscale2 = torch.empty(x.shape[:2], dtype=torch.float64, device=x.device)
    gshift2 = torch.empty_like(gscale2)
    sums = torch.empty(x.shape[:2] + (3,), dtype=torch.float64, device=x.device)  # per channel G, Gx, VG
    cg, length, meta = _meta(xc, groups)
    f64 = torch.float64
    _dbwd_kernel[(x.shape[0] * groups,)](
        ggx.to(x.dtype).contiguous(), ggscale.to(f64).contiguous(), ggshift.to(f64).contiguous(),
        gy.to(x.dtype).contiguous(), xc, mean.to(acc).contiguous(), rstd.to(acc).contiguous(),
        scale.to(f64).contiguous(), shift.to(f64).contiguous(), sums, ggy, gx2, gscale2, gshift2, groups, cg, length,
        *split64(eps), *split64(alpha), ACT=int(act), **meta)

    def layout(t):
        return match_layout(t, x) if cl else t

    return layout(ggy), layout(gx2), gscale2, gshift2
