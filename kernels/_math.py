"""Elementwise math for the Triton kernels at full precision on the GPU.

Compiled for CUDA, ``tl.exp`` becomes ``ex2.approx.f32`` after a multiply by log2(e) (its error grows with |x|) and
float32 ``/`` becomes ``div.full.f32`` (up to 2 ulp), while eager PyTorch's CUDA kernels use expf and IEEE
division. The tolerance rule compares with eager's error, so compiled kernels take libdevice's exp and
round-to-nearest division here. Under TRITON_INTERPRET=1 (the CPU tests) there is no libdevice, and numpy computes
both exactly anyway; the choice is fixed at import, as Triton fixes interpretation then.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

COMPILED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


@triton.jit
def exp_(x):
    if COMPILED:
        r = libdevice.exp(x)
    else:
        r = tl.exp(x)
    return r


@triton.jit
def div_(a, b):
    """a / b; float32 division rounded to nearest when compiled (float64 ``/`` already is)."""
    if COMPILED and b.dtype == tl.float32:
        r = tl.div_rn(a, b)
    else:
        r = a / b
    return r


# Launch options for every kernel. No FMA contraction (as the C++ kernels are built with fp-contract=off): fused,
# `a * b - c` keeps the product's rounding error where eager rounds it away, which measured up to 1e-5 relative
# error in normalisation backwards on degenerate groups (one element: the exact gradient is 0) on the H200, 100x
# eager's. The kernels are memory-bound, so the separate multiply and add cost nothing measurable.
LAUNCH = {"enable_fp_fusion": False}
