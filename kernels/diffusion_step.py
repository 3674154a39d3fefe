"""Triton kernel of one fused DDPM/DDIM step (the math: :mod:`fastgan.diffusion.steps`).

Per element, with the per-sample coefficients ``k[n] = (a_x, g, r, c_0, b_x, b_m, c_z)``::

    m   = u + w * (c - u)                  (HAS_U; else m = c)
    x0  = a_x * (x - g * m) + r * m,  clamped to [-clip, clip] when CLIP (NaN stays NaN)
    out = c_0 * x0 + b_x * x + b_m * m + c_z * z      (the z term when NOISE > 0)

(``x - g m`` cancels before the large ``a_x`` of a step near ``t = T`` scales it; ``b_x``, ``b_m`` fold the
predicted noise's terms: see :mod:`fastgan.diffusion.steps`.)

``z`` is read from Z (NOISE = 1) or drawn in the kernel (NOISE = 2) as :mod:`fastgan.diffusion.philox` defines:
the element of logical flat index ``i`` takes word ``i % 4`` of the Box–Muller pairs of
``Philox4x32-10(key = seed, counter = (i // 4, 0, 0))`` (``tl.randint4x``: the same round as the reference). The
seed is loaded from device memory, so the launch holds no host value that changes per step (CUDA-graph safe).

All tensors are read as flat memory in x's layout (contiguous or channels-last: the batch dimension is outermost
either way), so the sample of flat offset p is ``p // per_sample``. A block is ``(BLOCK // 4, 4)`` elements: when
memory order is logical order (contiguous), row r holds one Philox group and the four words are computed once per
row. Channels-last memory offsets are mapped to logical indices ``i = n CS + c S + s`` (``p = n CS + s C + c``) and
each element runs its own group's Philox (4x the integer work, still cheap next to the memory traffic).
Bytes: read x, c (and u, z), write out; nothing else.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import cdiv, on_input_device
from ._math import LAUNCH
from ._params import join64, split64

BLOCK = 1024
TWO_PI = tl.constexpr(6.283185307179586)


@triton.jit
def _uniform(r, ACC: tl.constexpr):
    # (r >> 9 + 1/2) 2^-23: exact in float32, in (0, 1), the same bits as the C++ kernel and the reference.
    return ((r >> 9).to(ACC) + 0.5) * 1.1920928955078125e-07


@triton.jit
def _noise(SEED, offs, row, col, sample_size, chans, spatial, CL: tl.constexpr, ACC: tl.constexpr):
    seed = tl.load(SEED)
    if CL:
        n = offs // sample_size
        rest = offs - n * sample_size
        s = rest // chans
        i = n * sample_size + (rest - s * chans) * spatial + s
        r0, r1, r2, r3 = tl.randint4x(seed, i >> 2)
        word = i & 3
    else:
        # Contiguous: row r of the block is group offs[r, 0] // 4 (BLOCK is a multiple of 4).
        r0, r1, r2, r3 = tl.randint4x(seed, row)
        word = col
    first = word < 2
    ua = _uniform(tl.where(first, r0, r2), ACC)
    ub = _uniform(tl.where(first, r1, r3), ACC)
    rho = tl.sqrt(-2.0 * tl.log(ua))
    theta = TWO_PI * ub
    return tl.where((word & 1) == 0, rho * tl.cos(theta), rho * tl.sin(theta))


@triton.jit
def _step_kernel(X, M, U, Z, SEED, K, OUT, numel, per_sample, sample_size, chans, spatial, guidance_hi,
                 guidance_mid, guidance_lo, clip_hi, clip_mid, clip_lo, HAS_U: tl.constexpr, NOISE: tl.constexpr,
                 CL: tl.constexpr, CLIP: tl.constexpr, BLOCK: tl.constexpr):
    ACC: tl.constexpr = K.dtype.element_ty
    guidance = join64(guidance_hi, guidance_mid, guidance_lo, ACC)
    clip = join64(clip_hi, clip_mid, clip_lo, ACC)
    ROWS: tl.constexpr = BLOCK // 4
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)[:, None]
    col = tl.arange(0, 4)[None, :]
    offs = row * 4 + col
    mask = offs < numel
    k = (offs // per_sample) * 7
    x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
    m = tl.load(M + offs, mask=mask, other=0.0).to(ACC)
    if HAS_U:
        u = tl.load(U + offs, mask=mask, other=0.0).to(ACC)
        m = u + guidance * (m - u)
    g = tl.load(K + k + 1, mask=mask, other=0.0)
    x0 = tl.load(K + k, mask=mask, other=0.0) * (x - g * m) + tl.load(K + k + 2, mask=mask, other=0.0) * m
    if CLIP:
        x0 = tl.where(x0 < -clip, -clip, tl.where(x0 > clip, clip, x0))
    # c_x x + c_e eps comes folded as b_x x + b_m m (a DDPM step's c_e = 0 multiplies no infinite eps).
    b_x = tl.load(K + k + 4, mask=mask, other=0.0)
    b_m = tl.load(K + k + 5, mask=mask, other=0.0)
    out = tl.load(K + k + 3, mask=mask, other=0.0) * x0 + b_x * x + b_m * m
    if NOISE == 1:
        z = tl.load(Z + offs, mask=mask, other=0.0).to(ACC)
        out += tl.load(K + k + 6, mask=mask, other=0.0) * z
    elif NOISE == 2:
        z = _noise(SEED, offs, row, col, sample_size, chans, spatial, CL, ACC)
        out += tl.load(K + k + 6, mask=mask, other=0.0) * z
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


@on_input_device
def step(x: torch.Tensor, m: torch.Tensor, u, z, coef: torch.Tensor, guidance: float, clip: float,
         seed: torch.Tensor | None = None, channels_last: bool = False) -> torch.Tensor:
    """Launch the fused step. ``x, m, u, z`` share x's shape and (dense, batch-outermost) layout; ``coef`` is
    ``(N, 7)`` or ``(1, 7)`` (shared by all samples), contiguous, in the accumulation dtype. With ``seed`` (a
    one-element int64 tensor on x's device) and no ``z``, the noise is drawn in the kernel; ``channels_last`` says
    x's memory is channels-last (for the logical element numbering). Returns a new tensor like x."""
    out = torch.empty_like(x)
    numel = x.numel()
    sample_size = numel // x.shape[0]
    # One coefficient row serves every sample (int timesteps): point every element at row 0.
    per_sample = numel if coef.shape[0] == 1 else sample_size
    chans = x.shape[1] if x.dim() > 1 else 1
    spatial = sample_size // chans
    noise = 1 if z is not None else (2 if seed is not None else 0)
    grid = (cdiv(numel, BLOCK),)
    _step_kernel[grid](x, m, u if u is not None else x, z if z is not None else x,
                       seed if seed is not None else coef, coef, out, numel, per_sample, sample_size, chans,
                       spatial, *split64(guidance), *split64(clip), HAS_U=u is not None, NOISE=noise,
                       CL=channels_last and noise == 2, CLIP=clip > 0, BLOCK=BLOCK, num_warps=4, **LAUNCH)
    return out
