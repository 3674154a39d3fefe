"""fastgan.losses: gradient penalties against the textbook autograd formulation, lazy regularisation, GAN losses.

The textbook versions below are written out the way training scripts write them (interpolate, run the critic,
``autograd.grad(..., create_graph=True)``, reduce); they draw their random numbers from a generator seeded like the
one handed to ``gradient_penalty`` and in the same order, so both see identical points. Everything is float64.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.losses import (
    DEFAULT_WEIGHTS,
    LazyRegularizer,
    clip_weights_,
    gradient_penalty,
    hinge_d_loss,
    hinge_g_loss,
    lazy_adam_params,
    lsgan_d_loss,
    lsgan_g_loss,
    ns_d_loss,
    ns_g_loss,
    penalty_from_grad,
    vanilla_d_loss,
    vanilla_g_loss,
    wgan_d_loss,
    wgan_g_loss,
)
from fastgan.models import DCGANCritic

F64 = torch.float64
KINDS = ["wgan-gp", "dragan", "r1", "r2"]
SEED = 1234


# --- textbook formulations -------------------------------------------------------------------------------------------

def _input_grad(critic, x, *args, **kwargs):
    out = critic(x, *args, **kwargs)
    if isinstance(out, (tuple, list)):
        total = sum(o.sum() for o in out)
    elif isinstance(out, dict):
        total = sum(o.sum() for o in out.values())
    else:
        total = out.sum()
    (grad,) = torch.autograd.grad(outputs=total, inputs=x, create_graph=True)
    return grad.reshape(grad.size(0), -1)


def textbook(kind, critic, real, fake, seed=SEED, weight=None, target=1.0, c=0.5, args=(), kwargs=None):
    kwargs = kwargs or {}
    weight = DEFAULT_WEIGHTS[kind] if weight is None else weight
    g = torch.Generator().manual_seed(seed)
    if kind == "wgan-gp":
        alpha = torch.rand(real.size(0), 1, 1, 1, generator=g, dtype=real.dtype)
        x = (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)
    elif kind == "dragan":
        std = float(real.detach().numpy().std())  # numpy's ndarray.std(), as the DRAGAN reference code (ddof=0)
        x = (real + c * std * torch.rand(real.size(), generator=g, dtype=real.dtype)).requires_grad_(True)
    elif kind == "r1":
        x = real.clone().requires_grad_(True)
    else:
        x = fake.clone().requires_grad_(True)
    grad = _input_grad(critic, x, *args, **kwargs)
    if kind in ("wgan-gp", "dragan"):
        return weight * ((grad.norm(2, dim=1) - target) ** 2).mean()
    return weight * (0.5 * grad.pow(2).sum(dim=1)).mean()


def ours(kind, critic, real, fake, seed=SEED, **kw):
    return gradient_penalty(critic, real, fake, kind=kind, generator=torch.Generator().manual_seed(seed), **kw)


class SmoothCritic(nn.Module):
    """A small plain-PyTorch critic with smooth activations, so every second derivative is non-trivial."""

    def __init__(self, channels=3, num_classes=0, two_heads=False):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 3, 2, 1)
        self.conv2 = nn.Conv2d(6, 8, 3, 2, 1)
        self.fc = nn.Linear(8 * 4 * 4, 1)
        self.embed = nn.Embedding(num_classes, 8) if num_classes else None
        self.aux = nn.Linear(8 * 4 * 4, 3) if two_heads else None

    def forward(self, x, y=None, *, temperature=1.0):
        h = torch.tanh(self.conv1(x))
        h = F.softplus(self.conv2(h))
        if self.embed is not None:
            h = h * self.embed(y)[:, :, None, None]
        h = h.flatten(1)
        out = self.fc(h).squeeze(1) / temperature
        if self.aux is not None:
            return out, torch.tanh(self.aux(h))
        return out


def _batch(n=5, size=16, c=3):
    real = torch.randn(n, c, size, size, dtype=F64)
    fake = torch.randn(n, c, size, size, dtype=F64) * 0.7 + 0.2
    return real, fake


def _param_grads(loss, module):
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


def _assert_close(a, b, tol, what=""):
    err = (a - b).abs().max().item()
    scale = max(1.0, b.abs().max().item())
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.0e} x {scale:.3g}"


def _assert_grads_close(ga, gb, tol, what=""):
    for i, (a, b) in enumerate(zip(ga, gb)):
        if a is None or b is None:
            assert a is None and b is None, f"{what}: parameter {i} has a gradient on one side only"
            continue
        _assert_close(a, b, tol, f"{what} param {i}")


# --- penalties vs textbook -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_penalty_matches_textbook_smooth_critic(kind):
    critic = SmoothCritic().double()
    real, fake = _batch()
    want = textbook(kind, critic, real, fake)
    got = ours(kind, critic, real, fake)
    assert got.dim() == 0 and got.dtype == F64
    _assert_close(got, want, 1e-10, kind)
    _assert_grads_close(_param_grads(got, critic), _param_grads(want, critic), 1e-10, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_penalty_matches_textbook_fastgan_dcgan_critic(kind):
    critic = DCGANCritic(img_channels=3, base=4, image_size=32).double()
    real, fake = _batch(n=4, size=32)
    want = textbook(kind, critic, real, fake, weight=2.5, target=0.8, c=0.3)
    got = ours(kind, critic, real, fake, weight=2.5, target=0.8, dragan_c=0.3)
    _assert_close(got, want, 1e-10, kind)
    _assert_grads_close(_param_grads(got, critic), _param_grads(want, critic), 1e-10, kind)


def _torch_norm_copy(critic):
    """The same critic with every fastgan InstanceNorm2d replaced by torch.nn.InstanceNorm2d, same weights."""
    twin = copy.deepcopy(critic)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, fastgan.nn.InstanceNorm2d):
                new = nn.InstanceNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats).to(F64)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new)
    return twin


@pytest.mark.parametrize("kind", KINDS)
def test_fastgan_instance_norm_critic_matches_torch_instance_norm_critic(kind):
    critic = DCGANCritic(img_channels=3, base=4, image_size=32, norm="instance").double()
    with torch.no_grad():  # non-trivial affine parameters
        for m in critic.modules():
            if isinstance(m, fastgan.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    twin = _torch_norm_copy(critic)
    n_fast = sum(isinstance(m, fastgan.nn.InstanceNorm2d) for m in critic.modules())
    n_torch = sum(type(m) is nn.InstanceNorm2d for m in twin.modules())
    assert n_fast == n_torch == 2
    real, fake = _batch(n=4, size=32)
    got = ours(kind, critic, real, fake)
    want = ours(kind, twin, real, fake)
    _assert_close(got, want, 1e-9, kind)
    ga, gb = _param_grads(got, critic), _param_grads(want, twin)
    # Every weight and the norms' affine parameters reach the penalty (the head's bias cannot: it shifts the
    # output, not its input gradient).
    names = [n for n, p in critic.named_parameters()]
    assert [n for n, g in zip(names, ga) if g is None] == ["head.bias"]
    _assert_grads_close(ga, gb, 1e-9, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_critic_args_and_kwargs(kind):
    critic = SmoothCritic(num_classes=4).double()
    real, fake = _batch()
    y = torch.tensor([0, 3, 1, 1, 2])
    want = textbook(kind, critic, real, fake, args=(y,), kwargs={"temperature": 0.5})
    got = ours(kind, critic, real, fake, critic_args=(y,), critic_kwargs={"temperature": 0.5})
    _assert_close(got, want, 1e-10, kind)
    _assert_grads_close(_param_grads(got, critic), _param_grads(want, critic), 1e-10, kind)
    # The condition matters: another label gives another penalty.
    other = ours(kind, critic, real, fake, critic_args=((y + 1) % 4,), critic_kwargs={"temperature": 0.5})
    assert (other - got).abs().item() > 1e-8


@pytest.mark.parametrize("kind", KINDS)
def test_multi_output_critic_sums_outputs(kind):
    critic = SmoothCritic(two_heads=True).double()
    real, fake = _batch()
    want = textbook(kind, critic, real, fake)
    got = ours(kind, critic, real, fake)
    _assert_close(got, want, 1e-10, kind)
    _assert_grads_close(_param_grads(got, critic), _param_grads(want, critic), 1e-10, kind)
    as_dict = ours(kind, lambda x: dict(zip(("adv", "cls"), critic(x))), real, fake)
    _assert_close(as_dict, want, 1e-10, f"{kind} dict")
    # A non-float entry (e.g. predicted labels) is skipped, not summed.
    with_labels = ours(kind, lambda x: (*critic(x), critic(x)[1].argmax(1)), real, fake)
    _assert_close(with_labels, want, 1e-10, f"{kind} int entry")


def test_stargan_style_domain_indexed_r1_with_reused_outputs():
    """StarGAN v2's discriminator step: R1 (weight 1) on the real logits of domain y, logits reused for the loss."""
    from fastgan.models import StarGANv2Discriminator

    D = StarGANv2Discriminator(img_size=16, num_domains=3, max_conv_dim=16, dim_in=4).double()
    real, _ = _batch(n=4, size=16)
    y = torch.tensor([2, 0, 1, 2])
    x = real.clone().requires_grad_(True)
    out = D(x, y)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    want = 0.5 * g.pow(2).reshape(4, -1).sum(1).mean(0)
    got, logits = gradient_penalty(D, real, kind="r1", weight=1.0, critic_args=(y,), return_outputs=True)
    _assert_close(got, want, 1e-10)
    _assert_close(logits, out, 1e-12)
    # The returned logits are attached to the critic: a loss built on them trains it like a fresh forward.
    _assert_grads_close(_param_grads(ns_d_loss(logits, torch.zeros(1, dtype=F64)), D),
                        _param_grads(ns_d_loss(D(real, y), torch.zeros(1, dtype=F64)), D), 1e-12)
    _assert_grads_close(_param_grads(got, D), _param_grads(want, D), 1e-10)


def test_return_outputs_are_critic_outputs_at_evaluated_points():
    critic = SmoothCritic().double()
    real, fake = _batch()
    for kind in KINDS:
        p, out = ours(kind, critic, real, fake, return_outputs=True)
        assert p.dim() == 0 and out.shape == (real.shape[0],)
    _, out_r1 = ours("r1", critic, real, fake, return_outputs=True)
    _, out_r2 = ours("r2", critic, real, fake, return_outputs=True)
    _assert_close(out_r1, critic(real), 1e-14)
    _assert_close(out_r2, critic(fake), 1e-14)


def test_reproducible_draws_and_weight_semantics():
    critic = SmoothCritic().double()
    real, fake = _batch()
    for kind in ("wgan-gp", "dragan"):
        a, b = ours(kind, critic, real, fake, seed=7), ours(kind, critic, real, fake, seed=7)
        assert a.item() == b.item()
        assert abs(a.item() - ours(kind, critic, real, fake, seed=8).item()) > 1e-10
    for kind in KINDS:  # default weight, and weight multiplies the batch mean linearly
        default = ours(kind, critic, real, fake)
        _assert_close(ours(kind, critic, real, fake, weight=1.0) * DEFAULT_WEIGHTS[kind], default, 1e-12, kind)
    assert DEFAULT_WEIGHTS == {"wgan-gp": 10.0, "dragan": 10.0, "r1": 10.0, "r2": 10.0}
    # Kind spelling is forgiving; r1 needs no fake and r2 no real.
    _assert_close(ours("WGAN_GP", critic, real, fake), ours("wgan-gp", critic, real, fake), 0)
    _assert_close(gradient_penalty(critic, real, kind="r1"), ours("r1", critic, real, fake), 0)
    _assert_close(gradient_penalty(critic, None, fake, kind="r2"), ours("r2", critic, real, fake), 0)


def test_penalty_reaches_critic_not_generator():
    critic = SmoothCritic().double()
    gen = nn.Linear(4, 3 * 16 * 16).double()
    real, _ = _batch(n=3)
    fake = gen(torch.randn(3, 4, dtype=F64)).view(3, 3, 16, 16)
    ours("wgan-gp", critic, real, fake).backward()
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in critic.named_parameters() if n != "fc.bias")
    assert critic.fc.bias.grad is None  # shifts the output, not its gradient


def test_float32_and_no_grad_context():
    critic = DCGANCritic(img_channels=1, base=4, image_size=16)
    real, fake = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16)
    with torch.no_grad():  # the penalty builds its own graph even inside no_grad (e.g. for logging)
        p = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    assert p.dtype == torch.float32 and torch.isfinite(p)


def test_penalty_from_grad():
    grad = torch.randn(4, 2, 3, 3, dtype=F64)
    norms = grad.reshape(4, -1).norm(dim=1)
    for kind in ("wgan-gp", "dragan"):
        _assert_close(penalty_from_grad(grad, kind), (norms - 1) ** 2, 1e-14)
        _assert_close(penalty_from_grad(grad, kind, target=2.0), (norms - 2) ** 2, 1e-14)
    for kind in ("r1", "r2"):
        _assert_close(penalty_from_grad(grad, kind, target=5.0), 0.5 * norms ** 2, 1e-14)
    assert penalty_from_grad(grad, "r1").shape == (4,)
    with pytest.raises(ValueError, match="unknown gradient penalty kind"):
        penalty_from_grad(grad, "gp")


# --- errors ----------------------------------------------------------------------------------------------------------

def test_errors():
    critic = SmoothCritic().double()
    real, fake = _batch()
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(critic, real, fake[:3], kind="wgan-gp")
    with pytest.raises(ValueError, match="dtype"):
        gradient_penalty(critic, real, fake.float(), kind="wgan-gp")
    with pytest.raises(ValueError, match="pass fake="):
        gradient_penalty(critic, real, kind="wgan-gp")
    with pytest.raises(ValueError, match="pass fake="):
        gradient_penalty(critic, real, kind="r2")
    with pytest.raises(ValueError, match="unknown gradient penalty kind 'r3'"):
        gradient_penalty(critic, real, fake, kind="r3")
    with pytest.raises(ValueError, match="floating point"):
        gradient_penalty(critic, real.long(), kind="r1")


def test_critic_that_ignores_its_input():
    w = nn.Parameter(torch.randn(3, dtype=F64))
    real, fake = _batch()
    # Depends on parameters only: autograd.grad(allow_unused=True) gives None for x.
    with pytest.raises(ValueError, match="does not depend on its input"):
        gradient_penalty(lambda x: w.sum().expand(x.shape[0]), real, fake)
    # No gradient at all (detached / computed under no_grad).
    with pytest.raises(ValueError, match="does not depend on its input"):
        gradient_penalty(lambda x: x.detach().flatten(1).sum(1), real, kind="r1")
    with pytest.raises(ValueError, match="no floating-point tensor"):
        gradient_penalty(lambda x: (x.flatten(1).argmax(1),), real, kind="r1")
    with pytest.raises(TypeError, match="expected a tensor"):
        gradient_penalty(lambda x: "logits", real, kind="r1")


# --- lazy regularisation ---------------------------------------------------------------------------------------------

def test_lazy_regularizer_schedule_and_scale():
    lazy = LazyRegularizer(every=16)
    assert [s for s in range(50) if lazy.should_run(s)] == [0, 16, 32, 48]
    p = torch.tensor(0.25, dtype=F64)
    assert lazy.scale(p).item() == 4.0
    assert all(LazyRegularizer(every=1).should_run(s) for s in range(5))
    assert LazyRegularizer().every == 16
    # Over a whole interval the lazily scaled penalty sums to what the every-step penalty sums to.
    lazy4 = LazyRegularizer(every=4)
    assert sum(lazy4.scale(1.0) for s in range(8) if lazy4.should_run(s)) == 8.0
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            LazyRegularizer(every=bad)
    with pytest.raises(ValueError):
        lazy.should_run(-1)


def test_lazy_adam_params():
    lr, betas = lazy_adam_params(0.002, (0.0, 0.99), 16)
    c = 16 / 17
    assert lr == pytest.approx(0.002 * c, rel=1e-15)
    assert betas == (0.0, pytest.approx(0.99 ** c, rel=1e-15))
    assert LazyRegularizer(4).adam_params(1e-3, (0.5, 0.9)) == {
        "lr": pytest.approx(1e-3 * 0.8), "betas": (pytest.approx(0.5 ** 0.8), pytest.approx(0.9 ** 0.8))}
    with pytest.raises(ValueError):
        lazy_adam_params(1e-3, (0.0, 0.99), 0)


# --- GAN losses ------------------------------------------------------------------------------------------------------

def _logits(n=7):
    return torch.randn(n, 1, dtype=F64) * 3, torch.randn(n, 1, dtype=F64) * 3


def test_non_saturating_and_vanilla_losses():
    r, f = _logits()
    sig = torch.sigmoid
    _assert_close(ns_d_loss(r, f), -torch.log(sig(r)).mean() - torch.log(1 - sig(f)).mean(), 1e-12)
    bce = F.binary_cross_entropy_with_logits
    _assert_close(ns_d_loss(r, f), bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f)), 1e-12)
    assert vanilla_d_loss is ns_d_loss
    _assert_close(ns_g_loss(f), -torch.log(sig(f)).mean(), 1e-12)
    _assert_close(vanilla_g_loss(f), torch.log(1 - sig(f)).mean(), 1e-12)
    big = torch.tensor([-200.0, 200.0], dtype=F64)  # stable for large logits
    for value in (ns_d_loss(big, big), vanilla_g_loss(big), ns_g_loss(big)):
        assert torch.isfinite(value)
    assert ns_g_loss(f).dim() == 0


def test_lsgan_losses():
    r, f = _logits()
    _assert_close(lsgan_d_loss(r, f), 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean(), 1e-12)
    _assert_close(lsgan_d_loss(r, f, a=-1.0, b=1.0), 0.5 * ((r - 1) ** 2).mean() + 0.5 * ((f + 1) ** 2).mean(), 1e-12)
    _assert_close(lsgan_g_loss(f), 0.5 * ((f - 1) ** 2).mean(), 1e-12)
    _assert_close(lsgan_g_loss(f, c=0.0), 0.5 * (f ** 2).mean(), 1e-12)


def test_wgan_and_hinge_losses():
    r, f = _logits()
    _assert_close(wgan_d_loss(r, f), f.mean() - r.mean(), 1e-12)
    _assert_close(wgan_g_loss(f), -f.mean(), 1e-12)
    _assert_close(hinge_d_loss(r, f), torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean(), 1e-12)
    _assert_close(hinge_g_loss(f), -f.mean(), 1e-12)
    # Patch-shaped logits reduce over every element.
    rp, fp = torch.randn(2, 1, 3, 3, dtype=F64), torch.randn(2, 1, 3, 3, dtype=F64)
    _assert_close(hinge_d_loss(rp, fp), F.relu(1 - rp).mean() + F.relu(1 + fp).mean(), 1e-12)


def test_loss_argument_errors():
    r, _ = _logits()
    with pytest.raises(TypeError, match="floating point"):
        ns_g_loss(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        wgan_d_loss(r, torch.empty(0, dtype=F64))
    with pytest.raises(TypeError, match="tensor"):
        hinge_g_loss([1.0, 2.0])


def test_clip_weights():
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0).add_(torch.linspace(-1, 1, p.numel()).view_as(p))
        m[1].running_var.fill_(5.0)
    assert clip_weights_(m, 0.01) is m
    for p in m.parameters():
        assert p.abs().max().item() <= 0.01 and p.abs().max().item() == pytest.approx(0.01)
    assert m[1].running_var.eq(5.0).all()  # buffers untouched
    with pytest.raises(ValueError):
        clip_weights_(m, 0.0)
