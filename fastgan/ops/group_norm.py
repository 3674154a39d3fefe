"""Group normalisation with a per-sample affine and a fused activation: ``fastgan.ops.group_norm``.

One parameterised norm covers GroupNorm (+ SiLU) of diffusion UNets, their AdaGN / scale-shift conditioning and,
with one channel per group, instance norm and AdaIN::

    y = act( (xhat * weight[c] + bias[c]) * (1 + scale[n, c]) + shift[n, c] )

``xhat`` is x normalised by the mean and biased variance of its (sample, group): ``C / G`` channels times the
spatial size. The affine is folded here, on ``(N, C)`` tensors, into one per-(n, c) pair handed to the kernels::

    A = weight * (1 + scale),   B = bias * (1 + scale) + shift,   y = act(xhat * A + B)

so autograd of that tiny fold gives the gradients of weight, bias, scale and shift from the kernels' (N, C) ones.

Per-element modulation maps (SPADE's ``gamma``/``beta``, x-shaped) go to the kernels as they are, applied after
the per-channel affine: ``y = act(z + z * gamma + beta)`` with ``z = xhat * A + B``. Maps without spatial extent
(``(N, C, 1, 1)``) are per-channel after all and fold into A and B instead.
"""
from __future__ import annotations

import torch

from .. import _backend
from ._family import check_device_and_dtype, check_eps, check_optional_tensor
from ._layout import canonical, match_layout
from .adain import _as_per_plane
from .group_norm_kernels import ACTS, kernel_ops
from .instance_norm import _check_param, check_norm_input

__all__ = ["group_norm", "group_norm_reference", "resolve_act", "check_map", "is_per_channel"]


def resolve_act(act: str, alpha=None) -> tuple[int, float]:
    """``(code, alpha)`` for an activation name; lrelu's slope defaults to 0.2 (no gain, unlike bias_act)."""
    name = "silu" if act == "swish" else act
    if not isinstance(name, str) or name not in ACTS:
        raise ValueError(f"fastgan: act must be one of {sorted(ACTS)} (or 'swish'), got {act!r}")
    slope = (0.2 if alpha is None else float(alpha)) if name == "lrelu" else 0.0
    return ACTS[name], slope


def _check_groups(x: torch.Tensor, num_groups) -> int:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"fastgan: num_groups must be an int, got {type(num_groups).__name__}")
    c = x.shape[1]
    if num_groups < 1 or c % num_groups != 0:
        raise ValueError(f"fastgan: num_groups={num_groups} must be >= 1 and divide the {c} channels of x")
    return num_groups


def check_map(m, name: str, x: torch.Tensor) -> None:
    """A per-element modulation map: None, or a floating tensor on x's device broadcastable to x's shape."""
    check_optional_tensor(m, name)
    if m is None:
        return
    ok = m.dim() <= x.dim()
    if ok:
        try:
            ok = torch.broadcast_shapes(m.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"fastgan: {name} must be broadcastable to x's shape {tuple(x.shape)} (e.g. (N, C, H, W), "
            f"(N, C, 1, 1) or (1, C, H, W)), got {tuple(m.shape)}"
        )
    check_device_and_dtype(m, name, x)


def is_per_channel(m, x: torch.Tensor) -> bool:
    """True for None and for a map with no spatial extent (``(N, C, 1, 1)``, ``(C, 1, 1)``, ...)."""
    return m is None or all(d == 1 for d in m.shape[max(0, m.dim() - (x.dim() - 2)):])


def _plane(m, x: torch.Tensor):
    """A map without spatial extent as ``(N, C)``."""
    if m is None:
        return None
    m = m.reshape(m.shape[: max(0, m.dim() - (x.dim() - 2))])
    return m.expand(x.shape[:2])


def fold_affine(x: torch.Tensor, weight, bias, scale, shift, gamma=None, beta=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-(n, c) pair ``A = w * (1 + scale)``, ``B = b * (1 + scale) + shift``, float64 and contiguous.

    float64 whatever x's dtype (N x C values: free): the kernels take and return the (N, C) affine and its
    gradients in float64, so the chain back through this fold (``g_scale = gA * w + gB * b`` cancels when the
    normalised output is near 0) and the N-sum of the weight/bias gradients round once, at the end."""
    n, c = x.shape[:2]
    f64 = torch.float64
    a = weight.to(f64).expand(n, c) if weight is not None else torch.ones((n, c), dtype=f64, device=x.device)
    b = bias.to(f64).expand(n, c) if bias is not None else torch.zeros((n, c), dtype=f64, device=x.device)
    if scale is not None:
        s1 = 1.0 + scale.to(f64).expand(n, c)
        a = a * s1
        b = b * s1
    if shift is not None:
        b = b + shift.to(f64).expand(n, c)
    if gamma is not None:  # (N, C) maps: u = z * (1 + gamma) + beta
        g1 = 1.0 + gamma.to(f64)
        a = a * g1
        b = b * g1
    if beta is not None:
        b = b + beta.to(f64)
    return a.contiguous(), b.contiguous()


def group_norm_reference(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5, *, scale=None, shift=None,
                         gamma=None, beta=None, act: str = "linear", alpha=None) -> torch.Tensor:
    """:func:`group_norm` written out in plain PyTorch, differentiable by autograd to any order (``impl="ref"``).

    Computed in float64 for float32/float64 inputs (it is the fallback, so as exact as possible) and float32 for
    float16/bfloat16; returned in x's dtype. Arguments as :func:`group_norm`.
    """
    code, alpha = resolve_act(act, alpha)
    acc = torch.float64 if x.dtype in (torch.float32, torch.float64) else torch.float32
    n, c = x.shape[:2]
    xg = x.to(acc).reshape(n, num_groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = (xg - mean).square().mean(-1, keepdim=True)
    y = ((xg - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    view = (n, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.to(acc).reshape((1, c) + view[2:])
    if bias is not None:
        y = y + bias.to(acc).reshape((1, c) + view[2:])
    if scale is not None:
        y = y * (1 + scale.to(acc).expand(n, c).reshape(view))
    if shift is not None:
        y = y + shift.to(acc).expand(n, c).reshape(view)
    if gamma is not None:
        y = y + y * gamma.to(acc)
    if beta is not None:
        y = y + beta.to(acc)
    if code == ACTS["silu"]:
        y = torch.nn.functional.silu(y)
    elif code == ACTS["relu"]:
        y = torch.relu(y)
    elif code == ACTS["lrelu"]:
        y = torch.nn.functional.leaky_relu(y, alpha)
    return match_layout(y.to(x.dtype), canonical(x))  # the kernels' output layout (the reshapes lose it)


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5, *, scale=None, shift=None,
               gamma=None, beta=None, act: str = "linear", alpha=None, impl: str | None = None) -> torch.Tensor:
    """Group norm with an optional per-sample scale/shift and a fused activation, in one fused kernel.

    ``act(F.group_norm(x, num_groups, weight, bias, eps) * (1 + scale) + shift)``: with only weight/bias and
    ``act="silu"`` the same as ``F.silu(F.group_norm(...))``; ``scale``/``shift`` are a diffusion UNet's AdaGN
    (``h = norm(h) * (1 + scale) + shift``); ``num_groups = C`` is instance norm. Statistics accumulate in float64
    (C++) or float32 (Triton) for float32/float16/bfloat16 input, float64 for float64; the output is rounded once.
    Differentiable to any order: the first and second order (a gradient penalty's double backward) run on fused
    kernels (on Triton, the second order with gamma/beta maps is composite), the third and higher order through
    autograd of the double backward's formula in plain torch ops.

    Args:
        x: ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; float16, bfloat16, float32 or float64.
            Contiguous input is read in place, and so is channels_last by the C++ kernels (without gamma/beta
            maps); other strides (and channels_last on Triton or with maps) are copied to contiguous first. The
            output is returned in x's layout.
        num_groups: G, dividing C.
        weight, bias: optional ``(C,)`` per-channel affine (as ``F.group_norm``).
        eps: added to the variance before the square root.
        scale, shift: optional per-sample ``(N, C)`` (or ``(N, C, 1, ...)``, or broadcasting to ``(N, C)``);
            applied as ``* (1 + scale) + shift`` after weight/bias.
        gamma, beta: optional per-element maps broadcastable to x (SPADE: ``(N, C, H, W)``), applied as
            ``z + z * gamma + beta`` after scale/shift and before act (``1 + gamma`` is never rounded to x's
            dtype). A missing one of the pair is zeros; maps are cast to x's dtype and expanded to x's shape
            (a broadcast map is materialised once); maps with no spatial extent fold into the per-channel affine.
        act: ``"linear"``, ``"relu"``, ``"lrelu"`` or ``"silu"`` (alias ``"swish"``), applied last.
        alpha: lrelu's negative slope (default 0.2); ignored by the others.
        impl: ``"ref"``, ``"cpp"`` or ``"triton"`` to pin an implementation; None picks by device (no CUDA C++
            kernel yet: CUDA tensors take Triton).

    Returns:
        Tensor of x's shape, dtype and memory format.
    """
    check_norm_input(x)
    groups = _check_groups(x, num_groups)
    _check_param(weight, "weight", x)
    _check_param(bias, "bias", x)
    scale = _as_per_plane(scale, "scale", x)
    shift = _as_per_plane(shift, "shift", x)
    check_map(gamma, "gamma", x)
    check_map(beta, "beta", x)
    code, alpha = resolve_act(act, alpha)
    eps = check_eps(eps)
    which = _backend.select("group_norm_fwd", x.device, impl)
    if which == "ref":
        return group_norm_reference(x, groups, weight, bias, eps, scale=scale, shift=shift, gamma=gamma, beta=beta,
                                    act=act, alpha=alpha)
    ops = kernel_ops(which, x.device.type)
    if ops.wb is not None and scale is None and shift is None and gamma is None and beta is None:
        return ops.wb(x, weight, bias, groups, eps, code, alpha)[0]  # fold and its gradient in C++
    if is_per_channel(gamma, x) and is_per_channel(beta, x):
        a, b = fold_affine(x, weight, bias, scale, shift, _plane(gamma, x), _plane(beta, x))
        gamma = beta = None
    else:
        a, b = fold_affine(x, weight, bias, scale, shift)
        gamma = torch.zeros_like(x) if gamma is None else gamma.to(x.dtype).expand(x.shape)
        beta = torch.zeros_like(x) if beta is None else beta.to(x.dtype).expand(x.shape)
    return ops.fwd(x, a, b, gamma, beta, groups, eps, code, alpha)[0]

