"""A small StarGAN v2 reference for tests/test_stargan_v2_model.py, in plain torch.nn.

Written from the paper's description (Choi et al. 2020: the architecture tables of the appendix, the training
objectives of section 3) with the official module names, so its ``state_dict`` is laid out as an official
checkpoint. Deliberately direct (functional LeakyReLU, ``F.instance_norm``, the losses as formulas) and independent of
fastgan's code. The one place the official code departs from the paper's table, the 3x3 ``from_rgb`` stem, follows
the official code (its checkpoints hold 3x3 weights).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

def lrelu(x):
    return F.leaky_relu(x, 0.2)


class RefResBlk(nn.Module):
    def __init__(self, din, dout, normalize=False, downsample=False):
        super().__init__()
        self.normalize, self.downsample, self.learned_sc = normalize, downsample, din != dout
        self.conv1, self.conv2 = nn.Conv2d(din, din, 3, 1, 1), nn.Conv2d(din, dout, 3, 1, 1)
        if normalize:
            self.norm1, self.norm2 = nn.InstanceNorm2d(din, affine=True), nn.InstanceNorm2d(din, affine=True)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(din, dout, 1, 1, 0, bias=False)

    def forward(self, x):
        pool = (lambda t: F.avg_pool2d(t, 2)) if self.downsample else (lambda t: t)
        skip = pool(self.conv1x1(x) if self.learned_sc else x)
        h = pool(self.conv1(lrelu(self.norm1(x) if self.normalize else x)))
        h = self.conv2(lrelu(self.norm2(h) if self.normalize else h))
        return (skip + h) / math.sqrt(2)


class RefAdaIN(nn.Module):
    def __init__(self, style_dim, c):
        super().__init__()
        self.fc = nn.Linear(style_dim, 2 * c)

    def forward(self, x, s):
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, 1)
        return (1 + gamma) * F.instance_norm(x) + beta


class RefAdainResBlk(nn.Module):
    def __init__(self, din, dout, style_dim, w_hpf, upsample=False):
        super().__init__()
        self.w_hpf, self.upsample, self.learned_sc = w_hpf, upsample, din != dout
        self.conv1, self.conv2 = nn.Conv2d(din, dout, 3, 1, 1), nn.Conv2d(dout, dout, 3, 1, 1)
        self.norm1, self.norm2 = RefAdaIN(style_dim, din), RefAdaIN(style_dim, dout)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(din, dout, 1, 1, 0, bias=False)

    def forward(self, x, s):
        up = (lambda t: F.interpolate(t, scale_factor=2, mode="nearest")) if self.upsample else (lambda t: t)
        h = self.conv2(lrelu(self.norm2(self.conv1(up(lrelu(self.norm1(x, s)))), s)))
        if self.w_hpf > 0:
            return h
        skip = up(x)
        return (h + (self.conv1x1(skip) if self.learned_sc else skip)) / math.sqrt(2)


class RefGenerator(nn.Module):
    def __init__(self, img_size, style_dim, max_conv_dim, w_hpf, dim_in):
        super().__init__()
        self.w_hpf = w_hpf
        self.from_rgb = nn.Conv2d(3, dim_in, 3, 1, 1)
        self.encode, self.decode = nn.ModuleList(), nn.ModuleList()
        self.to_rgb = nn.Sequential(nn.InstanceNorm2d(dim_in, affine=True), nn.LeakyReLU(0.2), nn.Conv2d(dim_in, 3, 1))
        d = dim_in
        for _ in range(int(math.log2(img_size)) - 4 + (w_hpf > 0)):
            d2 = min(2 * d, max_conv_dim)
            self.encode.append(RefResBlk(d, d2, normalize=True, downsample=True))
            self.decode.insert(0, RefAdainResBlk(d2, d, style_dim, w_hpf, upsample=True))
            d = d2
        for _ in range(2):
            self.encode.append(RefResBlk(d, d, normalize=True))
            self.decode.insert(0, RefAdainResBlk(d, d, style_dim, w_hpf))

    def forward(self, x, s, masks=None):
        x, cache = self.from_rgb(x), {}
        for blk in self.encode:
            if masks is not None and x.shape[2] in (32, 64, 128):
                cache[x.shape[2]] = x
            x = blk(x)
        lap = torch.tensor([[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=x.dtype) / max(self.w_hpf, 1e-12)
        for blk in self.decode:
            x = blk(x, s)
            if masks is not None and x.shape[2] in (32, 64, 128):
                m = F.interpolate(masks[0] if x.shape[2] == 32 else masks[1], size=x.shape[2], mode="bilinear")
                c = x.shape[1]
                x = x + F.conv2d(m * cache[x.shape[2]], lap.expand(c, 1, 3, 3), padding=1, groups=c)
        return self.to_rgb(x)


class RefMapping(nn.Module):
    def __init__(self, latent_dim, style_dim, num_domains, hidden):
        super().__init__()
        dims = [latent_dim] + [hidden] * 4
        self.shared = nn.Sequential(*[m for i in range(4) for m in (nn.Linear(dims[i], hidden), nn.ReLU())])
        self.unshared = nn.ModuleList(nn.Sequential(
            *[m for _ in range(3) for m in (nn.Linear(hidden, hidden), nn.ReLU())], nn.Linear(hidden, style_dim))
            for _ in range(num_domains))

    def forward(self, z, y):
        h = self.shared(z)
        return torch.stack([u(h) for u in self.unshared], 1)[torch.arange(len(y)), y]


def ref_trunk(img_size, dim_in, max_conv_dim):
    blocks, d = [nn.Conv2d(3, dim_in, 3, 1, 1)], dim_in
    for _ in range(int(math.log2(img_size)) - 2):
        blocks.append(RefResBlk(d, min(2 * d, max_conv_dim), downsample=True))
        d = min(2 * d, max_conv_dim)
    return blocks + [nn.LeakyReLU(0.2), nn.Conv2d(d, d, 4, 1, 0), nn.LeakyReLU(0.2)], d


class RefStyleEncoder(nn.Module):
    def __init__(self, img_size, style_dim, num_domains, max_conv_dim, dim_in):
        super().__init__()
        blocks, d = ref_trunk(img_size, dim_in, max_conv_dim)
        self.shared = nn.Sequential(*blocks)
        self.unshared = nn.ModuleList(nn.Linear(d, style_dim) for _ in range(num_domains))

    def forward(self, x, y):
        h = self.shared(x).flatten(1)
        return torch.stack([u(h) for u in self.unshared], 1)[torch.arange(len(y)), y]


class RefDiscriminator(nn.Module):
    def __init__(self, img_size, num_domains, max_conv_dim, dim_in):
        super().__init__()
        blocks, d = ref_trunk(img_size, dim_in, max_conv_dim)
        self.main = nn.Sequential(*blocks, nn.Conv2d(d, num_domains, 1, 1, 0))

    def forward(self, x, y):
        return self.main(x).flatten(1)[torch.arange(len(y)), y]


def ref_nets(cfg):
    d = cfg.resolved_dim_in
    return {
        "generator": RefGenerator(cfg.img_size, cfg.style_dim, cfg.max_conv_dim, cfg.w_hpf, d),
        "mapping_network": RefMapping(cfg.latent_dim, cfg.style_dim, cfg.num_domains, cfg.hidden_dim),
        "style_encoder": RefStyleEncoder(cfg.img_size, cfg.style_dim, cfg.num_domains, cfg.max_conv_dim, d),
        "discriminator": RefDiscriminator(cfg.img_size, cfg.num_domains, cfg.max_conv_dim, d),
    }


def ref_d_loss(nets, cfg, x, y_org, y_trg, z=None, x_ref=None, masks=None):
    """The paper's discriminator objective: BCE on real/fake + lambda_reg * 0.5 E||grad D(x)||^2 (R1)."""
    x = x.detach().requires_grad_()
    out = nets["discriminator"](x, y_org)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    r1 = 0.5 * g.pow(2).flatten(1).sum(1).mean()
    with torch.no_grad():
        s = nets["mapping_network"](z, y_trg) if z is not None else nets["style_encoder"](x_ref, y_trg)
        fake = nets["generator"](x, s, masks)
    out_f = nets["discriminator"](fake, y_trg)
    real = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
    return real + F.binary_cross_entropy_with_logits(out_f, torch.zeros_like(out_f)) + cfg.lambda_reg * r1


def ref_g_loss(nets, cfg, x, y_org, y_trg, zs=None, refs=None, masks=None):
    G, M, E, D = (nets[k] for k in ("generator", "mapping_network", "style_encoder", "discriminator"))
    style = (lambda v: M(v, y_trg)) if zs is not None else (lambda v: E(v, y_trg))
    a, b = zs if zs is not None else refs
    s = style(a)
    fake = G(x, s, masks)
    out = D(fake, y_trg)
    adv = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
    sty = (E(fake, y_trg) - s).abs().mean()
    ds = (fake - G(x, style(b), masks).detach()).abs().mean()
    cyc = (G(fake, E(x, y_org), masks) - x).abs().mean()
    return adv + cfg.lambda_sty * sty - cfg.lambda_ds * ds + cfg.lambda_cyc * cyc


def official_state(cfg, prefix="module."):
    """Reference nets (random init, norm affines perturbed so they matter) and their official-style checkpoint dict,
    keys with DataParallel's ``module.`` prefix."""
    ref = nn.ModuleDict(ref_nets(cfg))
    with torch.no_grad():
        for k, p in ref.named_parameters():
            if ".norm" in k and p.dim() == 1 or "to_rgb.0" in k:
                p.add_(0.1 * torch.randn_like(p))
    return ref, {name: {prefix + k: v.clone() for k, v in net.state_dict().items()} for name, net in ref.items()}
