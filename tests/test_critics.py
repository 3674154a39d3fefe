"""fastgan.models.critics: shapes, layouts, StarGAN v2 domain selection, float64 double backward through them."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan import _backend
from fastgan.losses import gradient_penalty
from fastgan.models import DCGANCritic, ResBlk, StarGANv2Discriminator
from fastgan.ops import norm_kernels

F64 = torch.float64


# --- DCGANCritic -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["instance", "none", "layer"])
@pytest.mark.parametrize("image_size,base,channels", [(16, 4, 3), (32, 2, 1)])
def test_dcgan_critic_shapes_and_layout(norm, image_size, base, channels):
    D = DCGANCritic(img_channels=channels, base=base, image_size=image_size, norm=norm)
    x = torch.randn(3, channels, image_size, image_size)
    out = D(x)
    assert out.shape == (3,) and out.dtype == torch.float32
    n_blocks = int(math.log2(image_size)) - 2
    assert len(D.main) == n_blocks
    convs = [b.conv for b in D.main]
    assert [c.out_channels for c in convs] == [base * 2 ** i for i in range(n_blocks)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert D.head.out_channels == 1 and D.head.kernel_size == (4, 4)
    assert isinstance(D.main[0].norm, nn.Identity) and D.main[0].conv.bias is not None  # no norm on the first block
    norms = [b.norm for b in D.main[1:]]
    if norm == "instance":
        assert all(type(m) is fastgan.nn.InstanceNorm2d and m.affine for m in norms)
        assert all(b.conv.bias is None for b in D.main[1:])  # instance norm would cancel it
    elif norm == "layer":
        assert all(type(m) is fastgan.nn.GroupNorm and m.num_groups == 1 and m.affine for m in norms)
    else:
        assert all(isinstance(m, nn.Identity) for m in norms)
    assert all(b.act.negative_slope == 0.2 for b in D.main)


def test_dcgan_critic_default_is_the_64px_dcgan():
    D = DCGANCritic()
    assert [b.conv.out_channels for b in D.main] == [64, 128, 256, 512]
    assert D.head.in_channels == 512


def test_dcgan_critic_forward_matches_functional_formula():
    D = DCGANCritic(img_channels=3, base=4, image_size=16).double()
    x = torch.randn(2, 3, 16, 16, dtype=F64)
    b0, b1 = D.main
    h = F.leaky_relu(F.conv2d(x, b0.conv.weight, b0.conv.bias, 2, 1), 0.2)
    h = F.conv2d(h, b1.conv.weight, None, 2, 1)
    h = F.leaky_relu(F.instance_norm(h, weight=b1.norm.weight, bias=b1.norm.bias), 0.2)
    want = F.conv2d(h, D.head.weight, D.head.bias).reshape(2)
    assert (D(x) - want).abs().max().item() < 1e-12


def test_dcgan_samples_are_independent():
    D = DCGANCritic(img_channels=3, base=4, image_size=16, norm="layer").double()
    x = torch.randn(4, 3, 16, 16, dtype=F64)
    per_sample = torch.cat([D(x[i:i + 1]) for i in range(4)])
    assert (D(x) - per_sample).abs().max().item() < 1e-12


def test_dcgan_critic_errors():
    with pytest.raises(ValueError, match="norm must be one of"):
        DCGANCritic(norm="batch")
    with pytest.raises(ValueError, match="power of two"):
        DCGANCritic(image_size=48)
    with pytest.raises(ValueError, match="power of two"):
        DCGANCritic(image_size=4)
    D = DCGANCritic(img_channels=3, base=2, image_size=16)
    with pytest.raises(ValueError, match=r"expected input \(N, 3, 16, 16\)"):
        D(torch.randn(2, 3, 32, 32))


# --- StarGAN v2 discriminator -------------------------------------------------------------------------------------

def _small_stargan(num_domains=3, img_size=16):
    return StarGANv2Discriminator(img_size=img_size, num_domains=num_domains, max_conv_dim=16, dim_in=4)


def test_stargan_discriminator_layout():
    D = _small_stargan(img_size=32)
    blocks = [m for m in D.main if isinstance(m, ResBlk)]
    assert len(blocks) == 3  # 32 -> 16 -> 8 -> 4
    assert [b.conv2.out_channels for b in blocks] == [8, 16, 16]  # doubling, capped at max_conv_dim
    assert all(b.downsample and not b.normalize for b in blocks)
    keys = list(D.state_dict())
    assert keys[:2] == ["main.0.weight", "main.0.bias"]
    assert "main.1.conv1x1.weight" in keys and "main.1.conv1x1.bias" not in keys
    assert "main.3.conv1x1.weight" not in keys  # 16 -> 16: identity shortcut
    assert keys[-4:] == ["main.5.weight", "main.5.bias", "main.7.weight", "main.7.bias"]
    assert D.main[5].kernel_size == (4, 4) and D.main[7].out_channels == 3
    # Default widths follow StarGAN v2: dim_in = 2**14 // img_size, doubling up to max_conv_dim.
    big = StarGANv2Discriminator(img_size=64, num_domains=2)
    assert big.main[0].out_channels == 256
    assert [m.conv2.out_channels for m in big.main if isinstance(m, ResBlk)] == [512, 512, 512, 512]


def test_stargan_discriminator_domain_selection():
    D = _small_stargan(num_domains=3).double()
    x = torch.randn(5, 3, 16, 16, dtype=F64)
    y = torch.tensor([2, 0, 1, 2, 0])
    all_out = D(x)
    assert all_out.shape == (5, 3)
    out = D(x, y)
    assert out.shape == (5,)
    assert torch.equal(out, all_out[torch.arange(5), y])
    for i in range(5):  # each sample alone, with its own domain
        assert (D(x[i:i + 1], y[i:i + 1]) - out[i]).abs().item() < 1e-12
    with pytest.raises(ValueError, match="shape"):
        D(x, y[:3])
    with pytest.raises(ValueError, match="integer"):
        D(x, y.double())
    with pytest.raises(ValueError, match="expected input"):
        D(torch.randn(5, 3, 32, 32, dtype=F64), y)


def test_activation_modules_equal_torch_for_every_shape():
    # critics.LeakyReLU and stargan_v2_blocks.ReLU are F.leaky_relu / F.relu on bias_act, whose checks refused a 1-D
    # input ("dim must be in [-1, 1) for 1-D x, got 1": a dim the caller never passed; there is no bias), a 0-D one
    # and an empty batch.
    from fastgan.models.critics import LeakyReLU
    from fastgan.models.stargan_v2_blocks import ReLU

    for ours, theirs in ((LeakyReLU(0.2), lambda t: F.leaky_relu(t, 0.2)), (ReLU(), F.relu)):
        for x in (torch.randn(5), torch.tensor(-1.5), torch.randn(0, 3), torch.randn(0, 3, 4, 4), torch.randn(2, 3, 4)):
            x = x.requires_grad_()
            y = ours(x)
            assert torch.equal(y, theirs(x))
            if x.numel():
                (g,) = torch.autograd.grad(y.sum(), x)
                assert torch.equal(g, torch.autograd.grad(theirs(x).sum(), x)[0])


def test_resblk_formula():
    blk = ResBlk(4, 6, normalize=True, downsample=True).double()
    assert isinstance(blk.norm1, fastgan.nn.InstanceNorm2d) and blk.norm1.affine
    x = torch.randn(2, 4, 8, 8, dtype=F64)
    sc = F.avg_pool2d(blk.conv1x1(x), 2)
    h = blk.conv1(F.leaky_relu(F.instance_norm(x, weight=blk.norm1.weight, bias=blk.norm1.bias), 0.2))
    h = F.avg_pool2d(h, 2)
    h = blk.conv2(F.leaky_relu(F.instance_norm(h, weight=blk.norm2.weight, bias=blk.norm2.bias), 0.2))
    assert (blk(x) - (sc + h) / math.sqrt(2)).abs().max().item() < 1e-12
    plain = ResBlk(4, 4)
    assert not hasattr(plain, "conv1x1") and not hasattr(plain, "norm1")
    assert plain(torch.randn(1, 4, 8, 8)).shape == (1, 4, 8, 8)


def test_stargan_discriminator_errors():
    with pytest.raises(ValueError, match="power of two"):
        StarGANv2Discriminator(img_size=100)
    with pytest.raises(ValueError, match="num_domains"):
        StarGANv2Discriminator(img_size=16, num_domains=0, dim_in=4)


# --- double backward -------------------------------------------------------------------------------------------------

def _r1(D, x, *args):
    return gradient_penalty(D, x, kind="r1", weight=1.0, critic_args=args)


def _directional_fd_check(D, penalty_fn, h=1e-6):
    """d/dt penalty(params + t v) at t=0 by central differences against <grad penalty, v> from double backward."""
    params = list(D.parameters())
    grads = torch.autograd.grad(penalty_fn(), params, allow_unused=True)
    v = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, v) if g is not None).item()
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(d, alpha=h)
    plus = penalty_fn().item()
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(d, alpha=-2 * h)
    minus = penalty_fn().item()
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(d, alpha=h)
    numeric = (plus - minus) / (2 * h)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)
    return grads


@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
def test_double_backward_through_dcgan_critic_float64(kind):
    D = DCGANCritic(img_channels=3, base=4, image_size=32).double()
    real, fake = torch.randn(3, 3, 32, 32, dtype=F64), torch.randn(3, 3, 32, 32, dtype=F64)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()

    def penalty():
        g.set_state(state)  # the same interpolates at every evaluation
        return gradient_penalty(D, real, fake, kind=kind, generator=g)

    grads = _directional_fd_check(D, penalty)
    named = dict(zip([n for n, _ in D.named_parameters()], grads))
    for name, grad in named.items():
        if name == "head.bias":  # shifts the output, not its input gradient
            assert grad is None
        elif name == f"main.{len(D.main) - 1}.norm.bias":  # reaches the input gradient only through lrelu' (flat)
            assert grad is not None and grad.abs().max().item() == 0
        else:
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_double_backward_through_stargan_discriminator_float64():
    D = _small_stargan().double()
    x = torch.randn(3, 3, 16, 16, dtype=F64)
    y = torch.tensor([1, 2, 0])
    _directional_fd_check(D, lambda: _r1(D, x, y))


@pytest.mark.skipif(_backend.extension_error() is not None, reason="fastgan._C not loaded")
def test_dcgan_penalty_runs_fused_instance_norm_double_backward():
    D = DCGANCritic(img_channels=3, base=4, image_size=16)
    x = torch.randn(2, 3, 16, 16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _r1(D, x).backward()
    names = {e.name for e in prof.events()}
    assert {"fastgan::instance_norm_fwd", "fastgan::instance_norm_bwd", "fastgan::instance_norm_dbwd"} <= names


@pytest.mark.skipif(_backend.extension_error() is not None, reason="fastgan._C not loaded")
def test_layer_norm_critic_penalty_runs_fused_group_norm_double_backward():
    D = DCGANCritic(img_channels=3, base=4, image_size=16, norm="layer")
    real, fake = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        gradient_penalty(D, real, fake, kind="wgan-gp").backward()
    names = {e.name for e in prof.events()}
    assert {"fastgan::group_norm_wb", "fastgan::group_norm_bwd", "fastgan::group_norm_dbwd"} <= names


def test_layer_norm_critic_penalty_matches_torch_group_norm_float64():
    """The same critic with torch.nn.GroupNorm in place of fastgan's: same penalty and parameter gradients."""
    D = DCGANCritic(img_channels=3, base=4, image_size=16, norm="layer").double()
    T = DCGANCritic(img_channels=3, base=4, image_size=16, norm="layer").double()
    for block in T.main[1:]:
        block.norm = nn.GroupNorm(1, block.norm.num_channels).double()
    T.load_state_dict(D.state_dict())
    with torch.no_grad():
        for p in D.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial norm weights and biases
        T.load_state_dict(D.state_dict())
    real, fake = torch.randn(3, 3, 16, 16, dtype=F64), torch.randn(3, 3, 16, 16, dtype=F64)
    out = []
    for critic in (D, T):
        g = torch.Generator().manual_seed(4)
        p = gradient_penalty(critic, real, fake, kind="wgan-gp", generator=g)
        out.append((p, torch.autograd.grad(p, list(critic.parameters()), allow_unused=True, materialize_grads=True)))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.skipif(_backend.extension_error() is not None, reason="fastgan._C not loaded")
@pytest.mark.parametrize("image_size", [16, 32])
def test_wgan_gp_critic_step_kernel_counts(image_size):
    """Issue 4's profiler count of kernels per critic step: a WGAN-GP step (critic on fake, real and the
    interpolates, penalty with create_graph, backward) runs per norm layer 3 forwards, 4 backwards (3 first order,
    1 inside the double backward) and 1 fused double backward, per lrelu layer 3 forwards and 5 backwards, one fused
    penalty forward and backward, and none of the reference formulas' aten ops (the fallback)."""
    import collections

    D = DCGANCritic(img_channels=3, base=4, image_size=image_size)
    n_norm = sum(isinstance(m, nn.InstanceNorm2d) for m in D.modules())
    n_act = sum(type(m).__name__ == "LeakyReLU" for m in D.modules())
    assert n_norm >= 1 and n_act >= 2
    real, fake = torch.randn(2, 3, image_size, image_size), torch.randn(2, 3, image_size, image_size)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss = D(fake).mean() - D(real).mean() + 10 * gradient_penalty(D, real, fake, kind="wgan-gp")
        loss.backward()
    count = collections.Counter(e.name for e in prof.events())
    fused = {k: v for k, v in count.items() if k.startswith("fastgan::")}
    want = {
        "fastgan::instance_norm_fwd": 3 * n_norm, "fastgan::instance_norm_bwd": 4 * n_norm,
        "fastgan::instance_norm_dbwd": n_norm, "fastgan::bias_act_fwd": 3 * n_act,
        "fastgan::bias_act_bwd": 5 * n_act, "fastgan::grad_penalty_fwd": 1, "fastgan::grad_penalty_bwd": 1,
    }
    if norm_kernels.compiled_wb() is not None:  # InstanceNorm2d's weight/bias form: one wrapper op per forward
        want["fastgan::instance_norm_wb"] = 3 * n_norm
    assert fused == want, fused
    fallback = [k for k in count if k.startswith("aten::") and any(
        s in k for s in ("leaky_relu", "var", "std", "instance_norm", "batch_norm", "linalg_vector_norm", "rsqrt"))]
    assert not fallback, f"reference-formula ops ran: {fallback}"
