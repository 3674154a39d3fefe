"""Group norm's fused double backward with SPADE maps (``fastgan::group_norm_dbwd_maps``, C++ CPU kernel): the op
against the vector-Jacobian product of the reference backward in float64, penalty gradients in every dtype under
the tolerance rule, opcheck, third order, errors, NaN confinement, and that a penalty through a SPADE-modulated
group norm no longer runs the composite formula."""
import pytest
import torch

import fastgan
from fastgan import _backend
from fastgan.ops._layout import is_channels_last, layout_strides
from fastgan.ops import group_norm_kernels as gnk
from fastgan.ops.group_norm import group_norm_reference

from test_group_norm_dbwd import ACTS, EPS, SHAPES, _layout
from test_group_norm_maps import eager as eager_maps
from tolerance import assert_rule

pytestmark = pytest.mark.skipif(not (_backend.available("group_norm_fwd", "cpp", "cpu")
                                     and hasattr(torch.ops.fastgan, "group_norm_dbwd_maps")),
                                reason="compiled extension (with group_norm_dbwd_maps) not loaded")
OUTS = ("g_grad_y", "g_x", "g_scale", "g_shift", "g_gamma", "g_beta")


def _op_inputs(shape, dtype, layout, act, gen):
    """(ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, scale, shift, gamma, beta); ggbeta None for linear act."""
    n, c = shape[:2]
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    like = lambda k=1.0: _layout((k * rnd(*shape)).to(dtype), layout)  # noqa: E731
    x = _layout((2 * rnd(*shape) + 0.5).to(dtype), layout)
    ggx, gggamma, ggbeta, gy, gamma, beta = like(), like(), like(), like(), like(0.3), like()
    scale, shift, ggscale, ggshift = (rnd(n, c) for _ in range(4))
    return ggx, ggscale, ggshift, gggamma, ggbeta if act else None, gy, x, scale, shift, gamma, beta


def _run_op(ins, g, act):
    ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, scale, shift, gamma, beta = ins
    _, mean, rstd = torch.ops.fastgan.group_norm_fwd(x, scale, shift, gamma, beta, g, EPS, act, 0.2)
    return torch.ops.fastgan.group_norm_dbwd_maps(ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, mean, rstd, scale,
                                                  shift, gamma, beta, g, EPS, act, 0.2)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_op_matches_reference_float64(act, layout):
    gen = torch.Generator().manual_seed(3)
    for shape, g in SHAPES:
        ins = _op_inputs(shape, torch.float64, layout, ACTS[act], gen)
        ours = _run_op(ins, g, ACTS[act])
        ref = gnk.reference_dbwd_maps(*ins, g, EPS, ACTS[act], 0.2)
        for o, r, what in zip(ours, ref, OUTS):
            if what == "g_beta" and act == "linear":  # beta does not enter a linear f's backward
                assert o.numel() == 0 and not r.any(), what
                continue
            assert o.dtype == r.dtype and o.shape == r.shape, what
            if o.dim() > 2:
                assert o.stride() == layout_strides(ins[6].shape, is_channels_last(ins[6])), f"{what}: layout"
            tol = 1e-10 * max(1.0, r.abs().max().item())
            torch.testing.assert_close(o, r, rtol=0, atol=tol, msg=f"{shape}/G{g} {act} {layout} {what}")


@pytest.mark.parametrize("act", list(ACTS))
def test_op_float32_matches_float64_on_its_inputs(act):
    """In float32 the op is as accurate as float32 storage of its outputs allows: within 2 ulp of the magnitude of
    the float64 computation from the same (float32) inputs, statistics and cotangents included (the float64 sums
    g_scale and g_shift to 1e-12)."""
    gen = torch.Generator().manual_seed(21)
    for shape, g in SHAPES + [((1, 3, 1, 1), 1)]:
        ins = _op_inputs(shape, torch.float32, "contiguous", ACTS[act], gen)
        ours = _run_op(ins, g, ACTS[act])
        alpha32 = torch.tensor(0.2, dtype=torch.float32).item()  # the kernel's slope for float32 input
        ref = gnk.reference_dbwd_maps(*(t.double() if t is not None and t.dtype == torch.float32 else t for t in ins),
                                      g, EPS, ACTS[act], alpha32)
        for o, r, what in zip(ours, ref, OUTS):
            if o.numel():
                ulp = torch.finfo(o.dtype).eps if o.dtype == torch.float32 else 1e-12  # float64: sums, any order
                tol = 2 * ulp * max(1.0, r.abs().max().item())
                torch.testing.assert_close(o.double(), r, rtol=0, atol=tol, msg=f"{shape}/G{g} {act} {what}")


@pytest.mark.parametrize("act", ["silu", "lrelu"])
def test_op_on_large_groups_matches_reference_float64(act):
    """Groups past the single-thread cutoff (two tasks, parallel where torch has two threads) and past kDerivCap
    (f', f'' recomputed per chunk in every pass instead of kept): float64 at 1e-10 of the magnitude."""
    gen = torch.Generator().manual_seed(17)
    ins = _op_inputs((2, 2, 400, 400), torch.float64, "contiguous", ACTS[act], gen)
    ours = _run_op(ins, 1, ACTS[act])
    ref = gnk.reference_dbwd_maps(*ins, 1, EPS, ACTS[act], 0.2)
    for o, r, what in zip(ours, ref, OUTS):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-10 * max(1.0, r.abs().max().item()), msg=f"{act} {what}")


def test_silu_far_below_zero_stays_finite():
    """exp(-u) of a double overflows below u = -709: the derivatives come from exp(-|u|), so a group with such a
    value still gets finite gradients (0 there), as eager's."""
    gen = torch.Generator().manual_seed(19)
    ins = list(_op_inputs((1, 2, 3, 3), torch.float64, "contiguous", ACTS["silu"], gen))
    ins[10] = ins[10].clone()
    ins[10][0, 0, 0, 0] = -750.0  # beta
    ours = _run_op(ins, 1, ACTS["silu"])
    ref = gnk.reference_dbwd_maps(*ins, 1, EPS, ACTS["silu"], 0.2)
    for o, r, what in zip(ours, ref, OUTS):
        assert torch.isfinite(o).all(), what
        torch.testing.assert_close(o, r, rtol=0, atol=1e-10 * max(1.0, r.abs().max().item()), msg=what)


def _penalty_grads(fn, x, w, b, gm, bm, gy):
    """Gradients of ||d<y, gy>/d(x, gamma, beta)||^2 w.r.t. x, weight, bias, gamma and beta: a double backward
    that sends cotangents through every output of the backward (gx, the sums, ggamma and gbeta)."""
    ins = [t.detach().requires_grad_() for t in (x, w, b, gm, bm)]
    first = torch.autograd.grad((fn(*ins) * gy).sum(), (ins[0], ins[3], ins[4]), create_graph=True,
                                allow_unused=True, materialize_grads=True)
    return torch.autograd.grad(sum(t.square().sum() for t in first), ins, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", list(ACTS))
def test_penalty_gradients_follow_the_rule(dtype, act):
    gen = torch.Generator().manual_seed(5)
    # SiLU leaves out the one-pixel group of three values (1, 3, 1, 1)/G1. There the penalty's gbeta^2 term passes
    # the first-order backward's float32 gbeta error straight into the beta gradient: that gbeta is 2.9 ulp off
    # (the float formula for u itself, with torch.exp, is: u is rounded 1e-7 off), eager's is 0.05 ulp by luck, and
    # the result is 2.8 ulp against a bound of about 1.4. The double backward op itself is within 0.5 ulp of the
    # float64 computation on the same float32 inputs there (test_op_float32_matches_float64_on_its_inputs).
    shapes = SHAPES[:-1] + ([((1, 3, 1, 1), 1)] if act != "silu" else [])
    for shape, g in shapes:
        c = shape[1]
        x = (2 * torch.randn(shape, generator=gen) + 0.5).to(dtype)
        gy, bm = (torch.randn(shape, generator=gen).to(dtype) for _ in range(2))
        gm = (0.3 * torch.randn(shape, generator=gen)).to(dtype)
        w, b = (torch.randn(c, generator=gen).to(dtype) for _ in range(2))
        ours = _penalty_grads(lambda *a: fastgan.ops.group_norm(a[0], g, a[1], a[2], EPS, gamma=a[3], beta=a[4],
                                                                act=act, impl="cpp"), x, w, b, gm, bm, gy)
        eager = _penalty_grads(lambda *a: eager_maps(a[0], g, *a[1:], act), x, w, b, gm, bm, gy)
        ref_fn = lambda *a: group_norm_reference(a[0], g, a[1], a[2], EPS, gamma=a[3], beta=a[4], act=act)  # noqa
        d = lambda t: t.double()  # noqa: E731
        ref = _penalty_grads(ref_fn, d(x), d(w), d(b), d(gm), d(bm), d(gy))
        # weight/bias sum per-sample values rounded in the acc dtype: the floor scales with sum_n |value_n|
        per = [_penalty_grads(ref_fn, *(d(t[i:i + 1]) if t.dim() > 1 else d(t) for t in (x, w, b, gm, bm, gy)))
               for i in range(shape[0])]
        for j, what in enumerate(("x", "weight", "bias", "gamma", "beta")):
            mag = torch.stack([p[j] for p in per]).abs().sum(0).max().item() if j in (1, 2) else None
            assert_rule(ours[j], eager[j], ref[j], f"{dtype} {shape}/G{g} {act} penalty grad {what}", 1.0, mag)


def test_penalty_runs_the_fused_kernel(monkeypatch):
    """No composite formula in the second order with maps: the reference vjp would raise here."""
    def refuse(*args, **kwargs):
        raise AssertionError("the composite double backward ran")

    monkeypatch.setattr(gnk, "reference_dbwd_maps", refuse)
    monkeypatch.setattr(gnk, "composite_bwd", refuse)
    x, gm, bm = (torch.randn(3, 4, 5, 5, requires_grad=True) for _ in range(3))
    y = fastgan.ops.group_norm(x, 2, gamma=gm, beta=bm, act="silu", impl="cpp")
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (x, gm, bm))


def test_spade_layer_penalty_matches_reference():
    """fastgan.nn.SPADE under a gradient penalty: the fused kernel (cpp) and the plain-torch reference (ref) give
    the same input and parameter gradients (float64)."""
    torch.manual_seed(0)
    layer = fastgan.nn.SPADE(4, 3, hidden=8).double()
    x, seg = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 3, 6, 6, dtype=torch.float64)

    def grads(impl):
        layer.impl = impl
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(layer(xi, seg).square().sum(), xi, create_graph=True)
        layer.zero_grad()
        gx.square().sum().backward()
        return [xi.grad] + [p.grad.clone() for p in layer.parameters()]

    for a, b in zip(grads("cpp"), grads("ref")):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", [0, 2, 5])
def test_opcheck(layout, act):
    gen = torch.Generator().manual_seed(9)
    ins = _op_inputs((2, 4, 3, 3), torch.float32, layout, act, gen)
    ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, scale, shift, gamma, beta = ins
    _, mean, rstd = torch.ops.fastgan.group_norm_fwd(x, scale, shift, gamma, beta, 2, EPS, act, 0.2)
    torch.library.opcheck(torch.ops.fastgan.group_norm_dbwd_maps.default,
                          (ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, mean, rstd, scale, shift, gamma, beta, 2,
                           EPS, act, 0.2))


@pytest.mark.parametrize("act", [0, 2, 5])
def test_third_order_goes_through_the_reference(act):
    gen = torch.Generator().manual_seed(13)
    ins = [t.requires_grad_() if t is not None else None
           for t in _op_inputs((2, 4, 3, 3), torch.float64, "contiguous", act, gen)]

    def fused(*t):
        detached = [u.detach() if u is not None else None for u in t]
        _, mean, rstd = torch.ops.fastgan.group_norm_fwd(detached[6], detached[7], detached[8], detached[9],
                                                         detached[10], 2, EPS, act, 0.2)
        return torch.ops.fastgan.group_norm_dbwd_maps(*t[:7], mean, rstd, *t[7:], 2, EPS, act, 0.2)

    outs = fused(*ins)
    w = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    live = [t for t in ins if t is not None]
    ours = torch.autograd.grad(sum((o * v).sum() for o, v in zip(outs, w)), live)
    ref_outs = gnk.reference_dbwd_maps(*ins, 2, EPS, act, 0.2)
    ref = torch.autograd.grad(sum((o * v).sum() for o, v in zip(ref_outs, w) if o.shape == v.shape), live,
                              allow_unused=True, materialize_grads=True)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-9)


def test_errors_are_clear():
    gen = torch.Generator().manual_seed(1)
    ins = list(_op_inputs((2, 4, 3, 3), torch.float32, "contiguous", 5, gen))
    ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, scale, shift, gamma, beta = ins
    _, mean, rstd = torch.ops.fastgan.group_norm_fwd(x, scale, shift, gamma, beta, 2, EPS, 5, 0.0)
    op = torch.ops.fastgan.group_norm_dbwd_maps
    args = [ggx, ggscale, ggshift, gggamma, ggbeta, gy, x, mean, rstd, scale, shift, gamma, beta, 2, EPS, 5, 0.0]
    bad = [(3, gggamma[:1], "gggamma must have x's shape"), (4, None, "ggbeta must be given exactly when act"),
           (11, gamma.double(), "gamma must have x's dtype"), (12, beta[..., :2], "beta must have x's shape"),
           (1, ggscale.float(), "ggscale must be float64"), (13, 3, "num_groups must divide")]
    for i, value, msg in bad:
        a = list(args)
        a[i] = value
        with pytest.raises(RuntimeError, match=msg):
            op(*a)
    a = list(args)
    a[15] = 0  # linear act takes no ggbeta
    with pytest.raises(RuntimeError, match="ggbeta must be given exactly when act is not 0"):
        op(*a)
    with pytest.raises(RuntimeError, match="x is empty"):
        op(*[t[:0] if i in (0, 3, 4, 5, 6, 11, 12) else t for i, t in enumerate(args)])


def test_nan_in_a_map_stays_in_its_group():
    x = torch.randn(2, 4, 5, 5)
    gm, bm = 0.3 * torch.randn_like(x), torch.randn_like(x)
    gm[1, 0, 2, 2] = float("nan")
    ins = [t.requires_grad_() for t in (x, gm, bm)]
    y = fastgan.ops.group_norm(ins[0], 2, gamma=ins[1], beta=ins[2], act="silu", impl="cpp")
    (gx,) = torch.autograd.grad(y.square().sum(), ins[0], create_graph=True)
    (g2,) = torch.autograd.grad(gx.square().sum(), ins[0])
    assert torch.isnan(g2[1, :2]).all()
    assert torch.isfinite(g2[0]).all() and torch.isfinite(g2[1, 2:]).all()
