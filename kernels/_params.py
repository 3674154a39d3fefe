"""Scalar kernel arguments at float64 precision.

A Python float argument reaches a compiled Triton kernel as float32 (the interpreter keeps it float64, so the CPU
tests do not see this). Kernels that need a scalar at full precision in float64 (bias_act's alpha/gain/clamp and
GELU constants, the gradient penalty's target, group norm's lrelu slope and eps, the diffusion step's guidance and
clip) take it as three float32 parts: :func:`split64` on the host, :func:`join64` in the kernel. A tensor holding the
scalars would cost a host-to-device copy per call (a stream sync, and an error inside a CUDA-graph capture).
"""
from __future__ import annotations

import math
import struct

import triton
import triton.language as tl


def split64(v: float) -> tuple[float, float, float]:
    """``v`` as ``hi + mid + lo``, each float32: hi is v's float32 rounding, mid that of the rest, lo the rest of
    that. 3 x 24 bits hold a double's 53, so :func:`join64` gets v back exactly in float64 for
    ``2^-78 <= |v| < 2^128`` (below, the parts reach float32's subnormals: within 2^-149 of v). Infinities and NaN
    pass as (v, 0, 0); a finite ``|v| >= 2^128`` does not fit float32 and arrives as infinity."""
    v = float(v)
    if v == 0.0 or not math.isfinite(v) or abs(v) >= 3.4028234663852886e38:
        return v, v if v == 0.0 else 0.0, v if v == 0.0 else 0.0  # a zero's parts keep its sign
    hi = _f32(v)
    mid = _f32(v - hi)
    return hi, mid, _f32(v - hi - mid)


def _f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


@triton.jit
def join64(hi, mid, lo, DT: tl.constexpr):
    """A :func:`split64` triple back as one scalar of dtype DT: float64, v exactly; otherwise hi, v's float32
    rounding (adding mid in float32 could round a tie to hi's even neighbour)."""
    if DT == tl.float64:
        r = (tl.cast(hi, DT) + tl.cast(mid, DT)) + tl.cast(lo, DT)
    else:
        r = tl.cast(hi, DT)
    return r
