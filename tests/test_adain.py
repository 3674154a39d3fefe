"""fastgan.ops.adain / adain_transfer and fastgan.nn.AdaIN against float64 references and eager PyTorch."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.ops.adain import adain_reference

from conftest import to_layout
from test_instance_norm import backward_three_ways, eager_instance_norm, impl_params, penalty_grads
from tolerance import assert_rule, grad_floor_ulps, max_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1, 1, 1), (2, 3, 7, 13), (1, 4, 5), (2, 3, 3, 5, 7), (3, 1, 8, 8), (2, 5, 1)]


def eager_adain(x, scale, shift):
    """The usual PyTorch formulation in x's dtype: F.instance_norm, then the per-sample affine."""
    view = x.shape[:2] + (1,) * (x.dim() - 2)
    return eager_instance_norm(x) * scale.reshape(view) + shift.reshape(view)


def sample_inputs(device, dtype):
    """Fresh random (x, scale, shift) per shape and layout; never zeros."""
    for shape in SHAPES:
        for layout in ("contiguous", "channels_last", "strided"):
            x = to_layout(torch.randn(shape, device=device, dtype=dtype) * 2 + 0.5, layout)
            scale = (1 + 0.5 * torch.randn(shape[:2], device=device)).to(dtype)
            shift = torch.randn(shape[:2], device=device, dtype=dtype)
            yield f"{shape}-{layout}", x, scale, shift


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_forward_matches_reference(device, impl, dtype):
    for name, x, scale, shift in sample_inputs(device, dtype):
        y = fastgan.ops.adain(x, scale, shift, impl=impl)
        assert y.dtype == x.dtype and y.shape == x.shape, name
        ref = adain_reference(x.double(), scale.double(), shift.double())
        assert_rule(y, eager_adain(x, scale, shift), ref, f"{impl} {dtype} {name}")


@pytest.mark.parametrize("device,impl", impl_params())
def test_broadcast_forms_of_scale_and_shift(device, impl):
    x = torch.randn(3, 4, 5, 6, device=device)
    s = 1 + torch.randn(3, 4, device=device)
    b = torch.randn(3, 4, device=device)
    want = adain_reference(x.double(), s.double(), b.double())
    assert max_err(fastgan.ops.adain(x, s.view(3, 4, 1, 1), b.view(3, 4, 1, 1), impl=impl), want) < 1e-5
    c = torch.randn(4, device=device)
    want_c = adain_reference(x.double(), c.double().expand(3, 4), None)
    assert max_err(fastgan.ops.adain(x, c, None, impl=impl), want_c) < 1e-5
    want_none = adain_reference(x.double(), None, None)
    assert max_err(fastgan.ops.adain(x, None, None, impl=impl), want_none) < 1e-5


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(device, impl, dtype):
    for name, x, scale, shift in sample_inputs(device, dtype):
        gy = torch.randn_like(x)
        ours, eager, ref = backward_three_ways(lambda *a: fastgan.ops.adain(*a, impl=impl), eager_adain,
                                               adain_reference, (x, scale, shift), gy)
        for i, what in enumerate(("grad x", "grad scale", "grad shift")):
            floor = grad_floor_ulps(device, impl)  # see tolerance.py
            assert_rule(ours[i], eager[i], ref[i], f"{impl} {dtype} {name} {what}", floor)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_double_backward_matches_reference(device, impl, dtype):
    for name, x, scale, shift in sample_inputs(device, dtype):
        gy = torch.randn_like(x)
        ours = penalty_grads(lambda *a: fastgan.ops.adain(*a, impl=impl), gy, x, scale, shift)
        eager = penalty_grads(eager_adain, gy, x, scale, shift)
        ref = penalty_grads(adain_reference, gy.double(), x.double(), scale.double(), shift.double())
        for i, what in enumerate(("x", "scale")):
            floor = grad_floor_ulps(device, impl)
            assert_rule(ours[i], eager[i], ref[i], f"{impl} {dtype} {name} penalty grad {what}", floor)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_and_gradgradcheck_float64(device, impl, layout):
    x = to_layout(torch.randn(2, 3, 3, 4, device=device, dtype=torch.float64), layout).requires_grad_()
    s = (1 + torch.randn(2, 3, device=device, dtype=torch.float64)).requires_grad_()
    b = torch.randn(2, 3, device=device, dtype=torch.float64, requires_grad=True)

    def f(*a):
        return fastgan.ops.adain(*a, impl=impl)

    fast = impl == "triton"  # the interpreter is slow: random projections instead of full Jacobians
    assert torch.autograd.gradcheck(f, (x, s, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, (x, s, b), fast_mode=fast)


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "triton" not in p.id])
def test_compiles_with_fullgraph(device, impl):
    x = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    s = (1 + torch.randn(2, 3, device=device)).requires_grad_()
    b = torch.randn(2, 3, device=device, requires_grad=True)

    def f(x, s, b):
        return fastgan.ops.adain(x, s, b, impl=impl).sum()

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, s, b)
    torch.testing.assert_close(out, f(x, s, b))
    got = torch.autograd.grad(out, (x, s, b))
    want = torch.autograd.grad(f(x, s, b), (x, s, b))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_bad_input_gets_a_clear_error():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"scale must have shape \(N, C\) = \(2, 3\)"):
        fastgan.ops.adain(x, torch.ones(2, 4), None)
    with pytest.raises(ValueError, match="shift must have shape"):
        fastgan.ops.adain(x, None, torch.ones(3, 3))
    with pytest.raises(ValueError, match="shift must have shape"):
        fastgan.ops.adain(x, None, torch.ones(2, 3, 4, 4))  # a full map is SPADE, not AdaIN
    with pytest.raises(TypeError, match="scale must be a floating tensor"):
        fastgan.ops.adain(x, torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x must be 3-D, 4-D or 5-D"):
        fastgan.ops.adain(torch.randn(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="x is empty"):
        fastgan.ops.adain(torch.randn(0, 3, 4, 4), None)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        fastgan.ops.adain(x, None, None, eps=-1.0)
    with pytest.raises(ValueError, match="style must be"):
        fastgan.ops.adain_transfer(x, torch.randn(2, 4, 4, 4))
    m = fastgan.nn.AdaIN(8, 3)
    with pytest.raises(ValueError, match=r"s must be \(N, style_dim\) = \(N, 8\)"):
        m(x, torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"x must be \(N, 3, \.\.\.\)"):
        m(torch.randn(2, 5, 4, 4), torch.randn(2, 8))


def test_nan_in_a_plane_stays_in_that_plane():
    x = torch.randn(2, 3, 5, 5)
    x[0, 1, 2, 2] = float("nan")
    y = fastgan.ops.adain(x, 1 + torch.randn(2, 3), torch.randn(2, 3))
    assert y[0, 1].isnan().all()
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[0, 1] = False
    assert torch.isfinite(y[keep]).all()


@pytest.mark.parametrize("device,impl", impl_params())
def test_adain_transfer_matches_the_formula(device, impl):
    content = torch.randn(2, 3, 6, 7, device=device, dtype=torch.float64) * 3 + 1
    style = torch.randn(1, 3, 4, 5, device=device, dtype=torch.float64) * 0.5 - 2
    sv, sm = torch.var_mean(style, dim=(2, 3), keepdim=True, correction=0)
    cv, cm = torch.var_mean(content, dim=(2, 3), keepdim=True, correction=0)
    want = (content - cm) / torch.sqrt(cv + 1e-5) * torch.sqrt(sv + 1e-5) + sm
    got = fastgan.ops.adain_transfer(content.float(), style.float(), impl=impl)
    assert max_err(got, want) < 1e-5 * want.abs().max().item()
    # The style gets gradients too (style losses backpropagate into it).
    style32 = style.float().requires_grad_()
    fastgan.ops.adain_transfer(content.float(), style32, impl=impl).square().sum().backward()
    assert style32.grad is not None and torch.isfinite(style32.grad).all() and style32.grad.abs().sum() > 0


# ------------------------------------------------------------------ drop-in swap into a StarGAN v2-like block
class RefAdaIN(nn.Module):
    """StarGAN v2's AdaIN as its authors write it (the swap target)."""

    def __init__(self, style_dim, num_features):
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x, s):
        h = self.fc(s).view(s.size(0), -1, 1, 1)
        gamma, beta = torch.chunk(h, chunks=2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdainResBlock(nn.Module):
    """A small StarGAN-v2-style decoder block: AdaIN -> LReLU -> conv, twice, with a learned shortcut."""

    def __init__(self, dim_in, dim_out, style_dim, adain_cls=RefAdaIN):
        super().__init__()
        self.norm1, self.norm2 = adain_cls(style_dim, dim_in), adain_cls(style_dim, dim_out)
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def forward(self, x, s):
        h = self.conv1(F.leaky_relu(self.norm1(x, s), 0.2))
        h = self.conv2(F.leaky_relu(self.norm2(h, s), 0.2))
        return (h + self.conv1x1(x)) / 2**0.5


def _swap_adain(module: nn.Module) -> None:
    """The README recipe: replace every RefAdaIN by fastgan.nn.AdaIN with the same weights."""
    for name, child in module.named_children():
        if isinstance(child, RefAdaIN):
            new = fastgan.nn.AdaIN(child.fc.in_features, child.fc.out_features // 2).to(child.fc.weight)
            new.load_state_dict(child.state_dict())  # fc.weight, fc.bias: the same keys
            setattr(module, name, new)
        else:
            _swap_adain(child)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_swapping_into_a_stargan_v2_block_keeps_outputs_and_gradients(layout):
    ref = AdainResBlock(4, 6, style_dim=8).double()
    ours = AdainResBlock(4, 6, style_dim=8).double()
    ours.load_state_dict(ref.state_dict())
    _swap_adain(ours)
    assert isinstance(ours.norm1, fastgan.nn.AdaIN) and set(ours.state_dict()) == set(ref.state_dict())
    x = to_layout(torch.randn(3, 4, 9, 10, dtype=torch.float64), layout)
    s = torch.randn(3, 8, dtype=torch.float64)
    outs = []
    for m in (ref, ours):
        xi, si = x.clone().requires_grad_(), s.clone().requires_grad_()
        y = m(xi, si)
        # Drawn in logical order: the two outputs may differ in memory format, and normal_ fills memory order.
        gy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(5))
        grads = torch.autograd.grad(y, [xi, si] + list(m.parameters()), gy)
        outs.append((y, grads))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-10, atol=1e-10)
    for g_ours, g_ref in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-9)
