"""fastgan.ops.group_norm (+ fused activation, AdaGN scale/shift) against a float64 reference for every live
implementation; op registration, compile, errors, NaN confinement and the nn.GroupNorm drop-in."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan import _backend
from fastgan.ops._layout import is_channels_last, layout_strides
from fastgan.ops.group_norm import fold_affine, group_norm_reference
from fastgan.ops.group_norm_kernels import kernel_ops

from conftest import op_impl_params, third_order_grad, to_layout
from tolerance import assert_rule, grad_floor_ulps

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = 1e-5


def impl_params():
    return op_impl_params("group_norm_fwd")


# (shape, groups): N=1, C=1, G=1, G=C (instance norm), 1x1, 7x13, 3-D and 5-D.
SHAPES = [((1, 1, 1, 1), 1), ((2, 6, 7, 13), 3), ((1, 4, 5), 2), ((2, 4, 3, 5, 7), 2), ((3, 4, 8, 8), 4),
          ((1, 6, 1, 1), 3), ((2, 8, 3), 1)]
BIG_SHAPES = [((1, 4, 65, 65), 2)]  # a channel run longer than one CPU chunk
TRITON_SHAPES = [((1, 1, 1, 1), 1), ((2, 6, 7, 13), 3), ((2, 4, 3, 2, 3), 2), ((1, 6, 1, 1), 3)]


def cases(device, dtype, impl, layouts=("contiguous", "channels_last", "strided"), acts=("linear", "silu")):
    """Fresh random (name, x, G, weight, bias, scale, shift, act); AdaGN scale/shift on every other case."""
    shapes = TRITON_SHAPES if impl == "triton" else SHAPES + BIG_SHAPES
    k = 0
    for shape, g in shapes:
        for layout in layouts:
            for act in acts:
                k += 1
                n, c = shape[:2]
                x = to_layout(torch.randn(shape, device=device, dtype=dtype) * 2 + 0.5, layout)
                w = torch.randn(c, device=device, dtype=dtype)
                b = torch.randn(c, device=device, dtype=dtype)
                s = 0.5 * torch.randn(n, c, device=device, dtype=dtype) if k % 2 else None
                sh = torch.randn(n, c, device=device, dtype=dtype) if k % 2 else None
                yield f"{shape}/G{g}-{layout}-{act}-{'adagn' if k % 2 else 'gn'}", x, g, w, b, s, sh, act


def eager(x, g, w, b, s=None, sh=None, act="linear"):
    """Eager PyTorch in x's dtype: F.group_norm (or, for N * L == 1, which it refuses, the same formula written
    out), the AdaGN affine, F.silu."""
    view = x.shape[:2] + (1,) * (x.dim() - 2)
    if x.shape[0] * x[0, 0].numel() > 1:
        y = F.group_norm(x, g, w, b, EPS)
    else:
        xg = x.reshape(x.shape[0], g, -1)
        xg = (xg - xg.mean(-1, keepdim=True)) * torch.rsqrt(xg.var(-1, correction=0, keepdim=True) + EPS)
        y = xg.reshape(x.shape) * w.reshape(1, -1, *view[2:]) + b.reshape(1, -1, *view[2:])
    if s is not None:
        y = y * (1 + s.reshape(view))
    if sh is not None:
        y = y + sh.reshape(view)
    return F.silu(y) if act == "silu" else y


def ref64(x, g, w, b, s=None, sh=None, act="linear"):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return group_norm_reference(x.double(), g, d(w), d(b), EPS, scale=d(s), shift=d(sh), act=act)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_forward_matches_reference(device, impl, dtype):
    for name, x, g, w, b, s, sh, act in cases(device, dtype, impl):
        y = fastgan.ops.group_norm(x, g, w, b, EPS, scale=s, shift=sh, act=act, impl=impl)
        assert y.dtype == x.dtype and y.shape == x.shape, name
        assert y.stride() == layout_strides(x.shape, is_channels_last(x)), f"{name}: layout not preserved"
        ref = ref64(x, g, w, b, s, sh, act)
        if dtype == torch.float64:  # the reference is no more exact than the kernels here: 1e-10 of the magnitude
            torch.testing.assert_close(y, ref, rtol=0, atol=1e-10 * max(1.0, ref.abs().max().item()), msg=name)
        else:
            assert_rule(y, eager(x, g, w, b, s, sh, act), ref, f"{impl} {dtype} {name}")


def _grads(fn, ins, gy):
    ins = [t.detach().requires_grad_() if t is not None else None for t in ins]
    live = [t for t in ins if t is not None]
    return torch.autograd.grad(fn(*ins), live, gy)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(device, impl, dtype):
    for name, x, g, w, b, s, sh, act in cases(device, dtype, impl, layouts=("contiguous", "channels_last")):
        if x.numel() > 5000:
            continue
        gy = torch.randn_like(x)
        ins = (x, w, b, s, sh)
        ours = _grads(lambda *a: fastgan.ops.group_norm(a[0], g, *a[1:3], EPS, scale=a[3], shift=a[4], act=act,
                                                        impl=impl), ins, gy)
        eag = _grads(lambda *a: eager(a[0], g, *a[1:], act=act), ins, gy)
        ref = _grads(lambda *a: ref64(a[0], g, *a[1:], act=act), [None if t is None else t.double() for t in ins],
                     gy.double())
        # weight/bias grads sum N per-sample values rounded in the acc dtype: floor on sum over n of |value_n|
        per = [_grads(lambda *a: ref64(a[0], g, *a[1:], act=act),
                      [None if t is None else t[i:i + 1].double() if t.dim() > 1 else t.double() for t in ins],
                      gy[i:i + 1].double()) for i in range(x.shape[0])]
        for j, what in enumerate(("x", "weight", "bias", "scale", "shift")[: len(ours)]):
            mag = torch.stack([p[j] for p in per]).abs().sum(0).max().item() if what in ("weight", "bias") else None
            assert_rule(ours[j], eag[j], ref[j], f"{impl} {dtype} {name} grad {what}", grad_floor_ulps(device, impl),
                        mag)


GRADCHECK = [((2, 4, 3, 2), 2, "contiguous", "silu"), ((2, 4, 3, 2), 2, "channels_last", "linear"),
             ((1, 3, 4), 3, "contiguous", "lrelu")]


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("shape,g,layout,act", GRADCHECK)
def test_gradcheck_and_gradgradcheck_float64(device, impl, shape, g, layout, act):
    # x + 0.3: keeps lrelu's kink away from the finite-difference steps
    x = to_layout(torch.randn(shape, device=device, dtype=torch.float64) + 0.3, layout).requires_grad_()
    n, c = shape[:2]
    p = [torch.randn(*sh, device=device, dtype=torch.float64, requires_grad=True) for sh in ((c,), (c,), (n, c), (n, c))]
    fn = lambda x, w, b, s, sh: fastgan.ops.group_norm(x, g, w, b, scale=s, shift=sh, act=act, impl=impl)  # noqa
    fast = impl == "triton"  # the interpreter is slow: random projections instead of full Jacobians
    assert torch.autograd.gradcheck(fn, (x, *p), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x, *p), fast_mode=fast)


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "ref" not in p.id])
def test_third_order_matches_reference(device, impl):
    x = torch.randn(2, 4, 3, 3, device=device, dtype=torch.float64)
    w = torch.randn(4, device=device, dtype=torch.float64)
    ours = third_order_grad(lambda a: fastgan.ops.group_norm(a, 2, w, act="silu", impl=impl), x)
    ref = third_order_grad(lambda a: group_norm_reference(a, 2, w, act="silu"), x)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "ref" not in p.id])
def test_opcheck_kernel_ops(device, impl):
    ops = kernel_ops(impl, torch.device(device).type)
    for layout in ("contiguous", "channels_last"):
        x = to_layout(torch.randn(2, 4, 3, 3, device=device), layout)
        a, b = fold_affine(x, torch.randn(4, device=device), torch.randn(4, device=device), None, None)
        for act in (5, 0):
            for maps in ((None, None), (torch.randn_like(x), torch.randn_like(x))):
                y, mean, rstd = ops.fwd(x, a, b, *maps, 2, EPS, act, 0.0)
                torch.library.opcheck(ops.fwd, (x, a, b, *maps, 2, EPS, act, 0.0))
                torch.library.opcheck(ops.bwd, (torch.randn_like(y), x, mean, rstd, a, b, *maps, 2, EPS, act, 0.0))


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "cpp" in p.id])
def test_compile_fullgraph(device, impl):
    x = torch.randn(2, 4, 5, 5, device=device, requires_grad=True)
    w = torch.randn(4, device=device, requires_grad=True)
    s = torch.randn(2, 4, device=device)

    def f(x, w, s):
        return fastgan.ops.group_norm(x, 2, w, None, scale=s, act="silu", impl=impl)

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w, s)
    torch.testing.assert_close(out, f(x, w, s))
    g = torch.autograd.grad(out.sum(), (x, w))
    torch.testing.assert_close(g, torch.autograd.grad(f(x, w, s).sum(), (x, w)))


def test_errors_are_clear():
    x = torch.randn(2, 6, 4, 4)
    gn = fastgan.ops.group_norm
    with pytest.raises(ValueError, match="divide the 6 channels"):
        gn(x, 4)
    with pytest.raises(ValueError, match="weight must have shape"):
        gn(x, 3, torch.randn(5))
    with pytest.raises(ValueError, match="scale must have shape"):
        gn(x, 3, scale=torch.randn(3, 6))
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        gn(x.to(torch.int32), 3)
    with pytest.raises(ValueError, match="empty"):
        gn(torch.randn(0, 6, 4, 4), 3)
    with pytest.raises(ValueError, match="act must be one of"):
        gn(x, 3, act="gelu")
    with pytest.raises(ValueError, match="3-D, 4-D or 5-D"):
        gn(torch.randn(2, 6), 3)
    with pytest.raises(ValueError, match="is on meta but x is on cpu"):
        gn(x, 3, torch.randn(6, device="meta"))
    with pytest.raises(ValueError, match="is on meta but x is on cpu"):
        gn(x, 3, shift=torch.randn(2, 6, device="meta"))
    if "cpp" in _backend.live_impls("group_norm_fwd", "cpu"):  # the op's own checks, below the Python layer
        a = torch.ones(2, 6, dtype=torch.float64)
        with pytest.raises(RuntimeError, match="num_groups must divide"):
            torch.ops.fastgan.group_norm_fwd(x, a, a, None, None, 4, EPS, 0, 0.0)
        with pytest.raises(RuntimeError, match="act must be"):
            torch.ops.fastgan.group_norm_fwd(x, a, a, None, None, 3, EPS, 3, 0.0)


@pytest.mark.parametrize("device,impl", impl_params())
def test_nan_stays_in_its_group(device, impl):
    x = torch.randn(2, 6, 5, 5, device=device)
    x[1, 2, 3, 4] = float("nan")  # channel 2 is in group 1 of 3
    y = fastgan.ops.group_norm(x, 3, act="silu", impl=impl)
    assert torch.isnan(y[1, 2:4]).all()
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 2:4] = False
    assert torch.isfinite(y[keep]).all()


@pytest.mark.parametrize("device,impl", impl_params())
def test_one_channel_per_group_is_instance_norm(device, impl):
    x, w, b = torch.randn(2, 3, 6, 5, device=device), torch.randn(3, device=device), torch.randn(3, device=device)
    torch.testing.assert_close(fastgan.ops.group_norm(x, 3, w, b, impl=impl), F.instance_norm(x, weight=w, bias=b))


@pytest.mark.parametrize("device,impl", impl_params())
def test_large_mean_offset(device, impl):
    x = (torch.randn(2, 4, 16, 16, device=device, dtype=torch.float64) * 3 + 1e4).float()
    assert_rule(fastgan.ops.group_norm(x, 2, impl=impl), F.group_norm(x, 2), group_norm_reference(x.double(), 2),
                f"{impl} +1e4")


def test_module_is_a_drop_in_for_torch_group_norm():
    theirs = nn.GroupNorm(4, 8)
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours = fastgan.nn.GroupNorm(4, 8)
    ours.load_state_dict(theirs.state_dict())
    assert isinstance(ours, nn.GroupNorm) and set(ours.state_dict()) == set(theirs.state_dict())
    for shape in ((2, 8, 5, 6), (2, 8), (2, 8, 3), (1, 8, 2, 2, 2, 2)):
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), theirs(x))
    # act="silu" matches nn.Sequential(nn.GroupNorm, nn.SiLU), whose state_dict has a "0." prefix
    seq = nn.Sequential(nn.GroupNorm(4, 8), nn.SiLU())
    with torch.no_grad():
        seq[0].weight.normal_()
        seq[0].bias.normal_()
    fused = fastgan.nn.GroupNorm(4, 8, act="silu")
    fused.load_state_dict({k[2:]: v for k, v in seq.state_dict().items()})
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    y_ours, y_theirs = fused(x), seq(x)
    torch.testing.assert_close(y_ours, y_theirs)
    gy = torch.randn_like(y_ours)
    torch.testing.assert_close(torch.autograd.grad(y_ours, (x, fused.weight), gy),
                               torch.autograd.grad(y_theirs, (x, seq[0].weight), gy))
    assert "act='silu'" in repr(fused)
    # no affine; AdaGN conditioning through forward's scale/shift
    plain = fastgan.nn.GroupNorm(2, 8, affine=False)
    assert plain.weight is None
    s, sh = torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(plain(x, s, sh), F.group_norm(x, 2) * (1 + s[..., None, None]) + sh[..., None, None])


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "cpp" in p.id])
def test_compiled_op_autograd_is_native(device, impl):
    """The extension's fwd carries its autograd in C++ (csrc/group_norm_autograd.cpp); the double backward still
    goes through bwd's Python formula, so a penalty gradient matches the reference."""
    x = torch.randn(2, 4, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 4, device=device, dtype=torch.float64)  # AdaGN: group_norm_fwd (plain GN: test_group_norm_wb)
    y = fastgan.ops.group_norm(x, 2, scale=s, act="silu", impl=impl)
    assert "GroupNormFwdFn" in y.grad_fn.name()
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (got,) = torch.autograd.grad(gx.square().sum(), x)
    xr = x.detach().requires_grad_()
    (gr,) = torch.autograd.grad(group_norm_reference(xr, 2, scale=s, act="silu").square().sum(), xr,
                                create_graph=True)
    (want,) = torch.autograd.grad(gr.square().sum(), xr)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "cpp" in p.id])
@pytest.mark.parametrize("act", ["linear", "silu"])
def test_channels_last_row_chunks(device, impl, act):
    """Channels-last input long enough to be split into several row chunks per sample (merged per channel, then
    per group) against the float64 reference, forward and backward."""
    x = to_layout(torch.randn(2, 64, 30, 31, device=device, dtype=torch.float64) * 3 + 2, "channels_last")
    w, b = torch.randn(64, device=device, dtype=torch.float64), torch.randn(64, device=device, dtype=torch.float64)
    s = torch.randn(2, 64, device=device, dtype=torch.float64)
    gy = torch.randn_like(x)
    ins = [t.clone().requires_grad_() for t in (x, w, b, s)]
    y = fastgan.ops.group_norm(ins[0], 8, ins[1], ins[2], scale=ins[3], act=act, impl=impl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    got = (y, *torch.autograd.grad(y, ins, gy))
    ref_ins = [t.clone().requires_grad_() for t in (x, w, b, s)]
    yr = group_norm_reference(ref_ins[0], 8, ref_ins[1], ref_ins[2], scale=ref_ins[3], act=act)
    want = (yr, *torch.autograd.grad(yr, ref_ins, gy))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
