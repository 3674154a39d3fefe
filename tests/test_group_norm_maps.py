"""fastgan.ops.group_norm with per-element modulation maps (SPADE's gamma/beta inside the group-norm kernels):
forward, backward and higher orders against a float64 reference for every live implementation, the per-channel
fold, the kernel ops' own checks and NaN confinement."""
import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import _backend
from fastgan.ops._layout import is_channels_last, layout_strides
from fastgan.ops.group_norm import group_norm_reference

from conftest import to_layout
from test_group_norm import EPS, impl_params
from tolerance import assert_rule, grad_floor_ulps

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (shape, groups, map shape (None: x's), act): N=1, C=1, 1x1, 7x13, 3-D, 5-D, G < C, broadcast maps.
CASES = [((1, 1, 1, 1), 1, None, "linear"), ((2, 6, 7, 13), 3, None, "silu"), ((2, 6, 7, 13), 6, None, "linear"),
         ((1, 4, 5), 2, None, "lrelu"), ((2, 4, 3, 2, 3), 2, None, "relu"), ((2, 3, 5, 6), 3, (1, 3, 5, 6), "silu"),
         ((1, 6, 1, 1), 3, None, "silu")]


def inputs(device, dtype, layout):
    """Fresh random (name, x, G, weight, bias, gamma, beta, act) for every case."""
    for shape, g, mshape, act in CASES:
        c = shape[1]
        x = to_layout(torch.randn(shape, device=device, dtype=dtype) * 2 + 0.5, layout)
        w = torch.randn(c, device=device, dtype=dtype)
        b = torch.randn(c, device=device, dtype=dtype)
        gm = to_layout(0.3 * torch.randn(mshape or shape, device=device), layout).to(dtype)
        bm = torch.randn(mshape or shape, device=device, dtype=dtype)
        yield f"{shape}/G{g}-{layout}-{act}-maps{mshape or 'full'}", x, g, w, b, gm, bm, act


def eager(x, g, w, b, gm, bm, act):
    """The usual PyTorch formulation in x's dtype: F.group_norm, then the maps, then the activation."""
    if x.shape[0] * x[0, 0].numel() > 1:
        y = F.group_norm(x, g, w, b, EPS)
    else:  # F.group_norm refuses N * L == 1; the same formula written out
        xg = x.reshape(x.shape[0], g, -1)
        xg = (xg - xg.mean(-1, keepdim=True)) * torch.rsqrt(xg.var(-1, correction=0, keepdim=True) + EPS)
        view = (1, -1) + (1,) * (x.dim() - 2)
        y = xg.reshape(x.shape) * w.reshape(view) + b.reshape(view)
    y = y * (1 + gm) + bm
    return {"silu": F.silu, "relu": torch.relu, "lrelu": lambda t: F.leaky_relu(t, 0.2)}.get(act, lambda t: t)(y)


def ours(x, g, w, b, gm, bm, act, impl):
    return fastgan.ops.group_norm(x, g, w, b, EPS, gamma=gm, beta=bm, act=act, impl=impl)


def ref64(x, g, w, b, gm, bm, act):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return group_norm_reference(d(x), g, d(w), d(b), EPS, gamma=d(gm), beta=d(bm), act=act)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_forward_matches_reference(device, impl, dtype, layout):
    for name, x, g, w, b, gm, bm, act in inputs(device, dtype, layout):
        y = ours(x, g, w, b, gm, bm, act, impl)
        assert y.dtype == x.dtype and y.stride() == layout_strides(x.shape, is_channels_last(x)), name
        assert_rule(y, eager(x, g, w, b, gm, bm, act), ref64(x, g, w, b, gm, bm, act), f"{impl} {dtype} {name}")


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_matches_reference(device, impl, dtype, layout):
    for name, x, g, w, b, gm, bm, act in inputs(device, dtype, layout):
        gy = torch.randn_like(x)
        got = {}
        for key, fn, cast in (("ours", lambda *a: ours(*a, impl), lambda t: t), ("eager", eager, lambda t: t),
                              ("ref", ref64, lambda t: t.double())):
            ins = [cast(t).detach().requires_grad_() for t in (x, w, b, gm, bm)]
            got[key] = torch.autograd.grad(fn(ins[0], g, *ins[1:], act), ins, cast(gy))
        for i, what in enumerate(("x", "weight", "bias", "gamma", "beta")):
            assert_rule(got["ours"][i], got["eager"][i], got["ref"][i], f"{impl} {dtype} {name} grad {what}",
                        grad_floor_ulps(device, impl))


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("act,maps", [("silu", ((2, 4, 3, 2), (1, 4, 3, 1))), ("linear", ((2, 4, 3, 2), (1, 4, 3, 1))),
                                      ("silu", ((2, 4, 1, 1), (4, 1, 1)))])  # the last pair folds per channel
def test_gradcheck_and_gradgradcheck_float64(device, impl, act, maps):
    f64 = dict(device=device, dtype=torch.float64)
    x = to_layout(torch.randn(2, 4, 3, 2, **f64) + 0.3, "channels_last").requires_grad_()
    ps = [torch.randn(*s, **f64, requires_grad=True) for s in ((4,), (4,)) + maps]

    def fn(x, w, b, gm, bm):
        return fastgan.ops.group_norm(x, 2, w, b, gamma=gm, beta=bm, act=act, impl=impl)

    fast = impl == "triton"  # the interpreter is slow: random projections instead of full Jacobians
    assert torch.autograd.gradcheck(fn, (x, *ps), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x, *ps), fast_mode=fast)


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "ref" not in p.id])
def test_penalty_gradient_matches_reference(device, impl):
    """An R1-style penalty through the maps: grad of |d out / d x|^2 w.r.t. x, gamma and beta."""
    f64 = dict(device=device, dtype=torch.float64)
    x, gm, bm = torch.randn(2, 6, 4, 5, **f64), 0.3 * torch.randn(2, 6, 4, 5, **f64), torch.randn(2, 6, 4, 5, **f64)
    gy = torch.randn_like(x)

    def penalty(fn):
        ins = [t.clone().requires_grad_() for t in (x, gm, bm)]
        (gx,) = torch.autograd.grad((fn(*ins) * gy).sum(), ins[0], create_graph=True)
        return torch.autograd.grad(gx.square().sum(), ins, allow_unused=True, materialize_grads=True)

    got = penalty(lambda x, gm, bm: fastgan.ops.group_norm(x, 3, gamma=gm, beta=bm, act="silu", impl=impl))
    want = penalty(lambda x, gm, bm: group_norm_reference(x, 3, gamma=gm, beta=bm, act="silu"))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device,impl", impl_params())
def test_partial_and_per_channel_maps(device, impl):
    x = torch.randn(2, 4, 5, 6, device=device)
    full = torch.randn(2, 4, 5, 6, device=device)
    per_channel = torch.randn(2, 4, 1, 1, device=device)
    for gm, bm in ((full, None), (None, full), (per_channel, per_channel), (per_channel[0], None), (full, per_channel)):
        d = lambda t: None if t is None else t.double()  # noqa: E731
        got = fastgan.ops.group_norm(x, 2, gamma=gm, beta=bm, act="silu", impl=impl)
        want = group_norm_reference(x.double(), 2, gamma=d(gm), beta=d(bm), act="silu")
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "cpp" in p.id])
def test_compile_fullgraph(device, impl):
    x, gm, bm = (torch.randn(2, 4, 5, 5, device=device, requires_grad=True) for _ in range(3))

    def f(x, gm, bm):
        return fastgan.ops.group_norm(x, 2, gamma=gm, beta=bm, act="lrelu", impl=impl)

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, gm, bm)
    torch.testing.assert_close(out, f(x, gm, bm))
    g = torch.autograd.grad(out.square().sum(), (x, gm, bm))
    torch.testing.assert_close(g, torch.autograd.grad(f(x, gm, bm).square().sum(), (x, gm, bm)))


@pytest.mark.parametrize("device,impl", impl_params())
def test_nan_in_a_map_stays_at_its_element(device, impl):
    x = torch.randn(2, 6, 5, 5, device=device)
    gm = torch.randn_like(x)
    gm[1, 2, 3, 4] = float("nan")
    y = fastgan.ops.group_norm(x, 3, gamma=gm, beta=torch.randn_like(x), act="silu", impl=impl)
    nan = torch.isnan(y)
    assert nan[1, 2, 3, 4] and nan.sum() == 1


def test_errors_are_clear():
    x = torch.randn(2, 6, 4, 4)
    gn = fastgan.ops.group_norm
    with pytest.raises(ValueError, match=r"gamma must be broadcastable to x's shape \(2, 6, 4, 4\)"):
        gn(x, 3, gamma=torch.randn(2, 6, 5, 4))
    with pytest.raises(TypeError, match="beta must be a floating tensor"):
        gn(x, 3, beta=torch.ones(2, 6, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="is on meta but x is on cpu"):
        gn(x, 3, gamma=torch.randn(2, 6, 4, 4, device="meta"))
    if "cpp" in _backend.live_impls("group_norm_fwd", "cpu"):  # the op's own checks, below the Python layer
        a = torch.ones(2, 6, dtype=torch.float64)
        op = torch.ops.fastgan.group_norm_fwd
        with pytest.raises(RuntimeError, match="gamma and beta must be given together"):
            op(x, a, a, torch.randn_like(x), None, 3, EPS, 0, 0.0)
        with pytest.raises(RuntimeError, match="beta must have x's dtype"):
            op(x, a, a, torch.randn_like(x), torch.randn_like(x).double(), 3, EPS, 0, 0.0)
        with pytest.raises(RuntimeError, match="gamma"):
            op(x, a, a, torch.randn(2, 6, 4, 5), torch.randn_like(x), 3, EPS, 0, 0.0)
