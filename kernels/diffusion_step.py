"""Triton kernel of one fused DDPM/DDIM step (the math: :mod:`fastgan.diffusion.steps`).

Per element, with the per-sample coefficients ``k[n] = (a_x, a_m, e_x, e_m, c_0, c_x, c_e, c_z)``::

    m   = u + w * (c - u)                  (HAS_U; else m = c)
    x0  = a_x * x + a_m * m,  clamped to [-clip, clip] when CLIP (NaN stays NaN)
    eps = e_x * x + e_m * m
    out = c_0 * x0 + c_x * x + c_e * eps + c_z * z      (the z term when HAS_Z)

All tensors are read as flat memory in x's layout (contiguous or channels-last: the batch dimension is outermost
either way), so the sample of flat offset p is ``p // per_sample``; the eight coefficients of a sample are
gathered per element and stay in cache. Bytes: read x, c (and u, z), write out; nothing else.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _step_kernel(X, M, U, Z, K, OUT, numel, per_sample, guidance, clip,
                 HAS_U: tl.constexpr, HAS_Z: tl.constexpr, CLIP: tl.constexpr, BLOCK: tl.constexpr):
    ACC: tl.constexpr = K.dtype.element_ty
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    k = (offs // per_sample) * 8
    x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
    m = tl.load(M + offs, mask=mask, other=0.0).to(ACC)
    if HAS_U:
        u = tl.load(U + offs, mask=mask, other=0.0).to(ACC)
        m = u + guidance * (m - u)
    x0 = tl.load(K + k, mask=mask, other=0.0) * x + tl.load(K + k + 1, mask=mask, other=0.0) * m
    if CLIP:
        x0 = tl.where(x0 < -clip, -clip, tl.where(x0 > clip, clip, x0))
    eps = tl.load(K + k + 2, mask=mask, other=0.0) * x + tl.load(K + k + 3, mask=mask, other=0.0) * m
    out = (tl.load(K + k + 4, mask=mask, other=0.0) * x0 + tl.load(K + k + 5, mask=mask, other=0.0) * x
           + tl.load(K + k + 6, mask=mask, other=0.0) * eps)
    if HAS_Z:
        z = tl.load(Z + offs, mask=mask, other=0.0).to(ACC)
        out += tl.load(K + k + 7, mask=mask, other=0.0) * z
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


def step(x: torch.Tensor, m: torch.Tensor, u, z, coef: torch.Tensor, guidance: float, clip: float) -> torch.Tensor:
    """Launch the fused step. ``x, m, u, z`` share x's shape and (dense, batch-outermost) layout; ``coef`` is
    ``(N, 8)`` or ``(1, 8)`` (shared by all samples), contiguous, in the accumulation dtype. Returns a new tensor like x."""
    out = torch.empty_like(x)
    numel = x.numel()
    # One coefficient row serves every sample (int timesteps): point every element at row 0.
    per_sample = numel if coef.shape[0] == 1 else numel // x.shape[0]
    grid = (triton.cdiv(numel, BLOCK),)
    _step_kernel[grid](x, m, u if u is not None else x, z if z is not None else x, coef, out, numel,
                       per_sample, guidance, clip, HAS_U=u is not None, HAS_Z=z is not None,
                       CLIP=clip > 0, BLOCK=BLOCK, num_warps=4)
    return out
