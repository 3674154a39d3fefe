"""fastgan.models.unet.UNet: shapes over odd configurations, class conditioning with the null class, gradient flow,
the ResBlock on fused GroupNorm+SiLU+scale-shift against plain torch, configuration errors, and sampling with the DDPM/DDIM samplers. Tiny models only."""
import pytest
import torch
import torch.nn.functional as F

import fastgan.nn
from fastgan.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule
from fastgan.models.unet import ResBlock, UNet, timestep_embedding


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize_zero_inits(model):
    """The zero-initialised convs (residual branch ends, attention proj, output) get small random weights, so every
    parameter influences the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0 and p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


CONFIGS = [
    # (kwargs, input shape)
    (dict(in_channels=1, out_channels=2, base_channels=12, channel_mult=(1, 3), num_res_blocks=1,
          attn_resolutions=(4,), num_heads=3, img_size=8), (3, 1, 8, 8)),
    (dict(in_channels=3, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8, 4),
          num_heads=2, img_size=16, dropout=0.1), (2, 3, 16, 16)),
    (dict(in_channels=2, base_channels=10, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_heads=5,
          img_size=6), (1, 2, 6, 6)),  # one level, no downsampling, a side that is no power of two
    (dict(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
          img_size=8), (2, 1, 8, 12)),  # fully convolutional: non-square input of the right divisibility
]


@pytest.mark.parametrize("kwargs,shape", CONFIGS)
def test_output_shapes_and_zero_init(kwargs, shape):
    model = UNet(**kwargs)
    x = torch.randn(shape)
    t = torch.randint(0, 1000, (shape[0],))
    out = model(x, t)
    assert out.shape == (shape[0], kwargs.get("out_channels", kwargs["in_channels"])) + shape[2:]
    assert out.dtype == x.dtype
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv
    randomize_zero_inits(model)
    model.eval()
    out = model(x, t)
    assert out.abs().max() > 0 and torch.isfinite(out).all()
    assert torch.equal(model(x, t), out)  # eval: deterministic
    assert torch.allclose(model(x, torch.full((shape[0],), 7)), model(x, torch.tensor(7)))  # scalar t broadcasts


def test_class_conditioning_and_null_class():
    model = UNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 num_classes=3, num_heads=2, img_size=8)
    assert model.class_emb.num_embeddings == 4  # 3 classes + the null class
    randomize_zero_inits(model)
    model.eval()
    x, t = torch.randn(1, 1, 8, 8).expand(4, 1, 8, 8), torch.full((4,), 500)
    out = model(x, t, torch.tensor([0, 1, 2, 3]))
    assert all(not torch.allclose(out[i], out[j]) for i in range(4) for j in range(i + 1, 4))  # labels matter
    assert torch.equal(model(x, t), model(x, t, torch.full((4,), 3)))  # y=None is the null class
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 3\]"):
        model(x, t, torch.tensor([0, 1, 4, 2]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(x, t, torch.zeros(4))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(in_channels=1, base_channels=8, channel_mult=(1,), attn_resolutions=(), img_size=8)(x, t, t)


def test_class_labels_of_any_integer_dtype():
    # _check accepts any integer y ("an (N,) integer tensor"), but nn.Embedding takes only int64/int32 indices:
    # uint8, int8 and int16 labels failed after the check with Embedding's "argument #1 'indices'" error.
    model = UNet(in_channels=1, base_channels=4, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                 num_classes=3, num_heads=1, img_size=4)
    randomize_zero_inits(model)
    x, t, y = torch.randn(3, 1, 4, 4), torch.tensor([1, 50, 900]), torch.tensor([0, 3, 2])
    ref = model(x, t, y)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        torch.testing.assert_close(model(x, t, y.to(dtype)), ref, rtol=0, atol=0)


def test_gradients_flow_to_every_parameter():
    model = UNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                 num_classes=2, num_heads=2, img_size=8, dropout=0.1)
    x, t, y = torch.randn(3, 1, 8, 8, requires_grad=True), torch.tensor([0, 400, 999]), torch.tensor([0, 1, 2])
    (model(x, t, y) - 1).square().mean().backward()
    # At initialisation only the zero-initialised output conv receives a gradient (its input is not zero)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
    assert with_grad == {"conv_out.weight", "conv_out.bias"}
    model.zero_grad()
    x.grad = None
    randomize_zero_inits(model)
    (model(x, t, y) - 1).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"no gradient reaches {name}"
    assert x.grad.abs().max() > 0


def test_resblock_equals_the_plain_torch_formulation():
    """A ResBlock on fastgan's GroupNorm (SiLU and the AdaGN scale-shift fused into the norm) against the same
    parameters run through nn.GroupNorm, F.silu and addcmul, in float64, values and gradients."""
    torch.manual_seed(3)
    blk = ResBlock(12, 8, emb_dim=6, dropout=0.0, max_groups=4).double()
    randomize_zero_inits(blk)
    with torch.no_grad():
        for norm in (blk.norm1, blk.norm2):
            norm.weight.normal_()
            norm.bias.normal_()
    assert isinstance(blk.norm1, fastgan.nn.GroupNorm) and isinstance(blk.norm1, torch.nn.GroupNorm)
    x = torch.randn(2, 12, 5, 3, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)

    def plain(x, emb):
        gn = lambda norm, h: F.group_norm(h, norm.num_groups, norm.weight, norm.bias, norm.eps)  # noqa: E731
        h = blk.conv1(F.silu(gn(blk.norm1, x)))
        scale, shift = blk.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = blk.conv2(F.silu(torch.addcmul(shift, gn(blk.norm2, h), 1 + scale)))
        return blk.skip(x) + h

    got, want = blk(x, emb), plain(x, emb)
    assert (got - want).abs().max().item() < 1e-12
    params = [x, emb, blk.norm1.weight, blk.norm2.bias, blk.emb.weight]
    g1 = torch.autograd.grad(got.square().sum(), params)
    g2 = torch.autograd.grad(want.square().sum(), params)
    assert all((a - b).abs().max().item() < 1e-10 * (1 + b.abs().max().item()) for a, b in zip(g1, g2))


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 10]), 7)
    assert e.shape == (2, 7) and torch.equal(e[0, :3], torch.ones(3)) and torch.equal(e[0, 3:], torch.zeros(4))
    assert e[1, 0].item() == pytest.approx(torch.cos(torch.tensor(10.0)).item())


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=10, channel_mult=(1, 2, 2)), "divisible by 2"),
    (dict(attn_resolutions=(3,)), "not among the levels' sizes"),
    (dict(num_heads=3), "num_heads 3 must divide"),
    (dict(num_classes=0), "num_classes"),
    (dict(dropout=1.0), "dropout"),
    (dict(channel_mult=()), "channel_mult"),
    (dict(base_channels=0), "base_channels"),
])
def test_bad_configuration_errors(kwargs, match):
    base = dict(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                num_heads=2, img_size=8)
    with pytest.raises(ValueError, match=match):
        UNet(**{**base, **kwargs})


def test_bad_input_errors():
    model = UNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                 img_size=8)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(2, 1, 7, 8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="t must be"):
        model(torch.randn(2, 1, 8, 8), torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize("sampler", [DDPMSampler, DDIMSampler])
def test_samplers_run_with_the_unet(sampler):
    model = UNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 num_classes=3, num_heads=2, img_size=8).eval()
    randomize_zero_inits(model)
    sched = NoiseSchedule.linear(1000)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = sampler(model, sched, num_inference_steps=10, clip_x0=1.0)
    y = torch.tensor([0, 1, 2, 0])
    kw = {"eta": 0.0} if sampler is DDIMSampler else {}
    plain = s.sample(x_T, generator=torch.Generator().manual_seed(1), **kw)  # model(x, t): null class
    cond = s.sample(x_T, cond=y, generator=torch.Generator().manual_seed(1), **kw)
    guided = s.sample(x_T, cond=y, null_cond=torch.full_like(y, 3), guidance=3.0,
                      generator=torch.Generator().manual_seed(1), **kw)
    for out in (plain, cond, guided):
        assert out.shape == x_T.shape and torch.isfinite(out).all()
    assert not torch.allclose(plain, cond) and not torch.allclose(cond, guided)


def test_compile_fullgraph_traces_the_unet():
    """Every fastgan op in the UNet (group norm with SiLU and scale-shift) traces under fullgraph=True."""
    model = UNet(base_channels=8, channel_mult=(1, 2), img_size=8, attn_resolutions=(4,), norm_groups=4,
                 num_classes=3)
    randomize_zero_inits(model)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 5]), torch.tensor([0, 3])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got, want = compiled(x, t, y), model(x, t, y)
    assert want.abs().max() > 0 and torch.allclose(got, want, rtol=1e-5, atol=1e-6)
