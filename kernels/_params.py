"""Small parameter tensors the Triton kernels read their float64-exact scalars from, cached per value.

A Python float kernel argument is passed as float32 on a GPU (the interpreter keeps it float64, so CPU tests do not
see this), so the kernels that need a scalar at full precision either read it from a tiny tensor (bias_act's
alpha/gain/clamp, the gradient penalty's target) or take it as a float32 pair (:func:`split64`/:func:`join64`:
group norm's lrelu slope, the diffusion step's guidance and clip). Building that tensor on
every call would be a pageable host-to-device copy each time: a stream sync per op call, and an error inside a
CUDA-graph capture. The cache makes it once per (values, dtype, device); the kernels only read it.
"""
from __future__ import annotations

import functools
import math
import struct

import torch
import triton
import triton.language as tl


@functools.lru_cache(maxsize=512)
def _cached(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def param_tensor(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values, dtype, device)``, made once per distinct argument set (read-only: never write to
    it)."""
    return _cached(tuple(float(v) for v in values), dtype, torch.device(device))


def split64(v: float) -> tuple[float, float]:
    """``v`` as ``hi + lo`` with hi its float32 rounding: two float32 kernel arguments that :func:`join64` adds back
    to v's float64 value (a lone float argument would arrive rounded to float32)."""
    hi = struct.unpack("f", struct.pack("f", float(v)))[0] if math.isfinite(v) and abs(v) < 3.4e38 else float(v)
    return hi, float(v) - hi if math.isfinite(hi) else 0.0


@triton.jit
def join64(hi, lo, DT: tl.constexpr):
    """A :func:`split64` pair back as one scalar of dtype DT (float64: exact; float32: hi)."""
    return tl.cast(hi, DT) + tl.cast(lo, DT)
