"""fastgan.ops.instance_norm against its float64 reference, for every implementation that runs here."""
import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.ops._layout import is_channels_last, layout_strides
from fastgan.ops.instance_norm_ref import instance_norm_reference

from conftest import op_impl_params, third_order_grad, to_layout
from tolerance import assert_rule, grad_floor_ulps

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def impl_params():
    """(device, impl) pairs for every live implementation; the Triton interpreter only gets small shapes."""
    return op_impl_params("instance_norm_fwd")


SHAPES = [(1, 1, 1, 1), (2, 3, 7, 13), (1, 4, 5), (2, 3, 3, 5, 7), (3, 1, 8, 8), (1, 6, 1, 1), (2, 5, 1)]
BIG_SHAPES = [(1, 2, 65, 65), (2, 20, 9, 11)]  # a plane longer than one CPU chunk; C past one channel tile


def sample_inputs(device, dtype, small_only=False, affine=(True, False)):
    """Fresh random (x, weight, bias) for each shape, layout and affine setting; never zeros."""
    shapes = SHAPES if small_only else SHAPES + BIG_SHAPES
    for shape in shapes:
        for layout in ("contiguous", "channels_last", "strided"):
            for aff in affine:
                x = to_layout(torch.randn(shape, device=device, dtype=dtype) * 2 + 0.5, layout)
                w = torch.randn(shape[1], device=device, dtype=dtype) if aff else None
                b = torch.randn(shape[1], device=device, dtype=dtype) if aff else None
                yield f"{shape}-{layout}-{'affine' if aff else 'plain'}", x, w, b


def eager_instance_norm(x, weight=None, bias=None):
    """Eager PyTorch in x's dtype: F.instance_norm, or for 1-element planes (which it refuses) the same formula."""
    if x[0, 0].numel() > 1:
        return F.instance_norm(x, weight=weight, bias=bias)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x - x.mean(dim=tuple(range(2, x.dim())), keepdim=True)) * torch.rsqrt(torch.tensor(1e-5, dtype=x.dtype))
    y = y * weight.reshape(shape) if weight is not None else y
    return y + bias.reshape(shape) if bias is not None else y


def _per_sample_magnitudes(param_grads, x, gy):
    """For each parameter gradient: max over channels of sum over samples of |that sample's float64 gradient|.

    ``param_grads(x_n, gy_n)`` returns the float64 reference gradients of one sample; the scale of tolerance.py's
    floor for gradients that sum over samples."""
    per = [param_grads(x[n : n + 1].double(), gy[n : n + 1].double()) for n in range(x.shape[0])]
    return [torch.stack([p[i] for p in per]).abs().sum(0).max().item() for i in range(len(per[0]))]


def backward_three_ways(ours, eager, ref, inputs, gy):
    """Input gradients (ours, eager, ref) of each function at ``inputs`` for the output gradient gy; the float64
    reference gets float64 copies. Shared with the AdaIN and SPADE tests (instance norm plus modulation)."""
    grads = []
    for fn, cast in ((ours, lambda t: t), (eager, lambda t: t), (ref, lambda t: t.double())):
        ins = [cast(t).detach().requires_grad_() for t in inputs]
        grads.append(torch.autograd.grad(fn(*ins), ins, cast(gy)))
    return grads


def penalty_grads(fn, gy, x, w, *rest):
    """Gradients of a WGAN-GP-like penalty ||d<fn(x, w, *rest), gy>/dx||^2 w.r.t. x and w (the weight, AdaIN's
    scale or SPADE's gamma): the double backward a critic needs."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    (gx,) = torch.autograd.grad((fn(x, w, *rest) * gy).sum(), x, create_graph=True)
    # A 1-element plane normalises to a constant, so its gradient graph may not reach x: zeros then.
    return torch.autograd.grad(gx.square().sum(), (x, w), allow_unused=True, materialize_grads=True)


def _ref64(x, w, b):
    return instance_norm_reference(x.double(), None if w is None else w.double(), None if b is None else b.double())


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_forward_matches_reference(device, impl, dtype):
    for name, x, w, b in sample_inputs(device, dtype, small_only=impl == "triton"):
        y = fastgan.ops.instance_norm(x, w, b, impl=impl)
        assert y.dtype == x.dtype and y.shape == x.shape, name
        assert y.stride() == layout_strides(x.shape, is_channels_last(x)), f"{name}: layout not preserved"
        assert_rule(y, eager_instance_norm(x, w, b), _ref64(x, w, b), f"{impl} {dtype} {name}")


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(device, impl, dtype):
    for name, x, w, b in sample_inputs(device, dtype, small_only=True, affine=(True,)):
        gy = torch.randn_like(x)
        ours, eager, ref = backward_three_ways(lambda *a: fastgan.ops.instance_norm(*a, impl=impl),
                                               eager_instance_norm, instance_norm_reference, (x, w, b), gy)

        def ref_param_grads(xn, gyn):
            ins = [t.detach().requires_grad_() for t in (xn, w.double(), b.double())]
            return torch.autograd.grad(instance_norm_reference(*ins), ins[1:], gyn)

        mags = [None] + _per_sample_magnitudes(ref_param_grads, x, gy)
        for i, what in enumerate(("grad x", "grad weight", "grad bias")):
            assert_rule(ours[i], eager[i], ref[i], f"{impl} {dtype} {name} {what}", grad_floor_ulps(device, impl),
                        mags[i])


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_double_backward_matches_reference(device, impl, dtype):
    for name, x, w, _ in sample_inputs(device, dtype, small_only=True, affine=(True,)):
        gy = torch.randn_like(x)
        ours = penalty_grads(lambda a, b: fastgan.ops.instance_norm(a, b, impl=impl), gy, x, w)
        eager = penalty_grads(lambda a, b: eager_instance_norm(a, b), gy, x, w)
        ref = penalty_grads(lambda a, b: instance_norm_reference(a, b), gy.double(), x.double(), w.double())
        mags = [None] + _per_sample_magnitudes(
            lambda xn, gyn: penalty_grads(lambda a, b: instance_norm_reference(a, b), gyn, xn, w.double())[1:], x, gy)
        for o, e, r, what, mag in zip(ours, eager, ref, ("x", "weight"), mags):
            assert_rule(o, e, r, f"{impl} {dtype} {name} penalty grad {what}", grad_floor_ulps(device, impl),
                        mag)


GRADCHECK_SHAPES = [((2, 3, 3, 4), "contiguous"), ((2, 3, 3, 4), "channels_last"), ((1, 2, 5), "contiguous")]


# GPU kernels change strategy with the plane size: CUDA C++ runs one warp per plane up to 1024 elements and one block
# per plane above, caching the plane in shared memory up to the device's opt-in limit (~227 KiB on Hopper: a
# 256x256 float32 plane is past it, so it is cached in part); Triton splits planes into tiles and ranges. Odd C in
# channels-last, and planes whose length is not a multiple of the vector width, take the scalar (unvectorised)
# path; 255x257 after 256x256 is a large scalar-path plane after a vectorised one (each kernel needs its own
# opt-in to more than 48 KiB of shared memory). Only the GPU runs these sizes.
GPU_SHAPES = [((2, 3, 32, 32), "contiguous"), ((2, 3, 1, 1025), "contiguous"), ((1, 2, 256, 256), "contiguous"),
              ((1, 2, 255, 257), "contiguous"), ((2, 5, 33, 31), "channels_last"), ((4, 64, 16, 16), "channels_last")]


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if p.id.startswith("cuda")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_plane_strategies_follow_the_rule(device, impl, dtype):
    check_plane_strategies(device, impl, dtype)


def check_plane_strategies(device, impl, dtype, grad_floor_ulps: float = 1.0):
    """GPU_SHAPES forward, backward and penalty gradients under the rule (also run by the emulated CUDA kernels)."""
    for shape, layout in GPU_SHAPES:
        x = to_layout(torch.randn(shape, device=device, dtype=dtype) * 2 + 0.5, layout)
        w, b = (torch.randn(shape[1], device=device, dtype=dtype) for _ in range(2))
        gy = torch.randn_like(x)
        name = f"{impl} {dtype} {shape} {layout}"
        assert_rule(fastgan.ops.instance_norm(x, w, b, impl=impl), eager_instance_norm(x, w, b), _ref64(x, w, b),
                    f"{name} forward")
        ours, eager, ref = backward_three_ways(lambda *a: fastgan.ops.instance_norm(*a, impl=impl),
                                               eager_instance_norm, instance_norm_reference, (x, w, b), gy)
        assert_rule(ours[0], eager[0], ref[0], f"{name} grad x", grad_floor_ulps)
        ours = penalty_grads(lambda a, c: fastgan.ops.instance_norm(a, c, impl=impl), gy, x, w)
        eager = penalty_grads(lambda a, c: eager_instance_norm(a, c), gy, x, w)
        ref = penalty_grads(lambda a, c: instance_norm_reference(a, c), gy.double(), x.double(), w.double())
        assert_rule(ours[0], eager[0], ref[0], f"{name} penalty grad x", grad_floor_ulps)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("shape,layout", GRADCHECK_SHAPES)
def test_gradcheck_and_gradgradcheck_float64(device, impl, shape, layout):
    x = to_layout(torch.randn(shape, device=device, dtype=torch.float64), layout).requires_grad_()
    w = torch.randn(shape[1], device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape[1], device=device, dtype=torch.float64, requires_grad=True)
    fn = lambda *a: fastgan.ops.instance_norm(*a, impl=impl)  # noqa: E731
    fast = impl == "triton"  # the interpreter is slow: random projections instead of full Jacobians
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=fast)


@pytest.mark.parametrize("device,impl", impl_params())
def test_third_order_matches_reference(device, impl):
    x = torch.randn(2, 3, 4, 5, device=device, dtype=torch.float64)
    w = torch.randn(3, device=device, dtype=torch.float64)
    ours = third_order_grad(lambda a: fastgan.ops.instance_norm(a, w, impl=impl), x)
    ref = third_order_grad(lambda a: instance_norm_reference(a, w), x)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_mean_offset(device, impl, dtype):
    x = torch.randn(2, 3, 16, 16, device=device, dtype=torch.float64) * 3 + 1e4
    x = x.to(dtype)
    for layout in ("contiguous", "channels_last"):
        xl = to_layout(x, layout)
        ref = instance_norm_reference(xl.double())
        assert_rule(fastgan.ops.instance_norm(xl, impl=impl), F.instance_norm(xl), ref, f"{impl} {layout} +1e4")


@pytest.mark.parametrize("device,impl", impl_params())
def test_nan_in_gives_nan_out_for_that_plane(device, impl):
    x = torch.randn(2, 3, 5, 5, device=device)
    x[1, 2, 3, 4] = float("nan")
    y = fastgan.ops.instance_norm(x, impl=impl)
    assert torch.isnan(y[1, 2]).all()
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    assert torch.isfinite(y[mask]).all()


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "triton" not in p.id])
def test_gradgradcheck_of_the_input_gradient_float64(device, impl):
    """gradgradcheck of x -> d<y, gy>/dx checks the second- and third-order paths against finite differences."""
    x = torch.randn(2, 3, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 3, 3, 4, device=device, dtype=torch.float64)

    def input_grad(a, b):
        (g,) = torch.autograd.grad((fastgan.ops.instance_norm(a, b, impl=impl) * gy).sum(), a, create_graph=True)
        return g

    assert torch.autograd.gradcheck(input_grad, (x, w))
    assert torch.autograd.gradgradcheck(input_grad, (x, w))
