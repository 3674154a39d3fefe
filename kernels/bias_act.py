"""Triton kernels of fused bias + activation: forward, backward and double backward (one elementwise kernel).

With ``z = x + bias[c]`` (``c`` the index along ``dim``), ``v = gain * f(z)`` and the clamp mask
``m = not (|v| > clamp)`` (all ones without a clamp)::

    forward          y   = clamp(v, -clamp, clamp)                 (NaN stays NaN)
    backward         gx  = gy * gain * f'(z) * m                    (grad_bias = gx summed over the non-dim dims)
    double backward  gx2 = ggx * gy * gain * f''(z) * m             (d gx / d x; d gx / d gy is the backward again)

    f          f'                              f''
    linear     1                               0
    relu       [z > 0]                         0
    lrelu      1 if z > 0 else alpha           0
    tanh t     1 - t^2 = 4e / (1 + e)^2         -2 t (1 - t^2)           (e = exp(-2|z|): no cancellation)
    sigmoid s  s (1 - s)                       s (1 - s) (1 - 2 s)      (1 - s = sigmoid(-z), computed directly)
    silu z s   s (1 + z (1 - s))               s (1 - s) (2 + z (1 - 2 s))
    gelu z Φ   Φ + z φ                         φ (2 - z^2)              (Φ, φ: the normal cdf and pdf; exact erf)

Elementwise, so Triton is the whole GPU story (no CUDA C++ kernel): each program handles BLOCK consecutive
elements of x's memory. x is read as it is when it is dense in any dimension order, so the element at flat offset
``i`` has channel ``(i // inner) % C`` with ``inner = x.stride(dim)`` (the launcher copies other strides to
contiguous first); the C bias values are gathered per element and stay in cache. Offsets are int64. Arithmetic is
in float32 (float64 for float64 input); alpha, gain, clamp and the gelu constants come as float32 triples
(kernels/_params.py) so float64 keeps full precision. Bytes: read x (and gy, ggx), write one output.

tanh: compiled, libdevice's ``tanh`` (kernels/_math.py ``tanh_``); the interpreter (CPU tests) has no libdevice,
so there it is ``-expm1(-2|z|) / (2 + expm1(-2|z|))`` with Kahan's accurate ``expm1(a) = (e - 1) * a / log(e)``.
"""
from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ._device import cdiv, on_input_device
from ._math import COMPILED, LAUNCH, div_, exp_
from ._params import join64, split64

__all__ = ["forward", "backward", "double_backward"]

BLOCK = 1024
LINEAR, RELU, LRELU, TANH, SIGMOID, SILU, GELU = range(7)


@triton.jit
def _tanh_interpreted(z):
    """tanh in float64 (cheap in the interpreter), so float32 results are correctly rounded."""
    a = -2.0 * tl.abs(z).to(tl.float64)
    e = tl.exp(a)
    safe = tl.where((e == 1.0) | (e == 0.0), 0.5, e)  # no 0/0 or log(0) in the branch tl.where drops
    em1 = tl.where(e == 1.0, a, tl.where(e == 0.0, -1.0, (safe - 1.0) * a / tl.log(safe)))
    t = -em1 / (2.0 + em1)
    return tl.where(z == 0, z, tl.where(z < 0, -t, t)).to(z.dtype)  # tanh(-0.0) = -0.0


@triton.jit
def _tanh(z):
    if COMPILED:
        t = libdevice.tanh(z)
    else:
        t = _tanh_interpreted(z)
    return t


@triton.jit
def _sigmoid(z):
    return div_(1.0, 1.0 + exp_(-z))


@triton.jit
def _sigmoid_pair(z):
    """sigmoid(z) and sigmoid(-z) = 1 - sigmoid(z), each to full relative precision."""
    e = exp_(-tl.abs(z))
    r = div_(1.0, 1.0 + e)
    return tl.where(z >= 0, r, e * r), tl.where(z >= 0, e * r, r)


@triton.jit
def _sech2(z):
    """1 - tanh(z)^2 as 4e / (1 + e)^2, e = exp(-2|z|): no cancellation where tanh is near +-1."""
    e = exp_(-2.0 * tl.abs(z))
    return div_(4.0 * e, (1.0 + e) * (1.0 + e))


@triton.jit
def _act(z, alpha, K, ACT: tl.constexpr):
    if ACT == 1:
        # NaN stays NaN. -0.0: torch.relu keeps it on the CPU (where the interpreter runs) and gives +0.0 on CUDA
        # (seen on the H200), so each keeps eager's sign on its device.
        if COMPILED:
            f = tl.where(z > 0, z, tl.where(z != z, z, 0.0))
        else:
            f = tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        f = tl.where(z > 0, z, z * alpha)
    elif ACT == 3:
        f = _tanh(z)
    elif ACT == 4:
        f = _sigmoid(z)
    elif ACT == 5:
        f = div_(z, 1.0 + exp_(-z))
    elif ACT == 6:
        f = z * 0.5 * (1.0 + tl.math.erf(z * K))
    else:
        f = z
    return f


@triton.jit
def _act_d1(z, alpha, K, PDF, ACT: tl.constexpr):
    if ACT == 1:
        d = tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(z > 0, 1.0, alpha)
    elif ACT == 3:
        d = _sech2(z)
    elif ACT == 4:
        s, sc = _sigmoid_pair(z)
        d = s * sc
    elif ACT == 5:
        s, sc = _sigmoid_pair(z)
        d = s * (1.0 + z * sc)
    elif ACT == 6:
        cdf = 0.5 * (1.0 + tl.math.erf(z * K))
        d = cdf + z * (exp_(-0.5 * z * z) * PDF)
    else:
        d = tl.zeros_like(z) + 1.0
    return d


@triton.jit
def _act_d2(z, alpha, K, PDF, ACT: tl.constexpr):
    if ACT == 3:
        d = -2.0 * _tanh(z) * _sech2(z)
    elif ACT == 4:
        s, sc = _sigmoid_pair(z)
        d = s * sc * (sc - s)
    elif ACT == 5:
        s, sc = _sigmoid_pair(z)
        d = s * sc * (2.0 + z * (sc - s))
    elif ACT == 6:
        d = exp_(-0.5 * z * z) * PDF * (2.0 - z * z)
    else:
        d = z * 0.0  # piecewise linear
    return d


@triton.jit
def _bias_act_kernel(X, B, G, H, OUT, numel, C, inner, alpha_hi, alpha_mid, alpha_lo, gain_hi, gain_mid, gain_lo,
                     clamp_hi, clamp_mid, clamp_lo, k_hi, k_mid, k_lo, pdf_hi, pdf_mid, pdf_lo, MODE: tl.constexpr,
                     ACT: tl.constexpr, HAS_BIAS: tl.constexpr, CLAMP: tl.constexpr, ACC: tl.constexpr,
                     BLOCK: tl.constexpr):
    """MODE 0: OUT = y; MODE 1: OUT = G * gain * f'(z) * m; MODE 2: OUT = G * H * gain * f''(z) * m.

    The scalars come as float32 triples (kernels/_params.py), joined in ACC: alpha, gain, clamp, and GELU's
    1/sqrt(2) and 1/sqrt(2 pi) (float literals would be float32 in float64 kernels)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    alpha = join64(alpha_hi, alpha_mid, alpha_lo, ACC)
    gain = join64(gain_hi, gain_mid, gain_lo, ACC)
    clamp = join64(clamp_hi, clamp_mid, clamp_lo, ACC)
    K = join64(k_hi, k_mid, k_lo, ACC)
    PDF = join64(pdf_hi, pdf_mid, pdf_lo, ACC)
    z = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        z += tl.load(B + (offs // inner) % C, mask=mask, other=0.0)
    if MODE == 0:
        out = _act(z, alpha, K, ACT) * gain
        if CLAMP:
            out = tl.where(out < -clamp, -clamp, tl.where(out > clamp, clamp, out))
    else:
        g = tl.load(G + offs, mask=mask, other=0.0).to(ACC)
        if MODE == 1:
            out = g * (gain * _act_d1(z, alpha, K, PDF, ACT))
        else:
            out = g * tl.load(H + offs, mask=mask, other=0.0).to(ACC) * (gain * _act_d2(z, alpha, K, PDF, ACT))
        if CLAMP:
            out = tl.where(tl.abs(_act(z, alpha, K, ACT) * gain) > clamp, 0.0, out)
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x when dense in some dimension order (read as it is), else a contiguous copy."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x  # the usual layouts, without the general stride walk
    from fastgan.ops.bias_act_kernels import dense

    return dense(x)


_SCALARS: dict[bytes, tuple] = {}
_GELU_CONSTANTS = (math.sqrt(0.5), 1.0 / math.sqrt(2 * math.pi))


def _scalars(alpha: float, gain: float, clamp: float) -> tuple:
    """The kernel's 15 scalar arguments: alpha, gain, clamp and the gelu constants as split64 triples. Memoised by
    the bits of (alpha, gain, clamp), so -0.0 and NaN keep their own entries: the same few values recur every call
    and splitting them cost several µs of a launch's host time. A new entry is checked first: alpha and gain must
    be finite (the run-time half of the front end's check, which traced code defers to here)."""
    key = struct.pack("ddd", alpha, gain, clamp)
    found = _SCALARS.get(key)
    if found is None:
        from fastgan.ops._family import check_finite

        check_finite("alpha and gain must be finite", alpha=alpha, gain=gain)
        if len(_SCALARS) >= 1024:
            _SCALARS.clear()
        found = _SCALARS[key] = tuple(v for s in (alpha, gain, clamp) + _GELU_CONSTANTS for v in split64(s))
    return found


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A gradient-like ``t`` in x's dtype and strides."""
    if t.dtype == x.dtype and t.stride() == x.stride():
        return t
    return torch.empty_like(x).copy_(t)


def _launch(mode: int, x, bias, g, h, act: int, alpha: float, gain: float, clamp: float, dim: int):
    x = _dense(x)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    scalars = _scalars(alpha, gain, clamp)
    C = x.shape[dim]
    inner = x.numel() if C == 1 else x.stride(dim)
    out = torch.empty_like(x)
    b = bias.to(acc).contiguous() if bias is not None else x  # no bias: never read
    g = _like(g, x) if g is not None else x
    h = _like(h, x) if h is not None else x
    grid = (cdiv(x.numel(), BLOCK),)
    _bias_act_kernel[grid](x, b, g, h, out, x.numel(), C, inner, *scalars, MODE=mode, ACT=act,
                           HAS_BIAS=bias is not None, CLAMP=clamp >= 0,
                           ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK=BLOCK, num_warps=4, **LAUNCH)
    return out


@on_input_device
def forward(x, bias, act: int, alpha: float, gain: float, clamp: float, dim: int) -> torch.Tensor:
    """``y`` (see the module docstring); x's dtype, its layout when dense, else contiguous."""
    return _launch(0, x, bias, None, None, act, alpha, gain, clamp, dim)


@on_input_device
def backward(gy, x, bias, act: int, alpha: float, gain: float, clamp: float, dim: int) -> torch.Tensor:
    """``gx = gy * gain * f'(z) * m`` in x's dtype and layout."""
    return _launch(1, x, bias, gy, None, act, alpha, gain, clamp, dim)


@on_input_device
def double_backward(ggx, gy, x, bias, act: int, alpha: float, gain: float, clamp: float, dim: int) -> torch.Tensor:
    """``gx2 = ggx * gy * gain * f''(z) * m`` in x's dtype and layout."""
    return _launch(2, x, bias, ggx, gy, act, alpha, gain, clamp, dim)
