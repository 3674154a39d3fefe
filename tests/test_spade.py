"""fastgan.ops.spatial_adaptive_norm and fastgan.nn.SPADE against float64 references and eager PyTorch."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.ops.spade import spatial_adaptive_norm_reference as spade_ref

from conftest import to_layout
from test_instance_norm import backward_three_ways, eager_instance_norm, impl_params, penalty_grads
from tolerance import assert_rule, grad_floor_ulps, max_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1, 1, 1), (2, 3, 7, 13), (1, 4, 5), (2, 3, 3, 5, 7), (3, 1, 8, 8)]


def eager_spade(x, gamma, beta):
    """The usual PyTorch formulation in x's dtype."""
    return eager_instance_norm(x) * (1 + gamma) + beta


def sample_inputs(device, dtype):
    for shape in SHAPES:
        for layout in ("contiguous", "channels_last", "strided"):
            x = to_layout(torch.randn(shape, device=device, dtype=dtype) * 2 + 0.5, layout)
            gamma = (0.3 * torch.randn(shape, device=device)).to(dtype)
            beta = torch.randn(shape, device=device, dtype=dtype)
            yield f"{shape}-{layout}", x, gamma, beta


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_forward_matches_reference(device, impl, dtype):
    for name, x, gamma, beta in sample_inputs(device, dtype):
        y = fastgan.ops.spatial_adaptive_norm(x, gamma, beta, impl=impl)
        assert y.dtype == x.dtype and y.shape == x.shape, name
        ref = spade_ref(x.double(), gamma.double(), beta.double())
        assert_rule(y, eager_spade(x, gamma, beta), ref, f"{impl} {dtype} {name}")


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(device, impl, dtype):
    for name, x, gamma, beta in sample_inputs(device, dtype):
        gy = torch.randn_like(x)
        ours, eager, ref = backward_three_ways(lambda *a: fastgan.ops.spatial_adaptive_norm(*a, impl=impl),
                                               eager_spade, spade_ref, (x, gamma, beta), gy)
        for i, what in enumerate(("grad x", "grad gamma", "grad beta")):
            assert_rule(ours[i], eager[i], ref[i], f"{impl} {dtype} {name} {what}", grad_floor_ulps(device, impl))


@pytest.mark.parametrize("device,impl", impl_params())
def test_double_backward_matches_reference(device, impl):
    for name, x, gamma, beta in sample_inputs(device, torch.float32):
        gy = torch.randn_like(x)
        ours = penalty_grads(lambda *a: fastgan.ops.spatial_adaptive_norm(*a, impl=impl), gy, x, gamma, beta)
        eager = penalty_grads(eager_spade, gy, x, gamma, beta)
        ref = penalty_grads(spade_ref, gy.double(), x.double(), gamma.double(), beta.double())
        for i, what in enumerate(("x", "gamma")):
            assert_rule(ours[i], eager[i], ref[i], f"{impl} {name} penalty grad {what}", grad_floor_ulps(device, impl))


@pytest.mark.parametrize("device,impl", impl_params())
def test_gradcheck_and_gradgradcheck_float64(device, impl):
    x = to_layout(torch.randn(2, 3, 3, 4, device=device, dtype=torch.float64), "channels_last").requires_grad_()
    g = (0.3 * torch.randn(2, 3, 3, 4, device=device, dtype=torch.float64)).requires_grad_()
    b = torch.randn(1, 3, 1, 4, device=device, dtype=torch.float64, requires_grad=True)  # broadcast beta

    def f(*a):
        return fastgan.ops.spatial_adaptive_norm(*a, impl=impl)

    fast = impl == "triton"  # the interpreter is slow: random projections instead of full Jacobians
    assert torch.autograd.gradcheck(f, (x, g, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, (x, g, b), fast_mode=fast)


@pytest.mark.parametrize("device,impl", impl_params())
def test_broadcast_maps_and_none(device, impl):
    x = torch.randn(2, 3, 5, 6, device=device)
    g = 0.3 * torch.randn(2, 3, 1, 1, device=device)
    b = torch.randn(1, 3, 5, 6, device=device)
    want = spade_ref(x.double(), g.double(), b.double())
    assert max_err(fastgan.ops.spatial_adaptive_norm(x, g, b, impl=impl), want) < 1e-5
    plain = fastgan.ops.spatial_adaptive_norm(x, None, None, impl=impl)
    assert max_err(plain, spade_ref(x.double(), None, None)) < 1e-5


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if "triton" not in p.id])
def test_compiles_with_fullgraph(device, impl):
    x = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    g = (0.3 * torch.randn(2, 3, 5, 6, device=device)).requires_grad_()
    b = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)

    def f(x, g, b):
        return fastgan.ops.spatial_adaptive_norm(x, g, b, impl=impl).square().sum()

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, g, b)
    torch.testing.assert_close(out, f(x, g, b))


def test_bad_input_gets_a_clear_error():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"gamma must be broadcastable to x's shape \(2, 3, 4, 4\)"):
        fastgan.ops.spatial_adaptive_norm(x, torch.randn(2, 3, 5, 4))
    with pytest.raises(ValueError, match="beta must be broadcastable"):
        fastgan.ops.spatial_adaptive_norm(x, None, torch.randn(1, 2, 3, 4, 4))
    with pytest.raises(TypeError, match="gamma must be a floating tensor"):
        fastgan.ops.spatial_adaptive_norm(x, torch.ones(2, 3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="x is empty"):
        fastgan.ops.spatial_adaptive_norm(torch.randn(2, 3, 0, 4), None)
    m = fastgan.nn.SPADE(3, label_nc=5, hidden=8)
    with pytest.raises(ValueError, match=r"segmap must be \(N, 5, H', W'\)"):
        m(x, torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"x must be \(N, 3, H, W\)"):
        m(torch.randn(2, 4, 4, 4), torch.randn(2, 5, 8, 8))


class RefSPADE(nn.Module):
    """The usual PyTorch SPADE block with a parameter-free instance norm (the swap target)."""

    def __init__(self, norm_nc, label_nc, hidden=128):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x, segmap):
        segmap = F.interpolate(segmap, size=x.size()[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return self.param_free_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


def test_module_loads_the_usual_spade_state_dict_and_matches_it():
    ref = RefSPADE(4, 6, hidden=16).double()
    ours = fastgan.nn.SPADE(4, 6, hidden=16).double()
    ours.load_state_dict(ref.state_dict())  # strict: the same keys
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    seg = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    outs = []
    for m in (ref, ours):
        xi, si = x.clone().requires_grad_(), seg.clone().requires_grad_()
        y = m(xi, si)
        gy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(3))
        outs.append((y, torch.autograd.grad(y, [xi, si] + list(m.parameters()), gy)))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_path_choice():
    """Contiguous x with x-shaped maps takes the fused group-norm kernel; channels_last x and broadcast spatial
    maps take instance norm + addcmul (no copies to contiguous)."""
    if "cpp" not in fastgan._backend.live_impls("group_norm_fwd", "cpu"):
        pytest.skip("compiled extension not loaded")
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    g, b = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 5, 6)
    fused = fastgan.ops.spatial_adaptive_norm(x, g, b, impl="cpp")
    assert "GroupNormFwdFn" in fused.grad_fn.name()
    cl = fastgan.ops.spatial_adaptive_norm(x.contiguous(memory_format=torch.channels_last), g, b, impl="cpp")
    bcast = fastgan.ops.spatial_adaptive_norm(x, g, b[:1], impl="cpp")
    for y in (cl, bcast):
        assert "GroupNormFwdFn" not in y.grad_fn.name()
    assert cl.is_contiguous(memory_format=torch.channels_last)
