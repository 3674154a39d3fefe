"""fastgan.graphs.GraphedStep: a whole training step replayed from a CUDA graph, and called directly on CPU."""
import pytest
import torch

import fastgan
from fastgan.graphs import GraphedStep
from fastgan.models import DCGANCritic

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _critic_and_step(device, seed=0, capturable=False):
    """A small DCGAN critic, its Adam, a seeded generator and a WGAN-GP training step over them."""
    torch.manual_seed(seed)
    critic = DCGANCritic(img_channels=3, base=8, image_size=16).to(device)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.9), capturable=capturable)
    gen = torch.Generator(device).manual_seed(7)

    def step(real, fake):
        opt.zero_grad(set_to_none=True)
        gp = fastgan.losses.gradient_penalty(critic, real, fake, kind="wgan-gp", weight=10.0, generator=gen)
        loss = fastgan.losses.wgan_d_loss(critic(real), critic(fake)) + gp
        loss.backward()
        opt.step()
        return loss.detach(), gp.detach()

    return critic, gen, step


def _batches(device, n=3, shape=(4, 3, 16, 16)):
    g = torch.Generator(device).manual_seed(1)
    return [tuple(torch.randn(shape, generator=g, device=device) for _ in range(2)) for _ in range(n)]


def test_on_cpu_it_calls_the_step_directly():
    """Same losses and the same parameters, bit for bit, as calling the step itself (warm-up calls included)."""
    batches = _batches("cpu")
    critic_a, _, step_a = _critic_and_step("cpu")
    critic_b, _, step_b = _critic_and_step("cpu")
    graphed = GraphedStep(step_a, batches[0])
    assert not graphed.graphed and graphed.graph is None
    for real, fake in batches:
        got, want = graphed(real, fake), step_b(real, fake)
        assert all(torch.equal(u, v) for u, v in zip(got, want))
    for p, q in zip(critic_a.parameters(), critic_b.parameters()):
        assert torch.equal(p, q)


def test_outputs_are_clones_unless_asked_otherwise():
    x = torch.ones(3)
    buf = torch.zeros(3)

    def fn(t):
        buf.copy_(t)
        return buf, None

    out, none = GraphedStep(fn, (x,))(x)
    assert none is None and torch.equal(out, x) and out.data_ptr() != buf.data_ptr()
    assert GraphedStep(fn, (x,), clone_outputs=False)(x)[0] is buf


def test_bad_inputs_get_clear_errors():
    x = torch.randn(2, 3, 4, 4)
    step = GraphedStep(lambda t: t * 2, (x,))
    with pytest.raises(ValueError, match="takes 1 inputs, got 2"):
        step(x, x)
    with pytest.raises(ValueError, match=r"input 0 is \(3, 3, 4, 4\)"):  # a last, smaller batch
        step(torch.randn(3, 3, 4, 4))
    with pytest.raises(ValueError, match="float64"):
        step(x.double())
    with pytest.raises(ValueError, match="strides"):  # same shape, channels-last memory
        step(x.contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="must be a tensor"):
        step(1.0)
    with pytest.raises(ValueError, match="at least one example input"):
        GraphedStep(lambda: None, ())
    with pytest.raises(ValueError, match="must be tensors"):
        GraphedStep(lambda t: t, (3,))
    with pytest.raises(ValueError, match="several devices"):
        GraphedStep(lambda a, b: a, (x, torch.empty(2, device="meta")))
    with pytest.raises(ValueError, match="needs CUDA example inputs"):
        GraphedStep(lambda t: t, (x,), enabled=True)


@cuda
def test_graphed_step_replays_the_eager_step_on_cuda():
    gen = torch.Generator("cuda").manual_seed(3)
    w = torch.randn(5, 5, device="cuda", requires_grad=True)

    def step(x):
        noise = torch.rand(x.shape, generator=gen, device="cuda")
        (g,) = torch.autograd.grad(((x + noise) @ w).square().sum(), w)
        return g, noise

    x1, x2 = torch.randn(4, 5, device="cuda"), torch.randn(4, 5, device="cuda")
    graphed = GraphedStep(step, (x1,), generators=(gen,))
    assert graphed.graphed
    gen.manual_seed(5)
    got = [graphed(x1), graphed(x2)]
    gen.manual_seed(5)
    want = [step(x1), step(x2)]
    for a, b in zip(got, want):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(got[0][1], got[1][1])  # each replay draws afresh


@cuda
def test_critic_training_step_with_capturable_adam_matches_eager():
    """The module docstring's recipe: WGAN-GP (double backward) + Adam(capturable=True) in one graph gives the
    eager step's losses and parameters (TF32 off: both runs must round alike)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        batches = _batches("cuda", n=4)
        critic_g, gen_g, step_g = _critic_and_step("cuda", capturable=True)
        critic_e, gen_e, step_e = _critic_and_step("cuda", capturable=True)
        graphed = GraphedStep(step_g, batches[0], generators=(gen_g,), warmup=3)
        for _ in range(3):  # the warm-up's real steps, on the example inputs
            step_e(*batches[0])
        for real, fake in batches:
            got, want = graphed(real, fake), step_e(real, fake)
            for u, v in zip(got, want):
                torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
        for p, q in zip(critic_g.parameters(), critic_e.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
        fresh = _critic_and_step("cuda")[0]
        assert not torch.equal(next(critic_g.parameters()), next(fresh.parameters()))  # it did train
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
