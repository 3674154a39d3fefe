"""Fused bias + activation + gain + clamp: ``fastgan.ops.bias_act`` (StyleGAN's ``bias_act``).

With ``z = x + bias`` (bias broadcast along ``dim``)::

    y = clamp(f(z) * gain, -clamp, clamp)

``f`` one of linear, relu, lrelu (slope ``alpha`` below 0), tanh, sigmoid, silu (alias swish) and gelu (exact erf
form). The kernels' derivative formulas (``m`` = 1 where the clamp is not active, else 0; its derivative is 0)::

    grad_x    = gy * gain * f'(z) * m                grad_bias = grad_x summed over every dim but ``dim``
    d grad_x / d x  = ggx * gy * gain * f''(z) * m   d grad_x / d gy = the backward applied to ggx

The table of ``f'`` and ``f''`` is in ``kernels/bias_act.py``; :func:`reference_bwd` / :func:`reference_dbwd` below
write the same formulas in plain PyTorch (differentiable to any order: the third-order path and the tests use them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import _backend
from ._family import check_device_and_dtype, check_finite, check_float_tensor, check_optional_tensor
from .bias_act_kernels import ACT_CODES, acc_dtype, kernel_ops

ACT_ALIASES = {"swish": "silu"}
_NAMES = {code: name for name, code in ACT_CODES.items()}


def resolve_act(act: str, alpha=None, gain=None) -> tuple[str, float, float]:
    """``(name, alpha, gain)`` with the defaults filled in: alpha 0.2 for lrelu (unused otherwise), gain 1 (the
    plain activation, as the issue's signature has it; StyleGAN's layers pass ``gain=sqrt(2)`` themselves)."""
    if not isinstance(act, str) or ACT_ALIASES.get(act, act) not in ACT_CODES:
        raise ValueError(f"fastgan: unknown act {act!r}; expected one of {sorted(ACT_CODES) + sorted(ACT_ALIASES)}")
    name = ACT_ALIASES.get(act, act)
    alpha = (0.2 if name == "lrelu" else 0.0) if alpha is None else float(alpha)
    gain = 1.0 if gain is None else float(gain)
    check_finite("alpha and gain must be finite", alpha=alpha, gain=gain)  # every impl, as the C++ op checks it
    return name, alpha, gain


def _bias_view(bias: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[dim] = -1
    return bias.reshape(shape)


def _f(z: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
    if name == "relu":
        return torch.relu(z)
    if name == "lrelu":
        return F.leaky_relu(z, alpha)
    if name == "tanh":
        return torch.tanh(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "silu":
        return F.silu(z)
    if name == "gelu":
        return F.gelu(z)
    return z


def _d1(z, name: str, alpha: float):
    if name in ("relu", "lrelu"):
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, alpha if name == "lrelu" else 0.0))
    if name == "tanh":
        return 1 - torch.tanh(z).square()
    if name == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1 - s)
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if name == "gelu":
        return 0.5 * (1 + torch.erf(z * math.sqrt(0.5))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return torch.ones_like(z)


def _d2(z, name: str, alpha: float):
    if name == "tanh":
        t = torch.tanh(z)
        return -2 * t * (1 - t * t)
    if name == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1 - s) * (1 - 2 * s)
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1 - s) * (2 + z * (1 - 2 * s))
    if name == "gelu":
        return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (2 - z * z)
    return z * 0  # piecewise linear


def _z_and_mask(x, bias, name, alpha, gain, clamp, dim):
    z = x.to(acc_dtype(x.dtype))
    if bias is not None:
        z = z + _bias_view(bias.to(z.dtype), x, dim)
    if clamp < 0:
        return z, None
    with torch.no_grad():
        mask = ~((_f(z, name, alpha) * gain).abs() > clamp)
    return z, mask


def reference_bwd(gy, x, bias, act: int, alpha: float, gain: float, clamp: float, dim: int) -> torch.Tensor:
    """``gy * gain * f'(z) * m`` in plain PyTorch (what ``bias_act_bwd`` computes), in x's dtype."""
    name = _NAMES[act]
    z, mask = _z_and_mask(x, bias, name, alpha, gain, clamp, dim)
    out = gy.to(z.dtype) * (gain * _d1(z, name, alpha))
    return (out if mask is None else out * mask).to(x.dtype)


def reference_dbwd(ggx, gy, x, bias, act: int, alpha: float, gain: float, clamp: float, dim: int) -> torch.Tensor:
    """``ggx * gy * gain * f''(z) * m`` in plain PyTorch (what ``bias_act_dbwd`` computes), in x's dtype;
    differentiable in every tensor input (the third-order path)."""
    name = _NAMES[act]
    z, mask = _z_and_mask(x, bias, name, alpha, gain, clamp, dim)
    out = ggx.to(z.dtype) * gy.to(z.dtype) * (gain * _d2(z, name, alpha))
    return (out if mask is None else out * mask).to(x.dtype)


# Activations that automatic selection may route to PyTorch's math on CPU (see _prefer_eager_math).
CPU_EAGER_ACTS = ("tanh", "sigmoid", "silu", "gelu")


def _prefer_eager_math(name: str, x: torch.Tensor, bias) -> bool:
    """Whether automatic selection on CPU takes the plain-PyTorch formula over the C++ kernel for this call.

    Measured against the reference (what this selects) on a 2-core AMD EPYC, 2 threads, fp32, for 1x64x32x32 /
    2x512x32x32 / 2x64x256x256:

    - tanh: always. The kernel's float tanh, within 1.02 ulp, ran 5.7x and 2.4x the reference on the AMD EPYC (whose
      eager tanh is slow) but 0.96x and 0.74x eager's bias add + tanh on a 2-core Intel Xeon: the conservative choice.
    - gelu: always. The kernel's normal CDF (vec_math.h: an exp, a division and two polynomials, so that it keeps a
      few ulps near 0 and relative precision in the negative tail, where eager's 1 + erf cancels) ran 1.16x / 0.66x
      / 1.86x the reference: slower where tensors fit in cache. ``impl="cpp"`` pins it for its accuracy.
    - sigmoid, silu: when autograd records the call. Their forward is vectorised (an FMA exp) and fused with the bias
      add: 1.64x / 1.64x / 1.86x (sigmoid) and 1.76x / 1.70x / 1.65x (silu) the reference. Their gradients compute in
      float64 (the formulas chain roundings that cost ulps in float32): forward + backward ran 0.79-1.13x (sigmoid)
      and 0.89-1.46x (silu) the reference's, so training keeps PyTorch's kernels and inference gets the fused one."""
    if name not in CPU_EAGER_ACTS:
        return False
    if name in ("gelu", "tanh"):
        return True
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


def bias_act_reference(x, bias=None, act: str = "lrelu", alpha=None, gain=1.0, clamp=None, dim: int = 1):
    """:func:`bias_act` in plain PyTorch, differentiable by autograd (``impl="ref"``). Computes in float32
    (float64 for float64 input) and returns x's dtype."""
    name, alpha, gain = resolve_act(act, alpha, gain)
    z = x.to(acc_dtype(x.dtype))
    if bias is not None:
        z = z + _bias_view(bias.to(z.dtype), x, dim % x.dim())
    y = _f(z, name, alpha)
    if gain != 1.0:  # x * 1.0 is x bit for bit; skipping it saves a pass and an allocation (CPU auto path)
        y = y * gain
    if clamp is not None and clamp >= 0:
        y = y.clamp(-clamp, clamp)
    y = y.to(x.dtype)
    return y.clone() if y is x else y  # linear, no bias, gain 1: a new tensor all the same, as every other path


def _check(x, bias, clamp, dim) -> int:
    check_float_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError("fastgan: x must have at least 1 dimension, got a 0-D tensor")
    if x.numel() == 0:
        raise ValueError(f"fastgan: x is empty (shape {tuple(x.shape)}); bias_act needs at least one element")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"fastgan: dim must be in [{-x.dim()}, {x.dim()}) for {x.dim()}-D x, got {dim}")
    dim %= x.dim()
    check_optional_tensor(bias, "bias")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != x.shape[dim]:
            raise ValueError(
                f"fastgan: bias must have shape ({x.shape[dim]},) to match x.shape[{dim}] of x with shape "
                f"{tuple(x.shape)}, got {tuple(bias.shape)}"
            )
        check_device_and_dtype(bias, "bias", x)
    if clamp is not None and not float(clamp) >= 0:
        raise ValueError(f"fastgan: clamp must be >= 0 or None, got {clamp}")
    return dim


def bias_act(x, bias=None, act: str = "lrelu", alpha=None, gain=1.0, clamp=None, dim: int = 1, *,
             impl: str | None = None) -> torch.Tensor:
    """Fused ``clamp(act(x + bias) * gain, -clamp, clamp)``, bias broadcast along ``dim`` (StyleGAN's bias_act).

    One pass over memory instead of eager PyTorch's three or four (add, activation, scale, clamp), with fused
    backward and double backward kernels (R1 and path-length penalties), differentiable to any order (third order
    and up through the reference formula).

    Args:
        x: any shape with at least one dim, e.g. ``(N, C, H, W)`` with ``dim=1`` or ``(N, F)`` with ``dim=1``/``-1``;
            float16, bfloat16, float32 or float64 (computed in float32, float64 for float64). Any strides: a dense
            layout (contiguous, channels_last, transposed) is read as it is, others are copied to contiguous.
        bias: optional ``(x.shape[dim],)``, any float dtype (added in the compute dtype); its gradient is summed
            over every other dim.
        act: ``"linear"``, ``"relu"``, ``"lrelu"``, ``"tanh"``, ``"sigmoid"``, ``"silu"`` (alias ``"swish"``) or
            ``"gelu"`` (exact erf form, as ``F.gelu``'s default).
        alpha: lrelu's negative slope; default 0.2. Ignored by the other activations.
        gain: output scale, default 1 (``bias_act(x, b)`` is ``F.leaky_relu(x + b, 0.2)``). StyleGAN's layers
            use ``gain=math.sqrt(2)`` for relu and lrelu (it keeps the activations' variance near 1).
        clamp: if given (>= 0), the output is clamped to ``[-clamp, clamp]`` after the gain; clamped values get zero
            gradient (as ``torch.clamp``: values exactly at the bound pass it). None: no clamp.
        dim: the dim of x that ``bias`` runs along (negative counts from the end).
        impl: ``"ref"``, ``"cpp"`` or ``"triton"`` to pin an implementation; None chooses by device (CPU: C++,
            except gelu and tanh always and, when autograd records the call, sigmoid/silu: those take the
            plain-PyTorch formula, whose vectorised float32 math is faster there; CUDA: Triton; see
            :func:`fastgan.use_impl`).

    Returns:
        Tensor of x's shape and dtype, in x's layout when that is dense (else contiguous). NaN in gives NaN out.
    """
    dim = _check(x, bias, clamp, dim)
    name, alpha, gain = resolve_act(act, alpha, gain)
    which = _backend.select("bias_act_fwd", x.device, impl)
    if which == "cpp" and impl is None and _backend.pinned_impl() is None and _prefer_eager_math(name, x, bias):
        which = "ref"
    if which == "ref":
        return bias_act_reference(x, bias, name, alpha, gain, clamp, dim)
    clamp_arg = -1.0 if clamp is None else float(clamp)
    return kernel_ops(which, x.device.type).fwd(x, bias, ACT_CODES[name], alpha, gain, clamp_arg, dim)
