"""fastgan.ops.grad_penalty against its float64 reference for every live implementation (forward, backward, double
backward, gradcheck), op registration, compile, errors, edge cases, and the gradient penalty of a DCGAN critic."""
import functools
import math

import pytest
import torch

import fastgan
from fastgan import _backend
from fastgan.ops.grad_penalty import grad_penalty_reference
from fastgan.ops.grad_penalty_kernels import kernel_ops, sample_major

from conftest import op_impl_params, third_order_grad, to_layout
from tolerance import assert_rule, grad_floor_ulps

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KINDS = ["wgan-gp", "r1"]
CODES = {"wgan-gp": 0, "r1": 1}
# N=1, C=1, 1x1, odd sizes, 1-D (one element per sample) to 5-D, many tiny samples.
SHAPES = [(1, 1, 1, 1), (2, 3, 7, 13), (1, 4, 5), (5,), (3, 1, 8, 8), (1, 6, 1, 1), (2, 3, 3, 5, 7), (64, 3)]
# Large samples (several CPU chunks; the Triton split path), and many tiny ones.
BIG_SHAPES = [(2, 5, 33, 65), (3, 70000), (700, 3, 2)]


def live(device):
    return _backend.live_impls("grad_penalty_fwd", device)


impl_params = functools.partial(op_impl_params, "grad_penalty_fwd")


def _to_layout(x, layout):
    """conftest's layouts, plus "batch_inner": dense, but dim 0 is not outermost, so samples are interleaved."""
    if layout == "batch_inner" and x.dim() >= 2:
        return x.t().contiguous().t() if x.dim() == 2 else x.movedim(0, -1).contiguous().movedim(-1, 0)
    return to_layout(x, layout)


def make_grad(shape, device, dtype):
    """Random gradients with per-sample norms spread over [0.1, 2.1]: around the two-sided target, as in training."""
    m = math.prod(shape[1:])
    scale = (0.1 + 2 * torch.rand(shape[0], device=device)) / math.sqrt(m)
    return (torch.randn(shape, device=device) * scale.view((-1,) + (1,) * (len(shape) - 1))).to(dtype)


def sample_inputs(device, dtype, small_only=False):
    for shape in SHAPES if small_only else SHAPES + BIG_SHAPES:
        for layout in ("contiguous", "channels_last", "strided", "batch_inner"):
            if (layout == "channels_last" and len(shape) < 3) or (layout == "batch_inner" and len(shape) < 2):
                continue
            yield f"{shape}-{layout}", _to_layout(make_grad(shape, device, dtype), layout)


def eager_penalty(g, kind, target=1.0):
    """The textbook formula in grad's dtype (what penalty_from_grad computed before the fused op)."""
    flat = g.reshape(g.shape[0], -1)
    if kind == "r1":
        return 0.5 * flat.square().sum(dim=1)
    return (torch.linalg.vector_norm(flat, ord=2, dim=1) - target).square()


def _ref64(g, kind, target=1.0):
    return grad_penalty_reference(g.double(), kind, target)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference(device, impl, kind, dtype):
    for name, g in sample_inputs(device, dtype, small_only=impl == "triton"):
        p = fastgan.ops.grad_penalty(g, kind, 0.9, impl=impl)
        assert p.dtype == g.dtype and p.shape == (g.shape[0],), name
        # The forward is a reduction: a float32-accumulating kernel checked on CPU gets tolerance.py's wider floor.
        assert_rule(p, eager_penalty(g, kind, 0.9), _ref64(g, kind, 0.9), f"{impl} {kind} {dtype} {name}",
                    grad_floor_ulps(device, impl))


def _grad(fn, g, gp):
    g = g.detach().requires_grad_()
    return torch.autograd.grad(fn(g), g, gp)[0]


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(device, impl, kind, dtype):
    for name, g in sample_inputs(device, dtype, small_only=True):
        gp = torch.randn(g.shape[0], device=device, dtype=dtype)
        ours = _grad(lambda t: fastgan.ops.grad_penalty(t, kind, impl=impl), g, gp)
        if impl != "ref":
            assert ours.stride() == sample_major(g).stride(), f"{name}: layout not kept"
        eager = _grad(lambda t: eager_penalty(t, kind), g, gp)
        ref = _grad(lambda t: _ref64(t, kind), g.double(), gp.double())
        assert_rule(ours, eager, ref, f"{impl} {kind} {dtype} {name} grad", grad_floor_ulps(device, impl))


def _second_order(fn, g, gp, w):
    """Gradients w.r.t. grad and gp of <d<p, gp>/d grad, w>: the double backward a penalty's .backward() runs."""
    g, gp = g.detach().requires_grad_(), gp.detach().requires_grad_()
    (gx,) = torch.autograd.grad(fn(g), g, gp, create_graph=True)
    return torch.autograd.grad((gx.float() * w).sum(), (g, gp))


def _dot_magnitude(g, w, kind):
    """tolerance.py's floor scale for the gradient w.r.t. gp, a per-sample sum c_n <g_n, w_n>: the largest
    sum_i |c_n g_i w_i| over samples."""
    g, w = g.double().reshape(g.shape[0], -1), w.double().reshape(g.shape[0], -1)
    c = torch.ones(g.shape[0], dtype=g.dtype, device=g.device)
    if kind != "r1":
        r = g.norm(dim=1)
        c = torch.where(r == 0, 0.0, 2 * (r - 1) / r)
    return (c.abs() * (g * w).abs().sum(dim=1)).max().item()


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_double_backward_matches_reference(device, impl, kind, dtype):
    for name, g in list(sample_inputs(device, dtype, small_only=True))[::2]:
        gp = torch.randn(g.shape[0], device=device, dtype=dtype)
        w = torch.randn(g.shape, device=device)
        ours = _second_order(lambda t: fastgan.ops.grad_penalty(t, kind, impl=impl), g, gp, w)
        eager = _second_order(lambda t: eager_penalty(t, kind), g, gp, w)
        ref = _second_order(lambda t: _ref64(t, kind), g.double(), gp.double(), w.double())
        floor = grad_floor_ulps(device, impl)
        assert_rule(ours[0], eager[0], ref[0], f"{impl} {kind} {dtype} {name} d/d grad", floor)
        assert_rule(ours[1], eager[1], ref[1], f"{impl} {kind} {dtype} {name} d/d gp", floor,
                    _dot_magnitude(g, w, kind))


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_and_gradgradcheck_float64(device, impl, kind):
    g = _to_layout(make_grad((3, 2, 3, 4), device, torch.float64), "channels_last").requires_grad_()
    fn = lambda t: fastgan.ops.grad_penalty(t, kind, 0.8, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (g,))
    assert torch.autograd.gradgradcheck(fn, (g,))
    one = make_grad((4,), device, torch.float64).requires_grad_()  # one element per sample: |g| - t
    assert torch.autograd.gradgradcheck(fn, (one,))


@pytest.mark.parametrize("device,impl", impl_params(kernels_only=True))
@pytest.mark.parametrize("kind", KINDS)
def test_third_order_matches_reference(device, impl, kind):
    g = make_grad((3, 2, 5), device, torch.float64)
    ours = third_order_grad(lambda t: fastgan.ops.grad_penalty(t, kind, 0.7, impl=impl), g)
    ref = third_order_grad(lambda t: grad_penalty_reference(t, kind, 0.7), g)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device,impl", impl_params())
def test_zero_norm_sample(device, impl):
    g = make_grad((3, 2, 4), device, torch.float64)
    g[1] = 0
    for kind in KINDS:
        p = fastgan.ops.grad_penalty(g, kind, 0.6, impl=impl)
        assert p[1].item() == (0.6 ** 2 if kind == "wgan-gp" else 0.0)
        gp = torch.tensor([1.0, 2.0, -1.0], device=device, dtype=torch.float64)
        ours = _grad(lambda t: fastgan.ops.grad_penalty(t, kind, 0.6, impl=impl), g, gp)
        ref = _grad(lambda t: eager_penalty(t, kind, 0.6), g, gp)  # vector_norm's subgradient 0 at 0
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        assert (ours[1] == 0).all()
    if impl == "ref":
        return  # plain autograd: the second order of the zero sample is NaN there (0/0 in vector_norm's backward)
    w = torch.randn_like(g)
    ours = _second_order(lambda t: fastgan.ops.grad_penalty(t, "wgan-gp", 0.6, impl=impl), g, gp, w)
    ref = _second_order(lambda t: eager_penalty(t, "wgan-gp", 0.6), g, gp, w)
    assert (ours[0][1] == 0).all() and ours[1][1] == 0  # the subgradient extended: finite, 0
    keep = torch.tensor([0, 2], device=device)
    torch.testing.assert_close(ours[0][keep], ref[0][keep], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours[1][keep], ref[1][keep], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device,impl", [p for p in impl_params(kernels_only=True) if p.values[1] == "cpp"])
def test_bfloat16_sample_with_a_subnormal_norm(device, impl):
    """bfloat16 shares float's exponent range, so a gradient norm r ~ 1e-39 makes the coefficient 2 (r - t) / r
    overflow float; the gradient c g stays below 2 |r - t| and must come out finite (the C++ sweep takes double).
    C++ only: the Triton kernel accumulates squares in float32, as eager CUDA does, so such a norm underflows to 0
    there and the sample gets the zero-norm subgradient 0."""
    g = make_grad((2, 3, 5), device, torch.float32)
    g[1] = 2e-40 * torch.sign(torch.randn(3, 5, device=device))
    g[1, 0, 0] = 0
    g = g.to(torch.bfloat16)
    gp = torch.tensor([1.5, -0.75], device=device, dtype=torch.bfloat16)
    ours = _grad(lambda t: fastgan.ops.grad_penalty(t, "wgan-gp", 1.0, impl=impl), g, gp)
    ref = _grad(lambda t: grad_penalty_reference(t, "wgan-gp", 1.0), g.double(), gp.double())
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), ref, rtol=2e-2, atol=0)


@pytest.mark.skipif("cpp" not in live("cpu"), reason="compiled extension not loaded")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpp_sums_of_squares_beyond_floats_range(dtype):
    """The C++ forward squares and adds float/16-bit values in float blocks of 64 (only the block sums in double);
    a sample whose float sum overflows (values above ~1.8e19) or falls below 2^-60 (squares in float's subnormal
    range) is summed again in double. The saved norm (the second output, float64) must match float64 throughout."""
    big, tiny = (1e4, 1e-3) if dtype == torch.float16 else (3e25, 2e-30)
    g = torch.randn(5, 3, 50, generator=torch.Generator().manual_seed(9))  # 150 = two blocks of 64 and a tail
    g[1] *= big
    g[2] *= tiny
    g[3, 0, 7] = big  # one huge element in an otherwise ordinary sample
    g = g.to(dtype)
    p, norm = torch.ops.fastgan.grad_penalty_fwd(g, 0, 1.0)
    want = g.double().flatten(1).norm(dim=1)
    assert torch.isfinite(norm).all()
    torch.testing.assert_close(norm, want, rtol=2e-7, atol=0)  # ~3 float roundings of non-negative terms at most
    torch.testing.assert_close(p.double(), ((want - 1) ** 2).to(dtype).double(), rtol=1e-2 if dtype != torch.float32
                               else 1e-6, atol=0)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("kind", KINDS)
def test_nan_in_gives_nan_out(device, impl, kind):
    g = make_grad((3, 2, 5), device, torch.float32)
    g[1, 1, 3] = float("nan")
    p = fastgan.ops.grad_penalty(g, kind, impl=impl)
    assert torch.isnan(p).tolist() == [False, True, False]
    gx = _grad(lambda t: fastgan.ops.grad_penalty(t, kind, impl=impl), g, torch.ones(3, device=device))
    ref = _grad(lambda t: eager_penalty(t, kind), g, torch.ones(3, device=device))
    assert torch.equal(torch.isnan(gx), torch.isnan(ref)) and not torch.isnan(gx[[0, 2]]).any()
    assert torch.isnan(gx[1]).all() if kind == "wgan-gp" else torch.isnan(gx).sum() == 1  # r1: gx = gp g


@pytest.mark.skipif("triton" not in live("cpu"), reason="Triton (interpreter) not available")
@pytest.mark.parametrize("kind", KINDS)
def test_triton_plans(kind):
    """The Triton launch plans: a few large samples split into chunks (partial sums + finalize launch), and many
    tiny samples packed several to a program; float64 so any indexing slip shows."""
    kernels = _backend.import_kernels("grad_penalty")
    for shape, split in (((2, 5000), True), ((300, 7), False), ((3, 2, 45, 50), True)):
        n, m = shape[0], math.prod(shape[1:])
        block_n, block_m, chunk, s = kernels._plan(n, m)
        assert (s > 1) == split and chunk % block_m == 0 and (block_n > 1) == (m < 64), shape
        g = make_grad(shape, "cpu", torch.float64)
        gp, w = torch.randn(n, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
        ours = fastgan.ops.grad_penalty(g, kind, 0.7, impl="triton")
        torch.testing.assert_close(ours, _ref64(g, kind, 0.7), rtol=1e-12, atol=1e-13)
        got = _second_order(lambda t: fastgan.ops.grad_penalty(t, kind, 0.7, impl="triton"), g, gp, w)
        want = _second_order(lambda t: _ref64(t, kind, 0.7), g, gp, w)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------------- registration and compile
def _op_samples(device, small=False):
    for dtype in (torch.float32,) if small else (torch.float32, torch.float64):
        for cl, kind in ((False, 0), (True, 1)) if small else ((False, 0), (True, 0), (False, 1), (True, 1)):
            g = make_grad((2, 3, 4, 5), device, dtype)
            yield (g.to(memory_format=torch.channels_last) if cl else g).requires_grad_(), kind


@pytest.mark.parametrize("device,impl", impl_params(kernels_only=True))
def test_opcheck_kernel_ops(device, impl):
    ops = kernel_ops(impl, torch.device(device).type)
    for g, kind in _op_samples(device, small=impl == "triton"):
        torch.library.opcheck(ops.fwd, (g, kind, 0.9))
        _, norm = ops.fwd(g.detach(), kind, 0.9)
        gp = torch.randn(g.shape[0], device=device, dtype=g.dtype, requires_grad=True)
        torch.library.opcheck(ops.bwd, (gp, g, norm, kind, 0.9))
        ggx = torch.randn_like(g, requires_grad=True)
        torch.library.opcheck(ops.dbwd, (ggx, gp, g, norm, kind, 0.9))


@pytest.mark.parametrize("device,impl", impl_params())
def test_compile_fullgraph_aot_eager(device, impl):
    torch._dynamo.reset()
    fn = torch.compile(lambda t: fastgan.ops.grad_penalty(t, "wgan-gp", impl=impl), fullgraph=True,
                       backend="aot_eager")
    g = make_grad((3, 2, 5, 5), device, torch.float32).requires_grad_()
    p = fn(g)
    torch.testing.assert_close(p, eager_penalty(g, "wgan-gp"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(p.sum(), g)[0],
                               torch.autograd.grad(eager_penalty(g, "wgan-gp").sum(), g)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif("cpp" not in live("cpu"), reason="compiled extension not loaded")
def test_compile_fullgraph_inductor_cpp():
    torch._dynamo.reset()
    fn = torch.compile(lambda t: 10 * fastgan.ops.grad_penalty(t, "r1", impl="cpp").mean(), fullgraph=True)
    g = make_grad((4, 3, 6, 6), "cpu", torch.float32).to(memory_format=torch.channels_last).requires_grad_()
    p = fn(g)
    want = 10 * eager_penalty(g, "r1").mean()
    torch.testing.assert_close(p, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(p, g)[0], torch.autograd.grad(want, g)[0], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("impl", live("cpu"))
def test_bad_input_gives_clear_errors(impl):
    gp = fastgan.ops.grad_penalty
    with pytest.raises(ValueError, match="0-d tensor"):
        gp(torch.tensor(1.0), impl=impl)
    with pytest.raises(ValueError, match="grad is empty"):
        gp(torch.randn(0, 3), impl=impl)
    with pytest.raises(ValueError, match="grad is empty"):
        gp(torch.randn(2, 0), impl=impl)
    with pytest.raises(TypeError, match="must be float16, bfloat16, float32 or float64"):
        gp(torch.ones(2, 3, dtype=torch.int64), impl=impl)
    with pytest.raises(ValueError, match="unknown gradient penalty kind 'r3'"):
        gp(torch.randn(2, 3), "r3", impl=impl)
    with pytest.raises(ValueError, match="target must be finite"):
        gp(torch.randn(2, 3), target=float("nan"), impl=impl)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        gp([1.0, 2.0], impl=impl)
    with pytest.raises(ValueError, match="batch dimension"):
        fastgan.losses.penalty_from_grad(torch.tensor(1.0))


@pytest.mark.skipif("cpp" not in live("cpu"), reason="compiled extension not loaded")
def test_compiled_op_checks_its_arguments():
    ops = torch.ops.fastgan
    g = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="kind must be 0"):
        ops.grad_penalty_fwd(g, 2, 1.0)
    with pytest.raises(RuntimeError, match="grad is empty"):
        ops.grad_penalty_fwd(torch.randn(0, 3), 0, 1.0)
    with pytest.raises(RuntimeError, match="0-D tensor"):
        ops.grad_penalty_fwd(torch.tensor(1.0), 0, 1.0)
    with pytest.raises(RuntimeError, match=r"gp must have shape \(2,\)"):
        ops.grad_penalty_bwd(torch.ones(3), g, torch.ones(2, dtype=torch.float64), 0, 1.0)
    with pytest.raises(RuntimeError, match="ggx must have grad's shape"):
        ops.grad_penalty_dbwd(torch.ones(2, 4), torch.ones(2), g, torch.ones(2, dtype=torch.float64), 0, 1.0)


def test_impl_selection():
    g = torch.randn(2, 3)
    assert _backend.select("grad_penalty_fwd", g.device) == live("cpu")[0]
    with pytest.raises(RuntimeError, match="impl='cuda' of grad_penalty_fwd cannot run on a cpu tensor"):
        fastgan.ops.grad_penalty(g, impl="cuda")


# ---------------------------------------------------------------------------------------- gradient penalty
@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("kind", ["wgan-gp", "dragan", "r1"])
def test_dcgan_critic_penalty_equals_textbook(device, impl, kind):
    """The penalty and its critic-weight gradients (the double backward through the critic) with the fused op
    equal the textbook formula; the critic runs on its default kernels, only the reduction is pinned."""
    from fastgan.models import DCGANCritic

    critic = DCGANCritic(img_channels=3, base=4, image_size=16).double().to(device)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, device=device).requires_grad_()
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    ours = 10 * fastgan.ops.grad_penalty(grad, kind, 0.8, impl=impl).mean()
    flat = grad.reshape(3, -1)
    want = 10 * ((flat.norm(2, dim=1) - 0.8) ** 2 if kind != "r1" else 0.5 * flat.pow(2).sum(1)).mean()
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    params = list(critic.parameters())
    for a, b in zip(torch.autograd.grad(ours, params, retain_graph=True, allow_unused=True),
                    torch.autograd.grad(want, params, allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    if impl == live(device)[0]:  # gradient_penalty runs the same op through penalty_from_grad
        real = x.detach()
        got = fastgan.losses.gradient_penalty(critic, real, kind="r1", weight=10.0)
        torch.testing.assert_close(got, 10 * (0.5 * flat.pow(2).sum(1)).mean(), rtol=1e-12, atol=1e-12)
