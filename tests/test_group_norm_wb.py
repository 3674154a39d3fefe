"""fastgan::group_norm_wb: F.group_norm's weight/bias form of the group-norm kernels, with the fold into the (N, C)
float64 affine and its gradient's sum over N in C++ (csrc/group_norm_autograd.cpp). ``fastgan.ops.group_norm``
takes it for plain GroupNorm(+act) on the C++ backend; these tests pin that it equals the general path bit for bit
and differentiates to second order, including the graph into weight and bias under create_graph."""
import pytest
import torch

import fastgan
from fastgan import _backend
from fastgan.ops.group_norm import fold_affine, group_norm_reference
from fastgan.ops.group_norm_kernels import ACTS, kernel_ops

pytestmark = pytest.mark.skipif(
    not _backend.available("group_norm_fwd", "cpp", "cpu") or not hasattr(torch.ops.fastgan, "group_norm_wb"),
    reason="compiled extension with group_norm_wb not loaded")

EPS = 1e-5


def _cl(x):
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("act", ["linear", "silu", "lrelu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_the_folded_path_bitwise(act, layout, dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 5, 7, generator=gen).to(dtype)
    x = _cl(x) if layout == "channels_last" else x
    w, b, gy = torch.randn(8, generator=gen).to(dtype), torch.randn(8, generator=gen).to(dtype), torch.randn_like(x)
    code, alpha = ACTS[act], 0.2 if act == "lrelu" else 0.0
    ins = [t.clone().requires_grad_() for t in (x, w, b)]
    y = fastgan.ops.group_norm(ins[0], 4, ins[1], ins[2], act=act, alpha=alpha or None, impl="cpp")
    assert "GroupNormWbFn" in y.grad_fn.name()
    got = (y, *torch.autograd.grad(y, ins, gy))
    ins2 = [t.clone().requires_grad_() for t in (x, w, b)]
    a, s = fold_affine(ins2[0], ins2[1], ins2[2], None, None)
    y2 = kernel_ops("cpp").fwd(ins2[0], a, s, None, None, 4, EPS, code, alpha)[0]
    want = (y2, *torch.autograd.grad(y2, ins2, gy))
    for g_, w_ in zip(got, want):
        assert g_.dtype == w_.dtype and g_.shape == w_.shape and g_.stride() == w_.stride()
        assert torch.equal(g_, w_)


@pytest.mark.parametrize("which", ["both", "weight", "bias", "neither"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_and_gradgradcheck_float64(which, layout):
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64) + 0.3
    x = (_cl(x) if layout == "channels_last" else x).requires_grad_()
    w = torch.randn(4, dtype=torch.float64, requires_grad=True) if which in ("both", "weight") else None
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if which in ("both", "bias") else None
    params = [t for t in (w, b) if t is not None]

    def fn(x, *p):
        it = iter(p)
        ww = next(it) if w is not None else None
        bb = next(it) if b is not None else None
        return fastgan.ops.group_norm(x, 2, ww, bb, act="silu", impl="cpp")

    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


def test_penalty_gradient_reaches_weight_and_bias():
    """A WGAN-GP-style second order: d/dw of ||d out / dx||^2 through the create_graph backward."""
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w, b = (torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def penalty_grads(fn):
        (gx,) = torch.autograd.grad((fn(x, w, b) ** 3).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), (x, w, b))

    got = penalty_grads(lambda x, w, b: fastgan.ops.group_norm(x, 2, w, b, act="silu", impl="cpp"))
    want = penalty_grads(lambda x, w, b: group_norm_reference(x, 2, w, b, act="silu"))
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_, w_, rtol=1e-9, atol=1e-9)


def test_opcheck():
    op = torch.ops.fastgan.group_norm_wb.default
    for layout in ("contiguous", "channels_last"):
        x = torch.randn(2, 4, 3, 3)
        x = _cl(x) if layout == "channels_last" else x
        for w, b in ((torch.randn(4), torch.randn(4)), (None, torch.randn(4)), (torch.randn(4), None), (None, None)):
            for grad in (False, True):
                args = [t.clone().requires_grad_(grad) if t is not None else None for t in (x, w, b)]
                torch.library.opcheck(op, (*args, 2, EPS, 5, 0.0))


def test_compile_fullgraph():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    w, b = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)

    def f(x, w, b):
        return fastgan.ops.group_norm(x, 2, w, b, act="silu", impl="cpp")

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w, b)
    torch.testing.assert_close(out, f(x, w, b))
    g = torch.autograd.grad(out.sum(), (x, w, b))
    torch.testing.assert_close(g, torch.autograd.grad(f(x, w, b).sum(), (x, w, b)))


def test_op_checks_its_arguments():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match=r"group_norm_wb: weight must have shape \(4,\)"):
        torch.ops.fastgan.group_norm_wb(x, torch.randn(3), None, 2, EPS, 0, 0.0)
    with pytest.raises(RuntimeError, match="group_norm_wb: bias must be floating"):
        torch.ops.fastgan.group_norm_wb(x, None, torch.ones(4, dtype=torch.int64), 2, EPS, 0, 0.0)
    with pytest.raises(RuntimeError, match="groups"):
        torch.ops.fastgan.group_norm_wb(x, None, None, 3, EPS, 0, 0.0)
