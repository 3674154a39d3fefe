"""A DDPM-style UNet (Ho et al.; Nichol & Dhariwal's ADM refinements) for :mod:`fastgan.diffusion`.

Structure: sinusoidal timestep embedding -> MLP; an encoder of residual blocks per resolution level (optionally
followed by self-attention) with strided-conv downsampling; a middle ResBlock-Attention-ResBlock; a decoder that
concatenates the encoder's skip activations, with nearest-neighbour upsampling; GroupNorm + SiLU + conv out.

Residual blocks condition on the time (+ class) embedding by scale-shift ("AdaGN"): ``h = norm(h) * (1 + scale)
+ shift``. Every normalisation is :class:`fastgan.nn.GroupNorm` (a ``torch.nn.GroupNorm`` subclass: same
parameters and state_dict keys) on fastgan's fused group-norm kernel: the SiLU that follows a norm and the
scale-shift are applied in the norm's output pass, not as separate element passes. Attention uses
``F.scaled_dot_product_attention``. The convolutions that end a residual branch and the output convolution are
zero-initialised, so an untrained model outputs zeros and each block starts as the identity.

Class conditioning (``num_classes=K``) learns ``K + 1`` class embeddings: index ``K`` is the null class for
classifier-free guidance (``y=None`` means "all null"), so :class:`~fastgan.diffusion.DDPMSampler` runs CFG with
``cond=y, null_cond=torch.full_like(y, K)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.group_norm import GroupNorm

__all__ = ["UNet", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]``, ``f_i = max_period^(-i / (dim/2))``.

    Args:
        t: ``(N,)`` timesteps (integer or float).
        dim: embedding width (an odd width gets a zero last column).
    Returns:
        ``(N, dim)`` float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _groups(channels: int, max_groups: int) -> int:
    # The largest group count <= max_groups dividing the channels, so odd widths (12, 36, 48...) still normalise.
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, then AdaGN(emb)-SiLU-dropout-conv (zero-init), plus a (1x1 conv) skip.

    Args:
        in_ch, out_ch: channels in and out.
        emb_dim: width of the time/class embedding.
        dropout: dropout probability before the second conv.
        max_groups: GroupNorm groups (at most).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, max_groups: int):
        super().__init__()
        self.norm1 = GroupNorm(_groups(in_ch, max_groups), in_ch, act="silu")
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = GroupNorm(_groups(out_ch, max_groups), out_ch, act="silu")
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x (N, in_ch, H, W)``, ``emb (N, emb_dim)`` (already SiLU-activated) -> ``(N, out_ch, H, W)``."""
        h = self.conv1(self.norm1(x))
        scale, shift = self.emb(emb).chunk(2, dim=1)  # (N, out_ch) each
        h = self.norm2(h, scale=scale, shift=shift)  # silu(norm(h) (1 + scale) + shift), one pass
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions (GroupNorm, 1x1 qkv, SDPA, zero-init 1x1 proj)."""

    def __init__(self, ch: int, num_heads: int, max_groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm(_groups(ch, max_groups), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, hgt * wid)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (N, heads, HW, head_dim)
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(n, c, hgt, wid))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM UNet: ``forward(x, t, y=None) -> (N, out_channels, H, W)``.

    Args:
        in_channels: image channels in.
        out_channels: channels out (default ``in_channels``: eps/x0/v prediction).
        base_channels: width of the first level; level ``i`` has ``base_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level; ``len - 1`` downsamplings by 2.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions (feature-map side lengths, e.g. 16) that get self-attention after each
            residual block; the middle block always has attention.
        num_classes: class-conditional with a learned null class at index ``num_classes`` (None: unconditional).
        dropout: dropout in the residual blocks.
        num_heads: attention heads; must divide every attended level's width.
        img_size: the training image side; must be divisible by ``2 ** (len(channel_mult) - 1)``.
        norm_groups: GroupNorm groups (at most; the largest divisor of the width not above it is used).

    Raises:
        ValueError: inconsistent configuration (the message names the argument).
    """

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), num_classes: int | None = None, dropout: float = 0.0,
                 num_heads: int = 4, img_size: int = 32, norm_groups: int = 32):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        out_channels = in_channels if out_channels is None else out_channels
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("base_channels", base_channels), ("num_res_blocks", num_res_blocks),
                            ("num_heads", num_heads), ("img_size", img_size), ("norm_groups", norm_groups)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"fastgan: UNet {name} must be a positive int, got {value!r}")
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"fastgan: UNet channel_mult must be non-empty positive ints, got {channel_mult}")
        factor = 2 ** (len(channel_mult) - 1)
        if img_size % factor:
            raise ValueError(f"fastgan: UNet img_size {img_size} must be divisible by 2**(len(channel_mult) - 1) "
                             f"= {factor} ({len(channel_mult)} levels)")
        sizes = [img_size // 2**i for i in range(len(channel_mult))]
        unknown = [r for r in attn_resolutions if r not in sizes]
        if unknown:
            raise ValueError(f"fastgan: UNet attn_resolutions {unknown} are not among the levels' sizes {sizes}")
        widths = [base_channels * m for m in channel_mult]
        attended = [w for w, s in zip(widths, sizes) if s in attn_resolutions] + [widths[-1]]
        bad = [w for w in attended if w % num_heads]
        if bad:
            raise ValueError(f"fastgan: UNet num_heads {num_heads} must divide the attended widths {sorted(set(bad))}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"fastgan: UNet num_classes must be a positive int or None, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"fastgan: UNet dropout must be in [0, 1), got {dropout}")
        self.config = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                           channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
                           attn_resolutions=list(attn_resolutions), num_classes=num_classes, dropout=dropout,
                           num_heads=num_heads, img_size=img_size, norm_groups=norm_groups)
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        self.factor = factor
        emb_dim = 4 * base_channels

        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        block = lambda i, o: ResBlock(i, o, emb_dim, dropout, norm_groups)  # noqa: E731
        attn = lambda c: AttnBlock(c, num_heads, norm_groups)  # noqa: E731
        self.down = nn.ModuleList()
        skips, ch = [base_channels], base_channels
        for level, (width, size) in enumerate(zip(widths, sizes)):
            for _ in range(num_res_blocks):
                layers = [block(ch, width)] + ([attn(width)] if size in attn_resolutions else [])
                self.down.append(nn.ModuleList(layers))
                ch = width
                skips.append(ch)
            if level + 1 < len(widths):
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        self.mid = nn.ModuleList([block(ch, ch), attn(ch), block(ch, ch)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width, size = widths[level], sizes[level]
            for i in range(num_res_blocks + 1):
                layers = [block(ch + skips.pop(), width)] + ([attn(width)] if size in attn_resolutions else [])
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(width))
                self.up.append(nn.ModuleList(layers))
                ch = width
        self.norm_out = GroupNorm(_groups(ch, norm_groups), ch, act="silu")
        self.conv_out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    def _check(self, x, t, y):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"fastgan: UNet expects x of shape (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"fastgan: UNet input side lengths {tuple(x.shape[2:])} must be divisible by "
                             f"{self.factor}")
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dtype == torch.bool or t.dim() > 1 or t.numel() not in (1, n):
            raise ValueError(f"fastgan: UNet t must be an (N,) = ({n},) tensor of timesteps (or a scalar), got "
                             f"shape {tuple(t.shape)} {t.dtype}")
        t = t.reshape(-1).expand(n)
        if y is None:
            return t, None
        if self.num_classes is None:
            raise ValueError("fastgan: this UNet is unconditional (num_classes=None) but got class labels y")
        y = torch.as_tensor(y, device=x.device)
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (n,):
            raise ValueError(f"fastgan: UNet y must be an (N,) = ({n},) integer tensor, got {tuple(y.shape)} "
                             f"{y.dtype}")
        if y.device.type == "cpu" and not torch.compiler.is_compiling():  # traced: the async assert (no break)
            if y.numel() and not bool(((y >= 0) & (y <= self.num_classes)).all()):
                raise ValueError(f"fastgan: UNet class labels must be in [0, {self.num_classes}] "
                                 f"({self.num_classes} = null class), got {y.min().item()}..{y.max().item()}")
        else:  # no host sync on accelerators (nor a graph break when traced): an asynchronous assert
            torch._assert_async(((y >= 0) & (y <= self.num_classes)).all(), "fastgan: UNet class label out of range")
        return t, y.long()  # nn.Embedding takes int64/int32 indices only

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict eps (or x0/v, whatever it was trained for).

        Args:
            x: ``(N, in_channels, H, W)`` noisy images, H and W divisible by ``2 ** (levels - 1)``.
            t: ``(N,)`` int64 timesteps (a scalar is broadcast).
            y: ``(N,)`` int64 class labels in ``[0, num_classes]`` (``num_classes`` = null class); None on a
                class-conditional model means unconditional (every label null).
        Returns:
            ``(N, out_channels, H, W)`` in x's dtype.
        """
        t, y = self._check(x, t, y)
        emb = self.time_mlp(timestep_embedding(t, self.conv_in.out_channels).to(x.dtype))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.int64, device=x.device)
            emb = emb + self.class_emb(y)
        emb = F.silu(emb)  # shared by every block's scale-shift projection
        h = self.conv_in(x)
        hs = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layers in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in layers:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return self.conv_out(self.norm_out(h))
