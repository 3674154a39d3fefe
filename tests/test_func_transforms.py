"""fastgan's ops and modules under torch.func transforms (grad, grad of grad, vmap of grad: per-sample gradients).

The kernels' autograd (C++ torch::autograd::Function for the compiled ops, the formulas torch.library attaches to
the Triton ops) does not support functorch's transforms: every op raised "cannot use C++ torch::autograd::Function
with functorch transforms" (or autograd.Function's setup_context error for Triton). Inside a transform the automatic
choice is now the reference, so these must equal plain autograd through impl="ref".
"""
import torch

from fastgan import ops
from fastgan.diffusion import NoiseSchedule, ddim_step
from fastgan.models import DCGANCritic

D = torch.float64


def _cases():
    g = torch.Generator().manual_seed(0)
    w, b = (torch.randn(4, generator=g, dtype=D) for _ in range(2))
    s = torch.randn(2, 4, generator=g, dtype=D)
    gamma = torch.randn(2, 4, 3, 5, generator=g, dtype=D)
    m = torch.randn(2, 4, 3, 5, generator=g, dtype=D)
    sched = NoiseSchedule.linear(100)
    return {
        "instance_norm": lambda x, impl=None: ops.instance_norm(x, w, b, impl=impl),
        "adain": lambda x, impl=None: ops.adain(x, s, s, impl=impl),
        "spade": lambda x, impl=None: ops.spatial_adaptive_norm(x, gamma, gamma, impl=impl),
        "group_norm": lambda x, impl=None: ops.group_norm(x, 2, w, b, act="silu", impl=impl),
        "bias_act": lambda x, impl=None: ops.bias_act(x, b, "lrelu", impl=impl),
        "grad_penalty": lambda x, impl=None: ops.grad_penalty(x, impl=impl),
        "ddim_step": lambda x, impl=None: ddim_step(x, m, 50, 30, sched, impl=impl),
    }


def test_grad_and_grad_of_grad_of_every_op():
    x = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1), dtype=D)
    for name, op in _cases().items():
        out = op(x, "ref")
        weights = torch.linspace(-1, 1, out.numel(), dtype=D).view_as(out)  # a loss that mixes every output

        def loss(t, impl=None):
            return (op(t, impl) * weights).sum()

        xr = x.clone().requires_grad_()
        (want,) = torch.autograd.grad(loss(xr, "ref"), xr, create_graph=True)
        # A step is linear in x: its gradient is constant, so the second derivative is zero.
        want2 = torch.autograd.grad(want.square().sum(), xr)[0] if want.requires_grad else torch.zeros_like(x)
        torch.testing.assert_close(torch.func.grad(loss)(x), want.detach(), msg=name)
        got2 = torch.func.grad(lambda t: torch.func.grad(loss)(t).square().sum())(x)
        torch.testing.assert_close(got2, want2, msg=name)


def test_per_sample_r1_gradients_of_a_critic_with_vmap():
    # The per-sample R1 norm ||d D(x_i) / d x_i||^2 through fastgan's InstanceNorm2d and LeakyReLU (bias_act).
    torch.manual_seed(0)
    critic = DCGANCritic(img_channels=3, base=4, image_size=8).double()
    params = dict(critic.named_parameters())
    x = torch.randn(3, 3, 8, 8, dtype=D)

    def one(xi):
        return torch.func.functional_call(critic, params, (xi.unsqueeze(0),)).sum()

    got = torch.vmap(torch.func.grad(one))(x)
    want = []
    for xi in x:
        xi = xi.clone().requires_grad_()
        want.append(torch.autograd.grad(one(xi), xi)[0])
    torch.testing.assert_close(got, torch.stack(want))
