"""Counter-based step noise: Philox4x32-10 plus Box–Muller, in plain PyTorch (the reference and test oracle).

The fused step draws its noise inside the kernel (C++ on CPU, Triton on GPU); this module defines the numbers those
kernels must produce, and ``impl="ref"`` draws with it.

**Philox4x32-10** (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the Random123 round):
a counter ``(c0, c1, c2, c3)`` and a key ``(k0, k1)`` of uint32 words go through ten rounds of::

    hi0, lo0 = mulhilo(0xD2511F53, c0)          (the 64-bit product's high and low words)
    hi1, lo1 = mulhilo(0xCD9E8D57, c2)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
    (k0, k1) += (0x9E3779B9, 0xBB67AE85)        (mod 2^32; the bump after the last round is unused)

This is also Triton's ``tl.randint4x`` round for a 64-bit offset, so the GPU kernel uses that.

**Which counter each element gets.** The seed is a non-negative int64 ``s`` (drawn from the caller's generator, one
per step); the key is ``(s mod 2^32, s >> 32)``. Elements are numbered by their *logical* flat index ``i`` in
x's shape (row-major over ``(N, C, H, W, ...)``, whatever the memory layout, so a channels-last tensor gets the same
noise as a contiguous one). Element ``i`` belongs to group ``j = i // 4``; the group's counter is
``(j mod 2^32, j >> 32, 0, 0)`` and its four output words ``(r0, r1, r2, r3)`` give four normals::

    u(r)   = (r >> 9 + 1/2) * 2^-23           in (0, 1), exact in float32 (23 random bits)
    rho    = sqrt(-2 log u(r0)),  theta = 2 pi u(r1)      ->  z[4j] = rho cos theta,  z[4j+1] = rho sin theta
    rho'   = sqrt(-2 log u(r2)),  theta' = 2 pi u(r3)     ->  z[4j+2], z[4j+3] likewise

evaluated in the step's accumulation dtype (float32; float64 for float64 inputs). The uniforms are the same bits in
every implementation; only log/sqrt/cos/sin round differently (a few float32 ulp). ``u >= 2^-24`` bounds ``|z|`` by
``sqrt(48 log 2) = 5.77``: the tails beyond it (probability 8e-9 per element) are cut.

The reference holds uint32 words in int64 tensors and forms the 64-bit products from 16-bit halves, so nothing
overflows.
"""
from __future__ import annotations

import math

import torch

__all__ = ["philox4x32", "uniforms", "normal", "draw_seed", "PHILOX_M", "PHILOX_W"]

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
MASK32 = 0xFFFFFFFF
ROUNDS = 10


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low uint32 words of ``a * b`` (``a`` a uint32 constant, ``b`` uint32 values in int64)."""
    a1, a0 = a >> 16, a & 0xFFFF
    b1, b0 = b >> 16, b & 0xFFFF
    p00, p01, p10, p11 = b0 * a0, b1 * a0, b0 * a1, b1 * a1  # each < 2^32
    mid = (p00 >> 16) + (p01 & 0xFFFF) + (p10 & 0xFFFF)
    lo = ((mid & 0xFFFF) << 16) | (p00 & 0xFFFF)
    hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)
    return hi & MASK32, lo


def philox4x32(counter, key, rounds: int = ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` of counters ``(c0, c1, c2, c3)`` (int64 tensors holding uint32 values, broadcastable)
    under ``key = (k0, k1)`` (ints or int64 tensors). Returns the four output words as int64 tensors."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & MASK32 for c in counter)
    k0, k1 = (torch.as_tensor(k, dtype=torch.int64, device=c0.device) & MASK32 for k in key)
    for r in range(rounds):
        hi0, lo0 = _mulhilo(PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r + 1 < rounds:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
    return c0, c1, c2, c3


def uniforms(words: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(r >> 9 + 1/2) * 2^-23``: exact, in (0, 1)."""
    return ((words >> 9).to(dtype) + 0.5) * 2.0**-23


def _box_muller(ra, rb, dtype):
    u1, u2 = uniforms(ra, dtype), uniforms(rb, dtype)
    rho = (-2.0 * torch.log(u1)).sqrt()
    theta = (2 * math.pi) * u2  # the constant rounded to dtype first, as the kernels do
    return rho * torch.cos(theta), rho * torch.sin(theta)


def normal(seed, shape, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The step noise for ``seed`` (int or one-element int64 tensor): a contiguous tensor of ``shape`` whose element
    at logical flat index ``i`` is the normal defined in the module docstring, computed in ``dtype``."""
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(())
    device = seed.device
    numel = math.prod(shape)
    groups = (numel + 3) // 4
    j = torch.arange(groups, dtype=torch.int64, device=device)
    zero = torch.zeros_like(j)
    r0, r1, r2, r3 = philox4x32((j & MASK32, j >> 32, zero, zero), (seed & MASK32, (seed >> 32) & MASK32))
    z0, z1 = _box_muller(r0, r1, dtype)
    z2, z3 = _box_muller(r2, r3, dtype)
    return torch.stack([z0, z1, z2, z3], dim=1).reshape(-1)[:numel].reshape(shape)


def draw_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """One step's seed: a ``(1,)`` int64 tensor on ``device`` uniform in [0, 2^63 - 1), drawn with ``torch.randint``
    from ``generator`` (or the device's default generator). One draw per step, whatever the tensor's size; no host
    synchronisation, and on CUDA the draw goes through torch's graph-safe Philox state, so it can be captured.
    (``randint`` rather than ``random_``: Dynamo traces the former under ``fullgraph=True``, not the latter.)"""
    if generator is None:  # no generator argument at all: Dynamo traces this form
        return torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64, device=device)
    return torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64, device=device, generator=generator)
