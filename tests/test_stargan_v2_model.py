"""fastgan.models.stargan_v2 (+ _losses): shapes, the two builds agreeing, official checkpoints, losses, errors.

The reference (tests/stargan_v2_reference.py) is a small StarGAN v2 written in plain torch.nn from the paper's
description with the official module names, so its state_dict is laid out as an official checkpoint. Models are
tiny (dim_in 4-8) so the file runs in seconds on two CPU cores.
"""
import math

import pytest
import torch
from torch import nn

import fastgan
from fastgan.models import (
    Generator, MappingNetwork, StarGANv2Config, StyleEncoder, build_model, discriminator_loss, generator_loss,
    load_official_checkpoint, moving_average,
)
from stargan_v2_reference import official_state, ref_d_loss, ref_g_loss, ref_nets
from tolerance import assert_rule

F64 = torch.float64
SMALL = dict(img_size=32, num_domains=3, latent_dim=8, style_dim=16, hidden_dim=32, max_conv_dim=32, dim_in=8)


# --- helpers ----------------------------------------------------------------------------------------------------------

def batch(cfg, n=2, dtype=torch.float32):
    s = cfg.img_size
    return dict(x=torch.randn(n, 3, s, s, dtype=dtype), y_org=torch.randint(0, cfg.num_domains, (n,)),
                y_trg=torch.randint(0, cfg.num_domains, (n,)), z=torch.randn(n, cfg.latent_dim, dtype=dtype),
                z2=torch.randn(n, cfg.latent_dim, dtype=dtype), ref=torch.randn(n, 3, s, s, dtype=dtype),
                ref2=torch.randn(n, 3, s, s, dtype=dtype))


def heatmaps(n, size, dtype=torch.float32):
    return (torch.rand(n, 1, size, size, dtype=dtype), torch.rand(n, 1, size, size, dtype=dtype))


def all_grads(nets, loss):
    for p in nets.parameters():
        p.grad = None
    loss.backward()
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in nets.named_parameters()}


def loss_grads(nets, cfg, b, masks=None, which=("d_z", "d_ref", "g_z", "g_ref"), ref=False):
    """{which: (loss, grads)} with our losses, or the reference formulas when ``ref``."""
    out = {}
    for w in which:
        if w.startswith("d"):
            kw = dict(z=b["z"]) if w == "d_z" else dict(x_ref=b["ref"])
            if ref:
                loss = ref_d_loss(nets, cfg, b["x"], b["y_org"], b["y_trg"], masks=masks, **kw)
            else:
                kw = {"z_trg": kw["z"]} if "z" in kw else kw
                loss, _ = discriminator_loss(nets, cfg, b["x"], b["y_org"], b["y_trg"], masks=masks, **kw)
        else:
            pair = (b["z"], b["z2"]) if w == "g_z" else (b["ref"], b["ref2"])
            if ref:
                kw = dict(zs=pair) if w == "g_z" else dict(refs=pair)
                loss = ref_g_loss(nets, cfg, b["x"], b["y_org"], b["y_trg"], masks=masks, **kw)
            else:
                kw = dict(z_trgs=pair) if w == "g_z" else dict(x_refs=pair)
                loss, _ = generator_loss(nets, cfg, b["x"], b["y_org"], b["y_trg"], masks=masks, **kw)
        out[w] = (loss.detach(), all_grads(nets, loss))
    return out


def assert_close64(a, b, what, rtol=1e-9):
    scale = max(b.abs().max().item(), 1e-3)
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3e} > {rtol:.0e} x {scale:.3e}"


# --- config, construction, shapes -------------------------------------------------------------------------------------

def test_config_roundtrip_and_errors():
    cfg = StarGANv2Config(**SMALL, lambda_ds=2.0, impl="torch")
    d = cfg.to_dict()
    assert d["lambda_ds"] == 2.0 and d["impl"] == "torch" and d["dim_in"] == 8
    assert StarGANv2Config.from_dict({**d, "unknown_key": 1, "total_iters": 5}) == cfg
    assert StarGANv2Config().resolved_dim_in == 64 and StarGANv2Config(img_size=128).resolved_dim_in == 128
    with pytest.raises(ValueError, match="impl must be one of"):
        StarGANv2Config(impl="cuda")
    with pytest.raises(ValueError, match="img_size must be a power of two >= 32"):
        StarGANv2Config(img_size=48)
    with pytest.raises(ValueError, match="img_size must be a power of two >= 32"):
        StarGANv2Config(img_size=16)  # no down/upsampling level without the high-pass path
    assert StarGANv2Config(img_size=16, w_hpf=1.0).img_size == 16
    with pytest.raises(ValueError, match="num_domains must be a positive integer"):
        StarGANv2Config(num_domains=0)
    with pytest.raises(ValueError, match="dim_in must be a positive integer"):
        StarGANv2Config(dim_in=0)
    with pytest.raises(ValueError, match="cfg must be a StarGANv2Config"):
        build_model(dict(SMALL))


def test_official_defaults_keys_and_parameter_counts():
    # Official sizes on the meta device: no memory, no arithmetic. The counts are the official model's (its training
    # log prints 43467395 / 2438272 / 20916928 / 20852290 for CelebA-HQ: w_hpf=1, 2 domains), and the keys and shapes
    # equal the reference implementation's.
    with torch.device("meta"):
        cfg = StarGANv2Config(w_hpf=1.0)
        nets, ema = build_model(cfg)
        ref = ref_nets(cfg)
        nets0, _ = build_model(StarGANv2Config(w_hpf=0.0, num_domains=3))
    counts = {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()}
    assert counts == {"generator": 43467395, "mapping_network": 2438272, "style_encoder": 20916928,
                      "discriminator": 20852290}
    assert sum(p.numel() for p in nets0["generator"].parameters()) == 33892995  # AFHQ generator (no hpf level)
    for name, net in nets.items():
        ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        assert ours == {k: tuple(v.shape) for k, v in ref[name].state_dict().items()}, name
    assert list(ema) == ["generator", "mapping_network", "style_encoder"]
    assert nets["generator"].from_rgb.weight.shape == (64, 3, 3, 3)  # 3x3 stem, as in the official checkpoints
    assert "hpf.filter" not in nets["generator"].state_dict()


@pytest.mark.parametrize("img_size,w_hpf", [(32, 0.0), (64, 0.0), (32, 1.0), (16, 1.0)])
def test_shapes_and_layout(img_size, w_hpf):
    cfg = StarGANv2Config(**{**SMALL, "img_size": img_size, "dim_in": 4, "w_hpf": w_hpf})
    nets, ema = build_model(cfg)
    G, M, E, D = (nets[k] for k in ("generator", "mapping_network", "style_encoder", "discriminator"))
    levels = int(math.log2(img_size)) - 4 + (w_hpf > 0)
    assert len(G.encode) == len(G.decode) == levels + 2
    # decode mirrors encode: decoder block i undoes encoder block -1-i
    for i, blk in enumerate(G.decode):
        enc = G.encode[len(G.encode) - 1 - i]
        assert (blk.conv1.in_channels, blk.conv2.out_channels) == (enc.conv2.out_channels, enc.conv1.in_channels)
        assert blk.upsample == enc.downsample
    assert isinstance(G.encode[0].norm1, fastgan.nn.InstanceNorm2d) and isinstance(G.decode[0].norm1, fastgan.nn.AdaIN)
    b = batch(cfg, n=3)
    s = M(b["z"], b["y_trg"])
    assert s.shape == (3, cfg.style_dim) and E(b["ref"], b["y_trg"]).shape == (3, cfg.style_dim)
    assert G(b["x"], s).shape == (3, 3, img_size, img_size)
    assert D(b["x"], b["y_org"]).shape == (3,)
    if w_hpf > 0:
        out = G(b["x"], s, masks=heatmaps(3, 2 * img_size))
        assert out.shape == (3, 3, img_size, img_size) and torch.isfinite(out).all()
        hpf_used = img_size >= 32
        assert (out - G(b["x"], s)).abs().max().item() > 0 if hpf_used else True
    # the EMA copies are equal, independent tensors
    for k, net in ema.items():
        for (n1, p), (n2, q) in zip(nets[k].named_parameters(), net.named_parameters()):
            assert n1 == n2 and torch.equal(p, q) and p.data_ptr() != q.data_ptr()


def test_he_init_and_single_channel():
    cfg = StarGANv2Config(**{**SMALL, "img_channels": 1, "hidden_dim": 256})
    nets, _ = build_model(cfg)
    lin = nets["mapping_network"].shared[2]
    assert lin.bias.abs().max().item() == 0
    assert abs(lin.weight.std().item() / math.sqrt(2 / 256) - 1) < 0.05  # kaiming normal, fan_in, relu gain
    assert nets["generator"].to_rgb[2].out_channels == 1 and nets["discriminator"].main[0].in_channels == 1
    x = torch.randn(2, 1, 32, 32)
    y = torch.tensor([0, 2])
    assert nets["generator"](x, nets["style_encoder"](x, y)).shape == (2, 1, 32, 32)


# --- the two builds agree -----------------------------------------------------------------------------------------

def pair_of_builds(cfg_kw, dtype=torch.float32):
    nets_f, _ = build_model(StarGANv2Config(**cfg_kw, impl="fastgan"))
    nets_t, _ = build_model(StarGANv2Config(**cfg_kw, impl="torch"))
    nets_t.load_state_dict(nets_f.state_dict())  # identical keys: each build loads the other's weights
    # Perturb the norms' affine parameters so they take part (they start at weight 1, bias 0).
    with torch.no_grad():
        for k, p in nets_f.named_parameters():
            if p.dim() == 1 and ".norm" in k or "to_rgb.0" in k:
                p.add_(0.1 * torch.randn_like(p))
    nets_t.load_state_dict(nets_f.state_dict())
    return nets_f.to(dtype), nets_t.to(dtype)


def test_builds_agree_float64_losses_and_grads():
    cfg = StarGANv2Config(**SMALL)
    nets_f, nets_t = pair_of_builds(SMALL, F64)
    assert isinstance(nets_t["generator"].encode[0].norm1, nn.InstanceNorm2d)
    assert not isinstance(nets_t["generator"].encode[0].norm1, fastgan.nn.InstanceNorm2d)
    assert isinstance(nets_t["discriminator"].main[1].act, nn.LeakyReLU)
    b = batch(cfg, dtype=F64)
    got, want = loss_grads(nets_f, cfg, b), loss_grads(nets_t, cfg, b)
    for w in got:
        assert_close64(got[w][0], want[w][0], f"{w} loss")
        for k in want[w][1]:
            assert_close64(got[w][1][k], want[w][1][k], f"{w} grad {k}", rtol=1e-8)


def test_builds_agree_float32_tolerance_rule():
    # Rule: our float32 error vs a float64 reference is at most 2x the torch build's float32 error. Forward output
    # of every network, and the parameter gradients of the generator (through AdaIN/IN) and of R1 (double backward
    # through the discriminator).
    cfg = StarGANv2Config(**SMALL)
    nets_f, nets_t = pair_of_builds(SMALL)
    ref64 = build_model(StarGANv2Config(**SMALL, impl="torch"))[0]
    ref64.load_state_dict(nets_t.state_dict())
    ref64 = ref64.double()
    b = batch(cfg)
    b64 = {k: v.double() if v.is_floating_point() else v for k, v in b.items()}
    w = torch.randn(2, 3, 32, 32)

    def run(nets, bb):
        sums = {}  # per biased layer: max over channels of sum |grad of its output| (the bias gradient's terms)

        def track(name, mod):
            def fwd_hook(_m, _inp, out):
                if out.requires_grad:
                    out.register_hook(lambda g: sums.__setitem__(
                        name, g.detach().double().abs().transpose(0, 1).reshape(g.shape[1], -1).sum(1).max().item()))
            return mod.register_forward_hook(fwd_hook)

        hooks = [track(f"{k}.bias", m) for k, m in nets["generator"].named_modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]
        s = nets["mapping_network"](bb["z"], bb["y_trg"])
        out = nets["generator"](bb["x"], s)
        ws = (out * w.to(out.dtype)).sum()
        grads_g = all_grads(nets["generator"], ws)
        for h in hooks:
            h.remove()
        r1 = fastgan.losses.gradient_penalty(nets["discriminator"], bb["x"], kind="r1", weight=1.0,
                                             critic_args=(bb["y_org"],))
        grads_d = all_grads(nets["discriminator"], r1)
        outs = {"G": out.detach(), "M": s.detach(), "E": nets["style_encoder"](bb["ref"], bb["y_trg"]).detach(),
                "D": nets["discriminator"](bb["x"], bb["y_org"]).detach(), "R1": r1.detach()}
        return outs, grads_g, grads_d, sums

    (of, gf, df, _), (ot, gt, dt, _), (o64, g64, d64, mag) = run(nets_f, b), run(nets_t, b), run(ref64, b64)
    for k in o64:
        assert_rule(of[k], ot[k], o64[k], f"output {k}")
    # The rule per network over its whole gradient: each tensor divided by its float64 scale, then one max-abs
    # error. (Per tensor, ~60 composite gradients through ~10 layers each, both builds' errors are equal in median
    # but their ratio scatters past 2x for a few tensors by chance.) A bias gradient sums N*H*W terms; where they
    # cancel (a conv bias before an instance norm has gradient exactly 0) both builds return rounding noise of the
    # terms' size, so its scale is the sum of |terms| (the tolerance rule's ``magnitude``).
    for ours, eager, ref, net in ((gf, gt, g64, "generator"), (df, dt, d64, "discriminator")):
        scale = {k: max(ref[k].abs().max().item(), mag.get(k, 0.0) if net == "generator" else 0.0, 1e-30) for k in ref}
        flat = [torch.cat([(g[k].double() / scale[k]).flatten() for k in ref]) for g in (ours, eager, ref)]
        assert_rule(flat[0].float(), flat[1].float(), flat[2], f"{net} parameter gradients (each / its scale)")


@pytest.mark.parametrize("impl", ["fastgan", "torch"])
@pytest.mark.parametrize("w_hpf", [0.0, 1.0])
def test_channels_last_build_matches_and_runs_nhwc(impl, w_hpf):
    """``channels_last=True`` changes the memory format only: the same losses and parameter gradients (float64, to
    rounding) as the default build with the same weights, with the convolution weights and the activations (here the
    generator's output and every norm's input) channels-last."""
    kw = dict(SMALL, w_hpf=w_hpf)
    cfg = StarGANv2Config(**kw, impl=impl)
    nets, _ = build_model(cfg)
    nets_cl, ema_cl = build_model(StarGANv2Config(**kw, impl=impl, channels_last=True))
    nets_cl.load_state_dict(nets.state_dict())
    nets, nets_cl = nets.double(), nets_cl.double()
    cl = torch.channels_last
    assert nets_cl["generator"].from_rgb.weight.is_contiguous(memory_format=cl)
    assert ema_cl["style_encoder"].shared[0].weight.is_contiguous(memory_format=cl)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda _m, a: seen.append(a[0].is_contiguous(memory_format=cl)))
             for name, m in nets_cl["generator"].named_modules() if name.endswith(("norm1", "norm2"))]
    b = batch(cfg, dtype=F64)
    masks = heatmaps(2, cfg.img_size, F64) if w_hpf > 0 else None
    s = nets_cl["mapping_network"](b["z"], b["y_trg"])
    assert nets_cl["generator"](b["x"], s, masks=masks).is_contiguous(memory_format=cl)
    for h in hooks:
        h.remove()
    assert seen and all(seen), "a norm layer saw a contiguous (NCHW) activation"
    got, want = loss_grads(nets_cl, cfg, b, masks), loss_grads(nets, cfg, b, masks)
    for w in want:
        assert_close64(got[w][0], want[w][0], f"{w} loss")
        for k in want[w][1]:
            assert_close64(got[w][1][k], want[w][1][k], f"{w} grad {k}", rtol=1e-8)


# --- official checkpoints and the reference implementation -------------------------------------------------------

@pytest.mark.parametrize("impl", ["fastgan", "torch"])
@pytest.mark.parametrize("w_hpf,img_size", [(0.0, 32), (1.0, 64)])
def test_official_checkpoint_loads_and_matches_reference(tmp_path, impl, w_hpf, img_size):
    cfg = StarGANv2Config(**{**SMALL, "img_size": img_size, "dim_in": 4, "max_conv_dim": 16, "w_hpf": w_hpf,
                             "impl": impl})
    ref, state = official_state(cfg)
    path = tmp_path / "100000_nets.ckpt"
    torch.save(state, path)
    nets, nets_ema = build_model(cfg)
    load_official_checkpoint(nets, str(path))
    load_official_checkpoint(nets_ema, state)  # a dict too; the extra "discriminator" entry is ignored
    ref, nets, nets_ema = ref.double(), nets.double(), nets_ema.double()
    b = batch(cfg, dtype=F64)
    masks = heatmaps(2, img_size, F64) if w_hpf > 0 else None
    s_ref = ref["mapping_network"](b["z"], b["y_trg"])
    for mine in (nets, nets_ema):
        assert_close64(mine["mapping_network"](b["z"], b["y_trg"]), s_ref, "mapping network", 1e-12)
        assert_close64(mine["style_encoder"](b["ref"], b["y_trg"]), ref["style_encoder"](b["ref"], b["y_trg"]),
                       "style encoder", 1e-12)
        assert_close64(mine["generator"](b["x"], s_ref, masks), ref["generator"](b["x"], s_ref, masks), "generator",
                       1e-12)
    assert_close64(nets["discriminator"](b["x"], b["y_org"]), ref["discriminator"](b["x"], b["y_org"]), "D", 1e-12)


def test_checkpoint_errors_name_the_keys():
    cfg = StarGANv2Config(**SMALL)
    nets, nets_ema = build_model(cfg)
    _, state = official_state(cfg, prefix="")
    load_official_checkpoint(nets, state)  # no DataParallel prefix: fine too
    bad = {k: dict(v) for k, v in state.items()}
    del bad["generator"]["decode.0.norm1.fc.weight"]
    bad["generator"]["decode.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"generator: missing keys \['decode.0.norm1.fc.weight'\]; unexpected keys "
                                         r"\['decode.0.extra.weight'\]"):
        load_official_checkpoint(nets_ema, bad)
    with pytest.raises(ValueError, match=r"no entry for \['discriminator'\]"):
        load_official_checkpoint(nets, {k: v for k, v in state.items() if k != "discriminator"})
    _, other = official_state(StarGANv2Config(**{**SMALL, "style_dim": 8}))
    with pytest.raises(ValueError, match=r"shape mismatches \['unshared.0.6.weight: checkpoint \(8, 32\) vs model "
                                         r"\(16, 32\)'"):
        load_official_checkpoint(nn.ModuleDict({"mapping_network": nets["mapping_network"]}), other)


# --- losses ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("w_hpf", [0.0, 1.0])
def test_losses_match_the_paper_formulas(w_hpf):
    # Our losses (R1 through fastgan.losses.gradient_penalty, real logits reused) against the reference's direct
    # formulas on the same weights: loss values and every parameter gradient, float64. w_hpf=1 runs the masks path.
    cfg = StarGANv2Config(**{**SMALL, "dim_in": 4, "max_conv_dim": 16, "w_hpf": w_hpf, "lambda_reg": 2.5,
                             "lambda_sty": 0.7, "lambda_cyc": 1.3, "lambda_ds": 0.9})
    ref, state = official_state(cfg)
    nets, _ = build_model(cfg)
    load_official_checkpoint(nets, state)
    ref, nets = ref.double(), nets.double()
    b = batch(cfg, dtype=F64)
    masks = heatmaps(2, 32, F64) if w_hpf > 0 else None
    got, want = loss_grads(nets, cfg, b, masks), loss_grads(ref, cfg, b, masks, ref=True)
    for w in want:
        assert_close64(got[w][0], want[w][0], f"{w} loss", 1e-12)
        for k in want[w][1]:
            assert_close64(got[w][1][k], want[w][1][k], f"{w} grad {k}", 1e-9)
    # D's gradients from the D loss include R1's double backward: non-zero and finite in D, none in G/M/E
    d_grads = got["d_z"][1]
    assert all(torch.isfinite(g).all() for g in d_grads.values())
    assert all(d_grads[k].abs().max() == 0 for k in d_grads if not k.startswith("discriminator"))
    assert d_grads["discriminator.main.0.weight"].abs().max() > 0


def test_discriminator_loss_terms_and_r1():
    cfg = StarGANv2Config(**SMALL, lambda_reg=3.0)
    nets, _ = build_model(cfg)
    b = batch(cfg)
    x_before = b["x"].clone()
    loss, terms = discriminator_loss(nets, cfg, b["x"], b["y_org"], b["y_trg"], x_ref=b["ref"])
    assert set(terms) == {"real", "fake", "reg"} and all(isinstance(v, float) for v in terms.values())
    assert loss.item() == pytest.approx(terms["real"] + terms["fake"] + 3.0 * terms["reg"], rel=1e-5)
    assert torch.equal(b["x"], x_before) and not b["x"].requires_grad  # the caller's batch is left alone
    # reg is the official unweighted r1: 0.5 * mean_n ||grad_x sum D(x, y_org)||^2
    x = b["x"].clone().requires_grad_()
    (g,) = torch.autograd.grad(nets["discriminator"](x, b["y_org"]).sum(), x)
    assert terms["reg"] == pytest.approx(0.5 * g.pow(2).flatten(1).sum(1).mean().item(), rel=1e-4)
    loss.backward()  # double backward through the fastgan build's discriminator
    assert all(torch.isfinite(p.grad).all() for p in nets["discriminator"].parameters())


def test_generator_loss_terms_and_lambda_ds():
    cfg = StarGANv2Config(**SMALL, lambda_ds=1.0)
    nets, _ = build_model(cfg)
    b = batch(cfg)
    args = (nets, cfg, b["x"], b["y_org"], b["y_trg"])
    l_cfg, t = generator_loss(*args, z_trgs=(b["z"], b["z2"]))
    l0, _ = generator_loss(*args, z_trgs=(b["z"], b["z2"]), lambda_ds=0.0)
    l2, _ = generator_loss(*args, z_trgs=[b["z"], b["z2"]], lambda_ds=2.0)
    assert set(t) == {"adv", "sty", "ds", "cyc"} and t["ds"] > 0
    assert l_cfg.item() == pytest.approx(l0.item() - t["ds"], rel=1e-5, abs=1e-6)
    assert l2.item() == pytest.approx(l0.item() - 2.0 * t["ds"], rel=1e-5, abs=1e-6)
    assert l0.item() == pytest.approx(t["adv"] + t["sty"] + t["cyc"], rel=1e-5)


def test_generator_loss_mask_fn_for_the_cycle():
    cfg = StarGANv2Config(**{**SMALL, "dim_in": 4, "w_hpf": 1.0})
    nets, _ = build_model(cfg)
    b = batch(cfg)
    masks = heatmaps(2, 32)
    seen = []

    def fan(x):
        seen.append(x.shape)
        return heatmaps(x.shape[0], 32)

    args = (nets, cfg, b["x"], b["y_org"], b["y_trg"])
    _, with_fn = generator_loss(*args, x_refs=(b["ref"], b["ref2"]), masks=masks, mask_fn=fan)
    _, reuse = generator_loss(*args, x_refs=(b["ref"], b["ref2"]), masks=masks)
    assert seen == [(2, 3, 32, 32)]
    assert with_fn["adv"] == reuse["adv"] and with_fn["cyc"] != reuse["cyc"]


# --- errors, EMA, autocast, benchmark ---------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    cfg = StarGANv2Config(**SMALL)
    nets, _ = build_model(cfg)
    G, M, E, D = (nets[k] for k in ("generator", "mapping_network", "style_encoder", "discriminator"))
    x, s, z, y = torch.randn(2, 3, 32, 32), torch.randn(2, 16), torch.randn(2, 8), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"Generator: x must be an image batch \(N, 3, 32, 32\), got \(2, 3, 64, 64\)"):
        G(torch.randn(2, 3, 64, 64), s)
    with pytest.raises(ValueError, match=r"Generator: s must be a style code batch \(N, style_dim\) = \(2, 16\)"):
        G(x, torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"masks are only used with w_hpf > 0"):
        G(x, s, masks=heatmaps(2, 32))
    with pytest.raises(ValueError, match=r"MappingNetwork: y must be in \[0, 3\) \(num_domains=3\), got values in "
                                         r"\[0, 3\]"):
        M(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"StyleEncoder: y must be in \[0, 3\).*\[-1, 0\]"):
        E(x, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="y must be an integer tensor"):
        M(z, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        M(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"z must be \(N, latent_dim\) = \(N, 8\)"):
        M(torch.randn(2, 16), y)
    with pytest.raises(ValueError, match=r"StyleEncoder: x must be an image batch \(N, 3, 32, 32\)"):
        E(torch.randn(2, 1, 32, 32), y)
    with pytest.raises(ValueError, match=r"discriminator_loss: y_org must be in \[0, 3\)"):
        discriminator_loss(nets, cfg, x, torch.tensor([5, 0]), y, z_trg=z)
    with pytest.raises(ValueError, match="exactly one of z_trg .* and x_ref .*got both"):
        discriminator_loss(nets, cfg, x, y, y, z_trg=z, x_ref=x)
    with pytest.raises(ValueError, match="exactly one of z_trgs .* and x_refs .*got neither"):
        generator_loss(nets, cfg, x, y, y)
    with pytest.raises(ValueError, match="z_trgs must be a pair"):
        generator_loss(nets, cfg, x, y, y, z_trgs=z)
    with pytest.raises(ValueError, match=r"nets has no \['discriminator'\]"):
        generator_loss({k: nets[k] for k in ("generator", "mapping_network", "style_encoder")}, cfg, x, y, y,
                       z_trgs=(z, z))
    G1 = build_model(StarGANv2Config(**{**SMALL, "w_hpf": 1.0}))[0]["generator"]
    with pytest.raises(ValueError, match=r"masks\[1\] must be \(2, 1, h, w\), got \(2, 3, 32, 32\)"):
        G1(x, s, masks=(torch.rand(2, 1, 32, 32), torch.rand(2, 3, 32, 32)))
    with pytest.raises(ValueError, match="masks must be a pair"):
        G1(x, s, masks=torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="Generator: img_size must be a power of two"):
        Generator(img_size=100)
    with pytest.raises(ValueError, match="impl must be one of"):
        StyleEncoder(impl="numpy")
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
        MappingNetwork(hidden_dim=0)


def test_moving_average():
    a, b = nn.Linear(3, 4), nn.Linear(3, 4)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    moving_average(a, b, beta=0.9)
    assert torch.allclose(b.weight, 0.9 * wb + 0.1 * wa, atol=1e-7)
    assert torch.equal(a.weight, wa)  # the trained model is untouched
    moving_average(a, b, beta=1.0)
    assert torch.allclose(b.weight, 0.9 * wb + 0.1 * wa, atol=1e-7)
    moving_average(a, b, beta=0.0)
    assert torch.equal(b.weight, wa)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        moving_average(a, b, beta=1.5)
    with pytest.raises(ValueError, match="different parameters"):
        moving_average(a, nn.Linear(3, 4, bias=False))
    with pytest.raises(ValueError, match="shape/dtype differs"):
        moving_average(a, nn.Linear(3, 5))


@pytest.mark.parametrize("impl", ["fastgan", "torch"])
def test_bf16_autocast_losses_run(impl):
    cfg = StarGANv2Config(**{**SMALL, "dim_in": 4, "max_conv_dim": 16}, impl=impl)
    nets, _ = build_model(cfg)
    b = batch(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d, td = discriminator_loss(nets, cfg, b["x"], b["y_org"], b["y_trg"], z_trg=b["z"])
        g, tg = generator_loss(nets, cfg, b["x"], b["y_org"], b["y_trg"], x_refs=(b["ref"], b["ref2"]))
    (d + g).backward()
    assert all(math.isfinite(v) for v in {**td, **tg}.values())
    assert all(torch.isfinite(p.grad).all() for p in nets.parameters() if p.grad is not None)


def test_benchmark_suite_runs_one_iteration_per_build():
    from fastgan.bench import stargan_v2_suite as ss
    from fastgan.bench.suites import SuiteOptions, all_suites, build_cases

    assert "stargan_v2" in all_suites()
    (case,) = build_cases(["stargan_v2"], SuiteOptions(device="cpu", preset="quick", compile=False))
    assert set(case.fns) == {"eager", "fastgan-auto"} and case.mode == "train" and case.bytes_floor == 0
    cuda = build_cases(["stargan_v2"], SuiteOptions(device="cuda", preset="default"))  # lazy: no GPU needed to list
    assert [c.shape for c in cuda] == [(8, 3, 256, 256)] * 2 and {c.dtype for c in cuda} == {torch.float32,
                                                                                              torch.bfloat16}
    assert all(t.kind == "min_speedup" and t.value == 1.5 for c in cuda for t in c.targets)
    assert all(set(c.fns) == {"eager", "fastgan-auto", "fastgan-cl"} for c in cuda)
    inputs = case.make_inputs(0)
    eager, ours = case.fns["eager"](*inputs), case.fns["fastgan-auto"](*inputs)
    assert eager.shape == (4,) and torch.isfinite(eager).all()
    assert torch.allclose(ours, eager, rtol=1e-4, atol=1e-5)  # same weights, same inputs: same four losses
    # The channels-last trainer the CUDA cases add, built here from the same pair's initial weights.
    pair = ss._Pair(dict(ss.CPU_SMALL[0]), "cpu")
    losses = [pair.get(impl).iteration(torch.float32, *inputs) for impl in ("fastgan", "fastgan-cl")]
    assert pair.get("fastgan-cl").nets["discriminator"].main[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(losses[1], losses[0], rtol=1e-4, atol=1e-5)


def test_mapping_network_and_style_encoder_compile_with_fullgraph():
    # check_labels read the label range back to the host (int(aminmax)), which torch.compile(fullgraph=True) cannot
    # trace: compiling either network failed with a data-dependent guard error. Traced, the range is an async assert
    # (a negative label would otherwise select the last domain silently). backend="eager": Dynamo's tracing is what
    # failed, and it keeps the test fast.
    torch._dynamo.reset()
    M = MappingNetwork(latent_dim=4, style_dim=3, num_domains=2, hidden_dim=8)
    E = StyleEncoder(img_size=8, style_dim=3, num_domains=2, max_conv_dim=8, dim_in=4)
    z, x, y = torch.randn(2, 4), torch.randn(2, 3, 8, 8), torch.tensor([1, 0])
    for net, inp in ((M, z), (E, x)):
        compiled = torch.compile(net, fullgraph=True, backend="eager")
        inp = inp.requires_grad_()
        out = compiled(inp, y)
        torch.testing.assert_close(out, net(inp, y))
        (g,) = torch.autograd.grad(out.square().sum(), inp)
        torch.testing.assert_close(g, torch.autograd.grad(net(inp, y).square().sum(), inp)[0])
        with pytest.raises(RuntimeError, match=r"y must be in \[0, 2\)"):
            compiled(inp, torch.tensor([1, -1]))
