"""The group-norm kernel ops as torch.library ops, their plain-PyTorch reference, fakes and autograd.

Group norm with a per-(n, c) affine and a fused activation ``f``. For sample n and group g (channels
``g*Cg .. g*Cg + Cg - 1``, ``Cg = C / G``), over the ``M = Cg * L`` elements of the group::

    mean = sum(x) / M,   var = sum((x - mean)^2) / M,   r = rstd = 1 / sqrt(var + eps),   xhat = (x - mean) * r
    forward:   z = xhat * scale[n, c] + shift[n, c],    y = f(z)
    backward:  gz = gy * f'(z)
               gscale[n, c] = sum_L(gz * xhat),   gshift[n, c] = sum_L(gz)          (per channel)
               h = scale[n, c] * gz
               gx = r * (h - mean_M(h) - xhat * mean_M(h * xhat))                    (per group)

With per-element modulation maps gamma, beta (SPADE; both or neither, x's shape and dtype) the output is
``y = f(u)``, ``u = z + z * gamma + beta``, and the backward starts from ``gu = gy * f'(u)``::

               ggamma = gu * z,   gbeta = gu,   gz = gu + gu * gamma        (then as above)

The group means come from the per-channel sums: ``sum_M(h) = sum_c scale_c * gshift_c`` and
``sum_M(h * xhat) = sum_c scale_c * gscale_c``, so the backward is one reduction pass and one output pass.
With one channel per group (G = C) and ``f`` linear this is exactly the instance-norm family.

``f`` is one of bias_act's codes: 0 linear, 1 relu, 2 lrelu (slope ``alpha`` below 0), 5 silu. ``scale``/``shift``
and ``gscale``/``gshift`` are float64 whatever x's dtype (see ``fold_affine``); mean/rstd are in the acc dtype
(float32, float64 for float64 input).

Double backward without maps (``gamma`` None): the cotangents ``v = ggx`` (like x), ``uw = ggscale``,
``ub = ggshift`` (per channel) meet ``(gx, gscale, gshift)``. With ``P = r * (v - m_v - xhat * B2)`` (the backward's
projection applied to v; ``m_v``, ``B2`` the group means of v and v*xhat, ``m_h``, ``A2`` those of h and h*xhat)::

    Q = scale * P + uw * xhat + ub                  (the cotangent of gz)
    Rz = Q * gy * f''(z)                            (0 for linear, relu, lrelu)
    g_gy = Q * f'(z)
    g_scale = sum_L(gz * P) + sum_L(Rz * xhat),     g_shift = sum_L(Rz)                  (per channel)
    T = -r * (v * A2 + h * B2) + uw * gz + scale * Rz                                   (d/dxhat, direct)
    g_x = r * (T - mean_M(T) - xhat * mean_M(T * xhat)) - r * xhat * mean_M(v * gx)       (per group)

With maps the cotangents also hold ``cgg = gggamma`` and, for non-linear ``f``, ``cgb = ggbeta`` (like x); with Q as
above, ``gu = gy * f'(u)`` and ``gz = gu * (1 + gamma)``::

    Qu = Q * (1 + gamma) + cgg * z + cgb            (the cotangent of gu)
    Ru = Qu * gy * f''(u),   g_gy = Qu * f'(u),   g_gamma = Q * gu + Ru * z,   g_beta = Ru
    Rz = Ru * (1 + gamma) + cgg * gu                (then g_scale, g_shift, T and g_x as above)

Kernel ops (schemas in ``csrc/fastgan.cpp``; ``*_triton`` twins defined here around ``fastgan.kernels``)::

    group_norm_fwd(x, scale, shift, gamma?, beta?, groups, eps, act, alpha)    -> (y, mean, rstd)    stats (N, G)
    group_norm_bwd(gy, x, mean, rstd, scale, shift, gamma?, beta?, groups, eps, act, alpha)
                                                    -> (gx, gscale, gshift, ggamma, gbeta)   sums (N, C)
    group_norm_dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, shift, groups, eps, act, alpha)
                                                    -> (g_gy, g_x, g_scale, g_shift)
    group_norm_dbwd_maps(ggx, ggscale, ggshift, gggamma, ggbeta?, gy, x, mean, rstd, scale, shift, gamma, beta,
                         groups, eps, act, alpha)   -> (g_gy, g_x, g_scale, g_shift, g_gamma, g_beta)  (C++ only)

``ggamma``/``gbeta`` have 0 elements without maps; ``gbeta`` also for linear ``f``, where it is ``gy`` itself (the
autograd formula passes gy on instead of a copy).

Autograd: the backward of ``fwd`` is ``bwd`` (fused kernels; for the extension's op this formula is registered in
C++, ``csrc/group_norm_autograd.cpp``, saving the Python autograd.Function's per-call cost). The backward of
``bwd`` (double backward, e.g. a gradient penalty) is ``dbwd`` without maps and ``dbwd_maps`` with them. Triton has
no ``dbwd_maps``: there the double backward with maps is **composite**, the vector-Jacobian product of
:func:`reference_bwd` in plain torch ops with mean/rstd recomputed from x (correct, but eager torch ops). The
backward of ``dbwd``/``dbwd_maps`` (third order) is the vjp of :func:`reference_dbwd`/:func:`reference_dbwd_maps`.
"""
from __future__ import annotations

import torch

from .. import _backend
from ._layout import empty_like_layout
from .instance_norm_ref import acc_dtype

OP_NAMES = ("group_norm_fwd", "group_norm_bwd")
ACTS = {"linear": 0, "relu": 1, "lrelu": 2, "silu": 5}  # bias_act's codes for the same activations


# ---------------------------------------------------------------------------------------------- reference
def _act(z: torch.Tensor, act: int, alpha: float) -> torch.Tensor:
    if act == 1:
        return torch.relu(z)
    if act == 2:
        return torch.nn.functional.leaky_relu(z, alpha)
    if act == 5:
        return torch.nn.functional.silu(z)
    return z


def _act_d1(z: torch.Tensor, act: int, alpha: float) -> torch.Tensor:
    if act in (1, 2):
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, alpha if act == 2 else 0.0))
    if act == 5:
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    return torch.ones_like(z)


def _per_channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An ``(N, C)`` tensor viewed to broadcast over x's spatial dims."""
    return t.reshape(t.shape + (1,) * (x.dim() - 2))


def _stats(xf: torch.Tensor, groups: int, eps: float):
    g = xf.reshape(xf.shape[0], groups, -1)
    mean = g.mean(-1)
    var = (g - mean[..., None]).square().mean(-1)
    return mean, torch.rsqrt(var + eps)


def _xhat(xf: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    g = xf.reshape(xf.shape[0], mean.shape[1], -1)
    return ((g - mean[..., None]) * rstd[..., None]).reshape(xf.shape)


def _no_map(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((0,))


def reference_fwd(x, scale, shift, gamma, beta, groups: int, eps: float, act: int, alpha: float):
    """Kernel-level forward. Returns ``(y, mean, rstd)``; mean/rstd ``(N, G)`` in the acc dtype."""
    xf = x.to(acc_dtype(x.dtype))
    mean, rstd = _stats(xf, groups, eps)
    z = _xhat(xf, mean, rstd) * _per_channel(scale.to(xf.dtype), x) + _per_channel(shift.to(xf.dtype), x)
    if gamma is not None:
        z = z + z * gamma.to(xf.dtype) + beta.to(xf.dtype)
    return _act(z, act, alpha).to(x.dtype), mean, rstd


def reference_bwd(gy, x, mean, rstd, scale, shift, gamma, beta, act: int, alpha: float):
    """Kernel-level backward. Returns ``(gx, gscale, gshift, ggamma, gbeta)``: gx (and the map gradients) like x,
    the sums ``(N, C)`` in float64. Differentiable in every tensor input (the composite double backward
    differentiates it)."""
    acc = mean.dtype
    xf = x.to(acc)
    dims = tuple(range(2, x.dim()))
    xhat = _xhat(xf, mean, rstd)
    a = _per_channel(scale.to(acc), x)
    z = xhat * a + _per_channel(shift.to(acc), x)
    ggamma = gbeta = _no_map(x)
    if gamma is None:
        gz = gy.to(acc) * _act_d1(z, act, alpha)
    else:
        gm = gamma.to(acc)
        gu = gy.to(acc) * _act_d1(z + z * gm + beta.to(acc), act, alpha)
        ggamma = (gu * z).to(x.dtype)
        if act != 0:
            gbeta = gu.to(x.dtype)
        gz = gu + gu * gm
    n, groups = mean.shape
    h = (a * gz).reshape(n, groups, -1)
    xg = xhat.reshape(n, groups, -1)
    gx = rstd[..., None] * (h - h.mean(-1, keepdim=True) - xg * (h * xg).mean(-1, keepdim=True))
    f64 = torch.float64
    return (gx.reshape(x.shape).to(x.dtype), (gz * xhat).sum(dim=dims).to(f64), gz.sum(dim=dims).to(f64), ggamma,
            gbeta)


def composite_bwd(gy, x, scale, shift, gamma, beta, groups: int, eps: float, act: int, alpha: float):
    """:func:`reference_bwd` with mean/rstd recomputed from x: the backward as a function of (gy, x, scale, shift,
    gamma, beta)."""
    mean, rstd = _stats(x.to(acc_dtype(x.dtype)), groups, eps)
    return reference_bwd(gy, x, mean, rstd, scale, shift, gamma, beta, act, alpha)


def reference_dbwd(ggx, ggscale, ggshift, gy, x, scale, shift, groups: int, eps: float, act: int, alpha: float):
    """The double backward without maps as the vjp of :func:`composite_bwd`'s ``(gx, gscale, gshift)``: returns
    ``(g_gy, g_x, g_scale, g_shift)``. Differentiable again (third order of the kernel op goes through it)."""
    _, vjp = torch.func.vjp(lambda *t: composite_bwd(*t, None, None, groups, eps, act, alpha)[:3], gy, x, scale, shift)
    return vjp((ggx.to(x.dtype), ggscale.to(torch.float64), ggshift.to(torch.float64)))


def reference_dbwd_maps(ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, scale, shift, gamma, beta, groups: int,
                        eps: float, act: int, alpha: float):
    """The double backward with maps as the vjp of :func:`composite_bwd`'s outputs (``ggbeta`` None for linear
    ``f``, whose gbeta output is empty): returns ``(g_gy, g_x, g_scale, g_shift, g_gamma, g_beta)``. Differentiable
    again. torch.func.vjp differentiates at the given values without walking back through their own history
    (autograd.grad would, double-counting paths into x); the result stays differentiable in the outer graph."""
    n_out = 5 if act != 0 else 4
    _, vjp = torch.func.vjp(lambda *t: composite_bwd(*t, groups, eps, act, alpha)[:n_out], gy, x, scale, shift,
                            gamma, beta)
    f64 = torch.float64
    cot = (ggx.to(x.dtype), ggscale.to(f64), ggshift.to(f64), gggamma.to(x.dtype))
    return vjp(cot + ((ggbeta.to(x.dtype),) if act != 0 else ()))


# -------------------------------------------------------------------------------------------------- fakes
def fake_fwd(x, scale, shift, gamma, beta, groups, eps, act, alpha):
    stats = x.new_empty((x.shape[0], groups), dtype=acc_dtype(x.dtype))
    return empty_like_layout(x), stats, torch.empty_like(stats)


def fake_wb(x, weight, bias, groups, eps, act, alpha):
    return fake_fwd(x, None, None, None, None, groups, eps, act, alpha)


def fake_dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, shift, groups, eps, act, alpha):
    sums = x.new_empty(x.shape[:2], dtype=torch.float64)
    return empty_like_layout(x), empty_like_layout(x), sums, torch.empty_like(sums)


def fake_dbwd_maps(ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, mean, rstd, scale, shift, gamma, beta, groups, eps,
                   act, alpha):
    sums = x.new_empty(x.shape[:2], dtype=torch.float64)
    g_beta = empty_like_layout(x) if act != 0 else _no_map(x)
    return empty_like_layout(x), empty_like_layout(x), sums, torch.empty_like(sums), empty_like_layout(x), g_beta


def fake_bwd(gy, x, mean, rstd, scale, shift, gamma, beta, groups, eps, act, alpha):
    sums = x.new_empty(x.shape[:2], dtype=torch.float64)
    ggamma = empty_like_layout(x) if gamma is not None else _no_map(x)
    gbeta = empty_like_layout(x) if gamma is not None and act != 0 else _no_map(x)
    return empty_like_layout(x), sums, torch.empty_like(sums), ggamma, gbeta


# -------------------------------------------------------------------------------------------- Triton ops
def _triton_module():
    return _backend.import_kernels("group_norm")  # imports triton; only reached when Triton was selected


# The launchers: the Triton ops' bodies, and the CUDA kernels of the extension's ops when routed (kernel_ops).
def _launch_fwd(x, scale, shift, gamma, beta, groups: int, eps: float, act: int, alpha: float):
    return _triton_module().forward(x, scale, shift, gamma, beta, groups, eps, act, alpha)


def _launch_bwd(gy, x, mean, rstd, scale, shift, gamma, beta, groups: int, eps: float, act: int, alpha: float):
    return _triton_module().backward(gy, x, mean, rstd, scale, shift, gamma, beta, act, alpha)


def _launch_dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, shift, groups: int, eps: float, act: int,
                 alpha: float):
    return _triton_module().double_backward(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, shift, eps, act, alpha)


# group_norm_dbwd_maps has no Triton kernel: routed CUDA calls take the composite (reference_dbwd_maps), as the
# Triton custom ops do.
LAUNCHERS = {"group_norm_fwd": _launch_fwd, "group_norm_bwd": _launch_bwd, "group_norm_dbwd": _launch_dbwd}


@torch.library.custom_op("fastgan::group_norm_fwd_triton", mutates_args=())
def _fwd_triton(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    groups: int,
    eps: float,
    act: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_fwd(x, scale, shift, gamma, beta, groups, eps, act, alpha)


@torch.library.custom_op("fastgan::group_norm_bwd_triton", mutates_args=())
def _bwd_triton(
    gy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    groups: int,
    eps: float,
    act: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_bwd(gy, x, mean, rstd, scale, shift, gamma, beta, groups, eps, act, alpha)


@torch.library.custom_op("fastgan::group_norm_dbwd_triton", mutates_args=())
def _dbwd_triton(
    ggx: torch.Tensor,
    ggscale: torch.Tensor,
    ggshift: torch.Tensor,
    gy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    groups: int,
    eps: float,
    act: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, shift, groups, eps, act, alpha)


_fwd_triton.register_fake(fake_fwd)
_bwd_triton.register_fake(fake_bwd)
_dbwd_triton.register_fake(fake_dbwd)


# ---------------------------------------------------------------------------------------------- autograd
def _attach_autograd(fwd, bwd, names: tuple[str, str], native: bool = False, dbwd=None, dbwd_maps=None) -> None:
    """``fwd`` differentiates through ``bwd``; ``bwd`` through ``dbwd`` (no maps) or ``dbwd_maps`` (maps) where
    given, else through the vjp of :func:`composite_bwd` (any order). ``native``: the extension registered fwd's
    formula in C++ (csrc/group_norm_autograd.cpp); only bwd's is attached here."""

    def fwd_setup(ctx, inputs, output):
        x, scale, shift, gamma, beta, ctx.groups, ctx.eps, ctx.act, ctx.alpha = inputs
        _y, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, scale, shift, gamma, beta, mean, rstd)

    def fwd_backward(ctx, gy, _g_mean, _g_rstd):
        x, scale, shift, gamma, beta, mean, rstd = ctx.saved_tensors
        gx, gscale, gshift, ggamma, gbeta = bwd(gy, x, mean, rstd, scale, shift, gamma, beta, ctx.groups, ctx.eps,
                                                ctx.act, ctx.alpha)
        if gamma is None:
            ggamma = gbeta = None
        elif ctx.act == 0:
            gbeta = gy  # d y / d beta is the identity: no kernel output, no copy
        return gx, gscale, gshift, ggamma, gbeta, None, None, None, None

    def bwd_setup(ctx, inputs, output):
        gy, x, mean, rstd, scale, shift, gamma, beta, ctx.groups, ctx.eps, ctx.act, ctx.alpha = inputs
        ctx.save_for_backward(gy, x, mean, rstd, scale, shift, gamma, beta)

    def bwd_backward(ctx, ggx, ggscale, ggshift, gggamma, ggbeta):
        gy, x, mean, rstd, scale, shift, gamma, beta = ctx.saved_tensors
        args = (ctx.groups, ctx.eps, ctx.act, ctx.alpha)
        f64 = torch.float64
        if gamma is None:
            if dbwd is not None:
                g_gy, g_x, g_scale, g_shift = dbwd(ggx, ggscale.to(f64).contiguous(), ggshift.to(f64).contiguous(),
                                                   gy, x, mean, rstd, scale, shift, *args)
            else:
                g_gy, g_x, g_scale, g_shift = reference_dbwd(ggx, ggscale, ggshift, gy, x, scale, shift, *args)
            return g_gy, g_x, None, None, g_scale, g_shift, None, None, None, None, None, None
        # With maps; the op's gbeta is empty for linear act (it is gy itself): nothing flows through it.
        cgb = ggbeta if ctx.act != 0 else None
        if dbwd_maps is not None and _has_dbwd_maps_kernel(x.device.type):
            g_gy, g_x, g_scale, g_shift, g_gamma, g_beta = dbwd_maps(
                ggx, ggscale.to(f64).contiguous(), ggshift.to(f64).contiguous(), gggamma, cgb, gy, x, mean, rstd,
                scale, shift, gamma, beta, *args)
            if ctx.act == 0:
                g_beta = None
        else:
            g_gy, g_x, g_scale, g_shift, g_gamma, g_beta = reference_dbwd_maps(
                ggx, ggscale, ggshift, gggamma, cgb, gy, x, scale, shift, gamma, beta, *args)
        return g_gy, g_x, None, None, g_scale, g_shift, g_gamma, g_beta, None, None, None, None

    if not native:
        torch.library.register_autograd(names[0], fwd_backward, setup_context=fwd_setup)
    torch.library.register_autograd(names[1], bwd_backward, setup_context=bwd_setup)


def _attach_third_order(name: str) -> None:
    """The backward of the fused double backward ``name``: the vjp of :func:`reference_dbwd` (third order and up
    are rare; this keeps every order correct)."""

    def setup(ctx, inputs, output):
        ggx, ggscale, ggshift, gy, x, _mean, _rstd, scale, shift, *ctx.args = inputs
        ctx.save_for_backward(ggx, ggscale, ggshift, gy, x, scale, shift)

    def backward(ctx, g_gy, g_x, g_scale, g_shift):
        saved = ctx.saved_tensors
        _, vjp = torch.func.vjp(lambda *t: reference_dbwd(*t, *ctx.args), *saved)
        x = saved[4]
        grads = vjp((g_gy.to(x.dtype), g_x.to(x.dtype), g_scale.to(torch.float64), g_shift.to(torch.float64)))
        return (*grads[:5], None, None, *grads[5:], None, None, None, None)

    torch.library.register_autograd(name, backward, setup_context=setup)


def _attach_third_order_maps(name: str) -> None:
    """The backward of the fused double backward with maps ``name``: the vjp of :func:`reference_dbwd_maps`."""

    def setup(ctx, inputs, output):
        ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, _mean, _rstd, scale, shift, gamma, beta, *ctx.args = inputs
        ctx.linear = ggbeta is None
        ctx.save_for_backward(ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, scale, shift, gamma, beta)

    def backward(ctx, g_gy, g_x, g_scale, g_shift, g_gamma, g_beta):
        saved = list(ctx.saved_tensors)
        x, f64 = saved[6], torch.float64
        if ctx.linear:  # no ggbeta for linear act; the reference does not read it then: zeros stand in
            saved[4] = torch.zeros_like(x)
        _, vjp = torch.func.vjp(lambda *t: reference_dbwd_maps(*t, *ctx.args), *saved)
        # For linear act the op's g_beta is empty while the reference's is zeros like beta
        cot = (g_gy.to(x.dtype), g_x.to(x.dtype), g_scale.to(f64), g_shift.to(f64), g_gamma.to(x.dtype),
               g_beta.to(x.dtype) if not ctx.linear else torch.zeros_like(saved[10]))
        g = list(vjp(cot))
        if ctx.linear:
            g[4] = None
        return (*g[:7], None, None, *g[7:], None, None, None, None)

    torch.library.register_autograd(name, backward, setup_context=setup)


_dbwd_maps_kernel: dict[str, bool] = {}


def _has_dbwd_maps_kernel(device_type: str) -> bool:
    """Whether the extension's group_norm_dbwd_maps has a kernel for ``device_type`` (not on CUDA: a routed CUDA
    call of the Triton impl reaches the compiled backward without one)."""
    if device_type not in _dbwd_maps_kernel:
        key = "CUDA" if device_type == "cuda" else "CPU"
        _dbwd_maps_kernel[device_type] = _backend.has_kernel("group_norm_dbwd_maps", key)
    return _dbwd_maps_kernel[device_type]


class _Ops:
    def __init__(self, fwd, bwd, dbwd=None, dbwd_maps=None):
        self.fwd, self.bwd, self.dbwd = fwd, bwd, dbwd  # dbwd: fused double backward without maps, if any
        self.dbwd_maps = dbwd_maps  # fused double backward with maps, if any
        self.wb = None  # group_norm_wb (weight/bias form), where the backend has it


_attach_autograd(_fwd_triton, _bwd_triton, tuple(f"fastgan::{n}_triton" for n in OP_NAMES), dbwd=_dbwd_triton)
_attach_third_order("fastgan::group_norm_dbwd_triton")
_TRITON = _Ops(_fwd_triton, _bwd_triton, _dbwd_triton)
_compiled: _Ops | None = None


def _compiled_ops() -> _Ops:
    """The extension's pair, with fakes and autograd attached on first use."""
    global _compiled
    if _compiled is None:
        names = tuple(f"fastgan::{n}" for n in OP_NAMES)
        for name, fake in zip(names, (fake_fwd, fake_bwd)):
            torch.library.register_fake(name)(fake)
        pair = tuple(getattr(torch.ops.fastgan, n).default for n in OP_NAMES)
        native = torch._C._dispatch_has_kernel_for_dispatch_key(names[0], "Autograd")
        dbwd = None
        if hasattr(torch.ops.fastgan, "group_norm_dbwd"):  # an older build lacks it: composite double backward
            torch.library.register_fake("fastgan::group_norm_dbwd")(fake_dbwd)
            _attach_third_order("fastgan::group_norm_dbwd")
            dbwd = torch.ops.fastgan.group_norm_dbwd.default
        dbwd_maps = None
        if hasattr(torch.ops.fastgan, "group_norm_dbwd_maps"):
            torch.library.register_fake("fastgan::group_norm_dbwd_maps")(fake_dbwd_maps)
            _attach_third_order_maps("fastgan::group_norm_dbwd_maps")
            dbwd_maps = torch.ops.fastgan.group_norm_dbwd_maps.default
        _attach_autograd(*pair, names=names, native=native, dbwd=dbwd, dbwd_maps=dbwd_maps)
        _compiled = _Ops(*pair, dbwd, dbwd_maps)
        if hasattr(torch.ops.fastgan, "group_norm_wb"):  # weight/bias form, autograd in C++ (an older build lacks it)
            torch.library.register_fake("fastgan::group_norm_wb")(fake_wb)
            _compiled.wb = torch.ops.fastgan.group_norm_wb.default
    return _compiled


_routed: list[bool] = []


def kernel_ops(impl: str, device_type: str = "cpu") -> _Ops:
    """``fwd``/``bwd`` of ``impl`` ("cpp" or "triton"; "cuda" has no group-norm kernel yet) for tensors of
    ``device_type``. On CUDA the Triton impl takes the extension's ops with the Triton launchers as their CUDA
    kernels when the extension is loaded (:func:`fastgan._backend.route_cuda_to_triton`: autograd of the forward
    and of the weight/bias form in C++), else the ``_triton`` custom ops."""
    if impl == "triton":
        if device_type == "cuda" and _route_triton():
            return _compiled_ops()
        return _TRITON
    if impl in ("cpp", "cuda"):
        return _compiled_ops()
    raise ValueError(f"fastgan: no group_norm kernel ops for impl {impl!r}")


def _route_triton() -> bool:
    """Whether CUDA calls of the Triton impl take the extension's ops (decided once, at import)."""
    if not _routed:
        _routed.append(_backend.route_cuda_to_triton(LAUNCHERS))
    return _routed[0]


def register_compiled() -> None:
    """Attach fakes and autograd to the extension's ops now, when the extension has them, and decide the Triton
    route (at import, not inside a torch.compile trace)."""
    if _backend.has_kernel(OP_NAMES[0], "CPU") or _backend.has_kernel(OP_NAMES[0], "CUDA"):
        _compiled_ops()
        _route_triton()
