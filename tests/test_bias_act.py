"""fastgan.ops.bias_act against its float64 reference for every live implementation; op registration, compile,
errors and the nn module."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import _backend
from fastgan.ops.bias_act import bias_act_reference
from fastgan.ops.bias_act_kernels import ACT_CODES, is_dense, kernel_ops

from conftest import devices, op_impl_params, third_order_grad, to_layout
from tolerance import assert_rule, grad_floor_ulps

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ACTS = list(ACT_CODES)
# (shape, dim): N=1, C=1, 1x1 planes, odd sizes, 1-D to 5-D, features on the last dim.
SHAPES = [((1, 1, 1, 1), 1), ((2, 3, 7, 13), 1), ((1, 4, 5), 1), ((2, 3, 3, 5, 7), 1), ((3, 1, 8, 8), 1),
          ((1, 6, 1, 1), 1), ((5, 7), 1), ((5, 7), -1), ((4, 3, 9), -1), ((11,), 0)]
BIG_SHAPES = [((2, 5, 33, 65), 1), ((700, 3), 1), ((3, 40000), -1)]  # several CPU chunks; long runs of one channel


def live(device):
    return _backend.live_impls("bias_act_fwd", device)


impl_params = functools.partial(op_impl_params, "bias_act_fwd")


def sample_inputs(device, dtype, small_only=False, bias=(True, False)):
    shapes = SHAPES if small_only else SHAPES + BIG_SHAPES
    for shape, dim in shapes:
        for layout in ("contiguous", "channels_last", "strided"):
            if layout == "channels_last" and len(shape) < 3:
                continue
            for with_bias in bias:
                x = to_layout(torch.randn(shape, device=device, dtype=dtype) * 2, layout)
                b = torch.randn(shape[dim], device=device, dtype=dtype) if with_bias else None
                yield f"{shape}-dim{dim}-{layout}-{'bias' if with_bias else 'nobias'}", x, b, dim


def eager_bias_act(x, b, act, dim, clamp=None, gain=None):
    """The usual PyTorch formulation in x's dtype, e.g. ``F.leaky_relu(x + b.view(...), 0.2) * sqrt(2)``."""
    if b is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        x = x + b.view(shape)
    y = {"linear": lambda t: t, "relu": F.relu, "lrelu": lambda t: F.leaky_relu(t, 0.2), "tanh": torch.tanh,
         "sigmoid": torch.sigmoid, "silu": F.silu, "gelu": F.gelu}[act](x)
    gain = 1.0 if gain is None else gain
    y = y * gain if gain != 1.0 else y
    return y.clamp(-clamp, clamp) if clamp is not None else y


def _ref64(x, b, act, dim, clamp=None):
    return bias_act_reference(x.double(), None if b is None else b.double(), act, clamp=clamp, dim=dim)


def _bias_magnitude(gx_ref, dim):
    """tolerance.py's floor scale for the bias gradient: max over channels of the sum of |per-element terms|."""
    dims = [d for d in range(gx_ref.dim()) if d != dim % gx_ref.dim()]
    return (gx_ref.abs().sum(dim=dims) if dims else gx_ref.abs()).max().item()


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference(device, impl, act, dtype):
    for name, x, b, dim in sample_inputs(device, dtype, small_only=impl == "triton"):
        y = fastgan.ops.bias_act(x, b, act, dim=dim, impl=impl)
        assert y.dtype == x.dtype and y.shape == x.shape, name
        if is_dense(x) and impl != "ref":
            assert y.stride() == x.stride(), f"{name}: layout not kept"
        assert_rule(y, eager_bias_act(x, b, act, dim), _ref64(x, b, act, dim), f"{impl} {act} {dtype} {name}")


def _grads(fn, x, b, gy):
    ins = [t.detach().requires_grad_() for t in (x, b)]
    return torch.autograd.grad(fn(*ins), ins, gy)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(device, impl, act, dtype):
    for name, x, b, dim in sample_inputs(device, dtype, small_only=True, bias=(True,)):
        gy = torch.randn_like(x)
        ours = _grads(lambda t, c: fastgan.ops.bias_act(t, c, act, dim=dim, impl=impl), x, b, gy)
        eager = _grads(lambda t, c: eager_bias_act(t, c, act, dim), x, b, gy)
        ref = _grads(lambda t, c: bias_act_reference(t, c, act, dim=dim), x.double(), b.double(), gy.double())
        floor = grad_floor_ulps(device, impl)
        assert_rule(ours[0], eager[0], ref[0], f"{impl} {act} {dtype} {name} grad x", floor)
        assert_rule(ours[1], eager[1], ref[1], f"{impl} {act} {dtype} {name} grad bias", floor,
                    _bias_magnitude(ref[0], dim))


def _penalty_grads(fn, x, b, gy):
    """Gradients of an R1-like penalty ||d<y, gy>/dx||^2 w.r.t. x and bias: a double backward."""
    x, b = x.detach().requires_grad_(), b.detach().requires_grad_()
    (gx,) = torch.autograd.grad((fn(x, b) * gy).sum(), x, create_graph=True)
    if not gx.requires_grad:  # linear: eager's input gradient does not depend on x
        return torch.zeros_like(x), torch.zeros_like(b)
    return torch.autograd.grad(gx.float().square().sum(), (x, b), allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_double_backward_matches_reference(device, impl, act, dtype):
    for name, x, b, dim in list(sample_inputs(device, dtype, small_only=True, bias=(True,)))[::3]:
        gy = torch.randn_like(x)
        ours = _penalty_grads(lambda t, c: fastgan.ops.bias_act(t, c, act, dim=dim, impl=impl), x, b, gy)
        eager = _penalty_grads(lambda t, c: eager_bias_act(t, c, act, dim), x, b, gy)
        ref = _penalty_grads(lambda t, c: bias_act_reference(t, c, act, dim=dim), x.double(), b.double(),
                             gy.double())
        floor = grad_floor_ulps(device, impl)
        assert_rule(ours[0], eager[0], ref[0], f"{impl} {act} {dtype} {name} penalty grad x", floor)
        assert_rule(ours[1], eager[1], ref[1], f"{impl} {act} {dtype} {name} penalty grad bias", floor,
                    _bias_magnitude(ref[0], dim))


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_and_gradgradcheck_float64(device, impl, act):
    x = to_layout(torch.randn(2, 3, 4, 2, device=device, dtype=torch.float64), "channels_last").requires_grad_()
    b = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)
    clamp = None if act in ("relu", "linear") else 0.7 if act in ("tanh", "sigmoid") else 1.5
    with torch.no_grad():  # keep finite differences away from the clamp's edges and the kinks at z = 0
        v = fastgan.ops.bias_act_reference(x, b, act) - 0.0
        z = x + b.view(1, 3, 1, 1)
        ok = (((v.abs() - clamp).abs() > 1e-3) if clamp is not None else True) & (z.abs() > 1e-3)
        x.masked_fill_(~ok, 0.3)
    fn = lambda t, c: fastgan.ops.bias_act(t, c, act, clamp=clamp, impl=impl)  # noqa: E731
    fast = impl == "triton"  # the interpreter is slow: random projections instead of full Jacobians
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=fast)


@pytest.mark.parametrize("device,impl", impl_params(kernels_only=True))
@pytest.mark.parametrize("act", ["gelu", "silu", "tanh", "lrelu"])
def test_third_order_matches_reference(device, impl, act):
    x = torch.randn(2, 3, 4, device=device, dtype=torch.float64)
    b = torch.randn(3, device=device, dtype=torch.float64)
    ours = third_order_grad(lambda t: fastgan.ops.bias_act(t, b, act, clamp=2.0, impl=impl), x)
    ref = third_order_grad(lambda t: bias_act_reference(t, b, act, clamp=2.0), x)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("act,clamp", [("relu", None), ("relu", 1.0), ("lrelu", None), ("lrelu", 0.5)])
def test_piecewise_linear_second_order_is_zero_as_eager(device, impl, act, clamp):
    # f'' = 0: the autograd formulas return zeros without a dbwd kernel. They must still be defined tensors of
    # x's and bias's shape and dtype (torch.autograd.grad of a leaf gets a tensor, not an unused-input error), and
    # NaN in the outer gradient gives zeros as eager's leaky_relu/clamp double backward does.
    x = to_layout(torch.randn(2, 3, 5, 4, device=device), "channels_last").requires_grad_()
    b = torch.randn(3, device=device, requires_grad=True)
    gy, ggx = torch.randn_like(x), torch.randn_like(x)
    ggx[0, 1, 2, 3] = float("nan")

    def second(fn):
        (gx, gb) = torch.autograd.grad(fn(x, b), (x, b), gy, create_graph=True)
        return torch.autograd.grad((gx, gb), (x, b), (ggx, torch.randn_like(gb)))

    ours = second(lambda t, c: fastgan.ops.bias_act(t, c, act, gain=1.0, clamp=clamp, impl=impl))
    eager = second(lambda t, c: eager_bias_act(t, c, act, 1, clamp=clamp, gain=1.0))
    for o, e, like in zip(ours, eager, (x, b)):
        assert o.shape == like.shape and o.dtype == like.dtype
        assert torch.equal(o, torch.zeros_like(like)) and torch.equal(e, torch.zeros_like(like))


@pytest.mark.parametrize("device,impl", impl_params())
def test_clamp_values_and_zero_gradient(device, impl):
    x = torch.linspace(-4, 4, 2 * 3 * 16, device=device).reshape(2, 3, 16).requires_grad_()
    b = torch.tensor([0.0, 0.5, -0.5], device=device, requires_grad=True)
    y = fastgan.ops.bias_act(x, b, "lrelu", clamp=1.0, impl=impl)
    ref = bias_act_reference(x.detach().double(), b.detach().double(), "lrelu", clamp=1.0)
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
    assert y.max().item() == 1.0 and y.min().item() >= -1.0
    gx, gb = torch.autograd.grad(y.sum(), (x, b))
    clipped = bias_act_reference(x.detach().double(), b.detach().double(), "lrelu").abs() > 1.0
    assert clipped.any() and (gx[clipped] == 0).all() and (gx[~clipped] != 0).all()
    torch.testing.assert_close(gb, gx.sum(dim=(0, 2)))
    y0 = fastgan.ops.bias_act(x, b, "gelu", clamp=0.0, impl=impl)  # clamp=0: all zeros, no gradient
    assert (y0 == 0).all()


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("act", ACTS)
def test_nan_in_gives_nan_out(device, impl, act):
    x = torch.randn(2, 3, 5, device=device)
    x[1, 2, 3] = float("nan")
    y = fastgan.ops.bias_act(x, torch.randn(3, device=device), act, clamp=0.5, impl=impl)
    assert torch.isnan(y[1, 2, 3]) and torch.isnan(y).sum() == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's inf / inf in the Triton interpreter
@pytest.mark.parametrize("device,impl", impl_params(kernels_only=True))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_infinities_as_the_reference(device, impl, dtype):
    # Outputs and first/second derivatives at +-inf equal the reference's (eager's), NaN where it gives NaN. The
    # C++ silu gave -inf at -inf and an infinite derivative (its exp clamps the argument to [-87, 88]).
    x = torch.tensor([-math.inf, math.inf, -3.0, 2.0], device=device, dtype=dtype)

    def orders(fn):
        t = x.clone().requires_grad_()
        y = fn(t)
        (g,) = torch.autograd.grad(y.sum(), t, create_graph=True)
        # The reference's piecewise-linear gradients are constants (no graph); the kernels' are zeros.
        g2 = torch.autograd.grad(g.sum(), t)[0] if g.requires_grad else torch.zeros_like(g)
        return [v.detach()[:2].double() for v in (y, g, g2)]

    for act in ACTS:
        if act in ("tanh", "gelu"):
            continue  # eager's float tanh'' and gelu at inf are NaN by its formulas' inf * 0; ours are not checked
        ours = orders(lambda t: fastgan.ops.bias_act(t, None, act, dim=0, impl=impl))
        ref = orders(lambda t: bias_act_reference(t, None, act, dim=0))
        for k, (o, r) in enumerate(zip(ours, ref)):
            torch.testing.assert_close(o, r, equal_nan=True, atol=1e-30, rtol=2 * torch.finfo(dtype).eps,
                                       msg=f"{act} order {k}")


@pytest.mark.parametrize("device,impl", impl_params())
def test_mixed_bias_dtype_and_defaults(device, impl):
    x = torch.randn(2, 4, 3, device=device, dtype=torch.float16)
    b = torch.randn(4, device=device, dtype=torch.float32, requires_grad=True)
    y = fastgan.ops.bias_act(x, b, impl=impl)  # lrelu, alpha 0.2, gain 1: F.leaky_relu(x + b, 0.2)
    expected = F.leaky_relu(x.float() + b.detach().view(1, 4, 1), 0.2)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), expected, rtol=1e-3, atol=1e-3)
    (gb,) = torch.autograd.grad(y.float().sum(), b)
    assert gb.dtype == torch.float32
    plain = fastgan.ops.bias_act(x.float(), None, "swish", gain=1.0, impl=impl)
    torch.testing.assert_close(plain, F.silu(x.float()))


# -------------------------------------------------------------------------------- registration and compile
def _op_samples(device, small=False):
    for dtype in (torch.float32,) if small else (torch.float32, torch.float64):
        for cl, with_bias, clamp in ((False, True, -1.0), (True, True, 1.0), (False, False, 0.5))[: 2 if small else 3]:
            x = torch.randn(2, 3, 4, 5, device=device, dtype=dtype)
            x = x.to(memory_format=torch.channels_last) if cl else x
            b = torch.randn(3, device=device, dtype=dtype, requires_grad=True) if with_bias else None
            yield x.requires_grad_(), b, clamp


@pytest.mark.parametrize("device,impl", impl_params(kernels_only=True))
def test_opcheck_kernel_ops(device, impl):
    ops = kernel_ops(impl, torch.device(device).type)
    for x, b, clamp in _op_samples(device, small=impl == "triton"):
        act = ACT_CODES["silu"] if b is not None else ACT_CODES["lrelu"]
        args = (act, 0.2, 1.3, clamp, 1)
        torch.library.opcheck(ops.fwd, (x, b) + args)
        gy = torch.randn_like(x, requires_grad=True)
        torch.library.opcheck(ops.bwd, (gy, x, b) + args)
        ggx = torch.randn_like(x, requires_grad=True)
        torch.library.opcheck(ops.dbwd, (ggx, gy, x, b) + args)


@pytest.mark.parametrize("device,impl", impl_params())
def test_compile_fullgraph_aot_eager(device, impl):
    torch._dynamo.reset()
    fn = torch.compile(lambda t, c: fastgan.ops.bias_act(t, c, "lrelu", clamp=2.0, impl=impl), fullgraph=True,
                       backend="aot_eager")
    x = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    y = fn(x, b)
    torch.testing.assert_close(y, eager_bias_act(x, b, "lrelu", 1, clamp=2.0), rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(y.square().sum(), (x, b))
    g_ref = torch.autograd.grad(eager_bias_act(x, b, "lrelu", 1, clamp=2.0).square().sum(), (x, b))
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("act", ["lrelu", "tanh", "silu"])
@pytest.mark.parametrize("pin", [None, "ref", "first-live"])
def test_compile_fullgraph_automatic_and_pinned_by_use_impl(device, act, pin):
    # The automatic choice (impl=None) reads the use_impl pin; Dynamo cannot trace a ContextVar read, so this
    # failed with fullgraph=True for every call without impl= (the public API's default), nn.BiasAct included.
    pin = live(device)[0] if pin == "first-live" else pin
    module = fastgan.nn.BiasAct(4, act=act)
    x = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    b = torch.randn(4, device=device)
    with fastgan.use_impl(pin):
        torch._dynamo.reset()
        y = torch.compile(lambda t: fastgan.ops.bias_act(t, b, act), fullgraph=True, backend="aot_eager")(x)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        torch._dynamo.reset()
        ym = torch.compile(module.to(device), fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(y, eager_bias_act(x, b, act, 1), rtol=1e-5, atol=1e-5)
    g_ref = torch.autograd.grad(eager_bias_act(x, b, act, 1).square().sum(), x)[0]
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ym, module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif("cpp" not in live("cpu"), reason="compiled extension not loaded")
def test_compile_fullgraph_inductor_cpp():
    torch._dynamo.reset()
    fn = torch.compile(lambda t, c: fastgan.ops.bias_act(t, c, "gelu", impl="cpp") * 2, fullgraph=True)
    x = torch.randn(2, 8, 5, 5, requires_grad=True).to(memory_format=torch.channels_last)
    b = torch.randn(8, requires_grad=True)
    y = fn(x, b)
    torch.testing.assert_close(y, F.gelu(x + b.view(1, 8, 1, 1)) * 2, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(y.sum(), (x, b))
    g_ref = torch.autograd.grad((F.gelu(x + b.view(1, 8, 1, 1)) * 2).sum(), (x, b))
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("impl", live("cpu"))
def test_bad_input_gives_clear_errors(impl):
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\) to match x.shape\[1\]"):
        fastgan.ops.bias_act(x, torch.randn(4), impl=impl)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\) to match x.shape\[2\]"):
        fastgan.ops.bias_act(x, torch.randn(3), dim=-1, impl=impl)
    with pytest.raises(ValueError, match="unknown act 'elu'"):
        fastgan.ops.bias_act(x, act="elu", impl=impl)
    with pytest.raises(ValueError, match="x is empty"):
        fastgan.ops.bias_act(torch.randn(0, 3), torch.randn(3), impl=impl)
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        fastgan.ops.bias_act(x, torch.randn(3, device="meta"), impl=impl)
    with pytest.raises(TypeError, match="must be float16, bfloat16, float32 or float64"):
        fastgan.ops.bias_act(torch.ones(2, 3, dtype=torch.int64), impl=impl)
    with pytest.raises(ValueError, match="dim must be in"):
        fastgan.ops.bias_act(x, dim=3, impl=impl)
    with pytest.raises(ValueError, match="clamp must be >= 0"):
        fastgan.ops.bias_act(x, clamp=-1.0, impl=impl)
    for bad in ({"alpha": math.nan}, {"gain": math.inf}, {"alpha": -math.inf}):  # every impl, not only the C++ op
        with pytest.raises(ValueError, match="alpha and gain must be finite"):
            fastgan.ops.bias_act(x, **bad, impl=impl)


@pytest.mark.skipif("cpp" not in live("cpu"), reason="compiled extension not loaded")
def test_compiled_op_checks_its_arguments():
    x = torch.randn(2, 3, 4)
    ops = torch.ops.fastgan
    with pytest.raises(RuntimeError, match=r"bias_act_fwd: bias must have shape \(3,\)"):
        ops.bias_act_fwd(x, torch.ones(4), 2, 0.2, 1.0, -1.0, 1)
    with pytest.raises(RuntimeError, match="act must be an activation code 0-6"):
        ops.bias_act_fwd(x, None, 9, 0.2, 1.0, -1.0, 1)
    with pytest.raises(RuntimeError, match="x is empty"):
        ops.bias_act_fwd(torch.randn(2, 0, 4), None, 2, 0.2, 1.0, -1.0, 1)
    with pytest.raises(RuntimeError, match="grad_y must have x's shape"):
        ops.bias_act_bwd(torch.randn(2, 3), x, None, 2, 0.2, 1.0, -1.0, 1)
    with pytest.raises(RuntimeError, match="dim must be in"):
        ops.bias_act_fwd(x, None, 2, 0.2, 1.0, -1.0, 3)


def test_impl_selection():
    x = torch.randn(2, 3)
    assert _backend.select("bias_act_fwd", x.device) == live("cpu")[0]
    with pytest.raises(RuntimeError, match="impl='cuda' of bias_act_fwd cannot run on a cpu tensor"):
        fastgan.ops.bias_act(x, impl="cuda")


@pytest.mark.skipif("cpp" not in live("cpu"), reason="compiled extension not loaded")
@pytest.mark.parametrize("act", ["sigmoid", "silu"])
def test_auto_selection_of_smooth_acts_on_cpu(act):
    """sigmoid/silu: the fused kernel when autograd does not record the call, PyTorch's math when it does
    (float32 gradients, faster on CPU than the kernel's float64 ones); gelu and tanh: always PyTorch's math."""
    gen = torch.Generator().manual_seed(3)
    x, b = 4 * torch.randn(64, 33, generator=gen), torch.randn(33, generator=gen)
    kernel = fastgan.ops.bias_act(x, b, act=act, dim=1, impl="cpp")
    ref = fastgan.ops.bias_act(x, b, act=act, dim=1, impl="ref")
    assert not torch.equal(kernel, ref), "inputs do not tell the two implementations apart"
    with torch.no_grad():
        assert torch.equal(fastgan.ops.bias_act(x, b, act=act, dim=1), kernel)
    assert torch.equal(fastgan.ops.bias_act(x, b, act=act, dim=1), kernel)  # nothing requires grad
    xr = x.clone().requires_grad_()
    assert torch.equal(fastgan.ops.bias_act(xr, b, act=act, dim=1).detach(), ref)
    for always in ("gelu", "tanh"):
        always_ref = fastgan.ops.bias_act(x, b, act=always, dim=1, impl="ref")
        assert not torch.equal(fastgan.ops.bias_act(x, b, act=always, dim=1, impl="cpp"), always_ref)
        with torch.no_grad():
            assert torch.equal(fastgan.ops.bias_act(x, b, act=always, dim=1), always_ref)


@pytest.mark.parametrize("device,impl", impl_params(kernels_only=True))
@pytest.mark.parametrize("act", ["linear", "relu", "lrelu", "tanh", "sigmoid", "silu", "gelu"])
def test_signed_zero_as_the_reference(device, impl, act):
    """Without a bias nothing is added, so -0.0 keeps its sign wherever eager's activation keeps it (relu too)."""
    x = torch.tensor([[-0.0, 0.0, -1.0, 2.0, -1e-30]], device=device)
    y = fastgan.ops.bias_act(x, act=act, gain=1.0, impl=impl)
    ref = fastgan.ops.bias_act(x, act=act, gain=1.0, impl="ref")
    assert torch.signbit(y).tolist() == torch.signbit(ref).tolist()


@pytest.mark.skipif("cpp" not in live("cpu"), reason="compiled extension not loaded")
def test_cpp_gelu_keeps_relative_precision_in_the_negative_tail():
    """The C++ gelu takes Phi(z) for z < 0 as erfc(-z / sqrt2) / 2 (vec_math.h's normal tail), not eager's
    (1 + erf) / 2, which cancels: eager's float gelu is 100% off below z ~ -5.5. Below |z| = 1.5 the float forward
    uses 1/2 + z P(z^2) instead, where the tail form's float error grew to 7.8 ulps (eager: 1.6). Measured on an AMD
    EPYC (AVX-512 clone; the baseline alike), in ulps of 2^-24 relative: forward 2.2 for |z| < 0.5, 9 for z in
    [-3, -0.5), 21 to z = -6, 4.0e-6 relative down to z = -12.5; gradient within 6e-8; gelu(1e-20) is exactly 5e-21."""
    z = torch.linspace(-12.5, 4.0, 20001)
    zd = z.double()
    phi = 0.5 * torch.special.erfc(-zd / math.sqrt(2))
    pdf = torch.exp(-0.5 * zd * zd) / math.sqrt(2 * math.pi)
    zr = z.clone().requires_grad_()
    y = fastgan.ops.bias_act(zr, None, "gelu", dim=0, impl="cpp")
    (d1,) = torch.autograd.grad(y, zr, torch.ones_like(z))

    def rel_err(t, ref, lo=-13.0, hi=5.0):
        keep = (ref.abs() > torch.finfo(torch.float32).tiny) & (zd >= lo) & (zd < hi)
        return ((t.double() - ref).abs() / ref.abs())[keep].max().item()

    ulp = 2.0**-24
    assert rel_err(F.gelu(z), zd * phi) > 0.5, "the inputs do not reach where eager's formula cancels"
    assert rel_err(y, zd * phi) < 1e-5
    assert rel_err(y, zd * phi, lo=-5.0) < 1.5e-6
    assert rel_err(y, zd * phi, lo=-0.5, hi=0.5) < 4 * ulp
    assert rel_err(d1, phi + zd * pdf) < 2e-7
    tiny = torch.tensor([1e-20, -1e-20])
    assert torch.equal(fastgan.ops.bias_act(tiny, None, "gelu", dim=0, impl="cpp"), tiny * 0.5)


@pytest.mark.skipif("cpp" not in live("cpu"), reason="compiled extension not loaded")
def test_cpp_gelu_second_derivative_at_infinity_is_nan_as_the_reference():
    """f''(z) = pdf(z) (2 - z^2) is 0 * inf at z = +-inf: NaN in the reference and eager. The kernel once clamped the
    exp to e^-708 there and returned -inf."""
    x = torch.tensor([math.inf, -math.inf, 1.0])
    out = []
    for impl in ("cpp", "ref"):
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fastgan.ops.bias_act(xr, None, "gelu", dim=0, impl=impl).sum(), xr,
                                   create_graph=True)
        out.append(torch.autograd.grad(g.sum(), xr)[0])
    torch.testing.assert_close(out[0], out[1], equal_nan=True)
    assert out[0][:2].isnan().all()


def test_reference_returns_a_new_tensor_for_the_identity():
    """linear, no bias, gain 1, no clamp: the reference computes nothing, yet must not hand back x itself (writing
    into the result would change x), as every other path."""
    x = torch.randn(3, 4)
    y = fastgan.ops.bias_act(x, None, "linear", impl="ref")
    assert y is not x and y.data_ptr() != x.data_ptr()
    torch.testing.assert_close(y, x)


# ---------------------------------------------------------------------------------------------- module
def test_module_bias_act():
    m = fastgan.nn.BiasAct(5, act="lrelu", clamp=256.0)
    assert list(m.state_dict()) == ["bias"] and m.bias.shape == (5,) and m.gain == 1.0
    with torch.no_grad():
        m.bias.normal_()
    x = torch.randn(3, 5, 4, 4, requires_grad=True)
    torch.testing.assert_close(m(x), eager_bias_act(x, m.bias, "lrelu", 1, clamp=256.0), rtol=1e-5, atol=1e-5)
    m(x).sum().backward()
    assert m.bias.grad is not None and m.bias.grad.shape == (5,)
    fc = fastgan.nn.BiasAct(7, act="gelu", dim=-1, bias=False)
    assert fc.bias is None and fc.gain == 1.0
    torch.testing.assert_close(fc(torch.ones(2, 7)), F.gelu(torch.ones(2, 7)))
    with pytest.raises(ValueError, match="5 features along dim 1"):
        m(torch.randn(2, 4, 3))


_ISA_SCRIPT = r"""
import sys, torch, fastgan
x0, b0, g0 = torch.load(sys.argv[1])
out = {"exact": [], "fma_exp": []}
for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
    for act in ("linear", "relu", "lrelu", "tanh", "sigmoid", "silu", "gelu"):
        for clamp in (None, 2.5):
            x = x0.to(dt).requires_grad_()
            y = fastgan.ops.bias_act(x, b0.to(dt), act=act, gain=1.3, clamp=clamp, impl="cpp")
            (gx,) = torch.autograd.grad(y, x, g0.to(dt), create_graph=True)
            (ggx,) = torch.autograd.grad(gx, x, g0.to(dt), allow_unused=True)
            grads = [gx.detach()] + ([] if ggx is None else [ggx])
            if dt == torch.float64 or act in ("linear", "relu", "lrelu"):
                out["exact"] += [y.detach()] + grads
            elif act == "gelu":  # the float forward's normal tail has FMA; the gradients compute in double, without
                out["fma_exp"].append(y.detach())
                out["exact"] += grads
            else:
                out["fma_exp"] += [y.detach()] + grads
torch.save(out, sys.argv[2])
"""


@pytest.mark.skipif("cpp" not in live("cpu"), reason="compiled extension not loaded")
def test_isa_clones_bitwise_equal(tmp_path):
    """The C++ kernel runs baseline, AVX2 or AVX-512 code by CPU (capped by ATEN_CPU_CAPABILITY). None lets the
    compiler contract to FMA or reassociate, so every clone must give the same bits in every dtype, forward, backward
    and double backward; the one exception is chosen in source: the float exp and tanh of tanh, sigmoid and SiLU and
    the float normal tail of gelu's forward have FMA in the AVX2 and AVX-512 clones (vec_math.h), which then agree bit
    for bit with each other and with the baseline to a few ulps. Inputs come from one file (torch.randn itself differs between ATen's ISA paths).
    Capabilities the CPU lacks fall back to a lower clone, so the comparison is vacuous only on a CPU without AVX2."""
    from isa_clones import assert_fma_clones, assert_same_bits, outputs_per_isa

    gen = torch.Generator().manual_seed(7)
    # 4*64*33*17 elements: several parallel chunks, vector bodies and scalar tails; values cross the clamp.
    x, g = (3 * torch.randn(4, 64, 33, 17, generator=gen) for _ in range(2))
    res = outputs_per_isa(tmp_path, _ISA_SCRIPT, (x, torch.randn(64, generator=gen), g))
    assert_same_bits({cap: r["exact"] for cap, r in res.items()}, min_outputs=50)
    assert_fma_clones({cap: r["fma_exp"] for cap, r in res.items()}, min_outputs=30)
