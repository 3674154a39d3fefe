"""Critics (discriminators) built on fastgan's modules, for training with gradient penalties.

* :class:`DCGANCritic`: the DCGAN discriminator as WGAN-GP trains it — stride-2 4x4 convolutions, each followed by
  a normalisation (fastgan's fused ``InstanceNorm2d`` by default; none or layer norm, the variants Gulrajani et al.
  recommend because batch norm breaks the per-sample gradient penalty) and LeakyReLU(0.2), then a 4x4 convolution
  to one logit per sample.
* :class:`StarGANv2Discriminator`: StarGAN v2's multi-task discriminator (Choi et al. 2020) — a 3x3 stem
  convolution, pre-activation residual blocks (:class:`ResBlk`) halving the resolution with average pooling, no
  normalisation, and a head with one output per domain; ``forward(x, y)`` returns each sample's output for its
  domain ``y``. The ``state_dict`` layout (``main.0.weight``, ``main.1.conv1.weight``, ...,
  ``main.{k}.conv1x1.weight``) is the one of the usual implementation, so its checkpoints load as they are.

The LeakyReLUs run on fastgan's fused ``bias_act`` (kernels for its first and second derivative); folding the
preceding conv bias into it is a later step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import GroupNorm, InstanceNorm2d
from ..ops.bias_act import bias_act

__all__ = ["DCGANCritic", "ResBlk", "StarGANv2Discriminator"]

NORMS = ("instance", "none", "layer")


def _log2_size(size: int, name: str, cls: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size & (size - 1):
        raise ValueError(f"{cls}: {name} must be a power of two >= 8, got {size!r}")
    return int(math.log2(size))


def _make_norm(norm: str, channels: int) -> nn.Module:
    if norm == "instance":
        return InstanceNorm2d(channels, affine=True)
    if norm == "layer":
        # Layer norm over (C, H, W) of each sample, with a per-channel affine (GroupNorm with a single group):
        # fastgan's drop-in, whose double backward is a fused kernel too (torch.nn.GroupNorm's state_dict keys).
        return GroupNorm(1, channels, affine=True)
    return nn.Identity()


class LeakyReLU(nn.Module):
    """``F.leaky_relu(x, negative_slope)`` on fastgan's ``bias_act`` (no parameters: ``state_dict`` keys unaffected)."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fastgan's fused activation: its backward and double backward are kernels too, which a gradient
        # penalty through the critic needs. (Folding the preceding conv bias into it is a later step.)
        if x.dim() < 2 or x.numel() == 0:  # bias_act refuses these (its bias dim, empty input); no kernel needed
            return F.leaky_relu(x, self.negative_slope)
        return bias_act(x, None, "lrelu", alpha=self.negative_slope, gain=1.0)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class _DownBlock(nn.Module):
    """conv 4x4 stride 2 -> norm -> LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        # Instance norm subtracts each channel's mean, so a conv bias before it would be a no-op.
        self.conv = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm != "instance")
        self.norm = _make_norm(norm, c_out)
        self.act = LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DCGANCritic(nn.Module):
    """DCGAN critic: ``log2(image_size) - 2`` stride-2 blocks down to 4x4, then a 4x4 conv to one logit.

    Block ``i`` (0-based) maps ``base * 2^(i-1)`` channels (``img_channels`` for the first) to ``base * 2^i`` with a
    4x4 stride-2 convolution, the normalisation (not on the first block, as in DCGAN) and LeakyReLU(0.2). For
    ``image_size=64, base=64``: 3 -> 64 -> 128 -> 256 -> 512 channels at 32, 16, 8, 4 pixels, then ``head``.

    Args:
        img_channels: input channels.
        base: channels of the first block; doubled at every block.
        image_size: input height = width, a power of two >= 8.
        norm: ``"instance"`` (``fastgan.nn.InstanceNorm2d(affine=True)``, fused kernels with a fused double
            backward), ``"none"``, or ``"layer"`` (``fastgan.nn.GroupNorm(1, C)``, a drop-in for ``nn.GroupNorm``:
            layer norm over C, H, W with a per-channel affine, fused kernels up to the double backward). Convolutions followed by instance norm have no bias.

    ``forward(x)`` maps ``(N, img_channels, image_size, image_size)`` to ``(N,)`` logits. Samples are independent
    (no batch statistics), as per-sample gradient penalties require.
    """

    def __init__(self, img_channels: int = 3, base: int = 64, image_size: int = 64, norm: str = "instance"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"DCGANCritic: norm must be one of {NORMS}, got {norm!r}")
        if base < 1 or img_channels < 1:
            raise ValueError(f"DCGANCritic: img_channels and base must be positive, got {img_channels}, {base}")
        n_down = _log2_size(image_size, "image_size", "DCGANCritic") - 2
        self.img_channels, self.image_size, self.norm = img_channels, image_size, norm
        blocks, c_in = [], img_channels
        for i in range(n_down):
            c_out = base * 2 ** i
            blocks.append(_DownBlock(c_in, c_out, "none" if i == 0 else norm))
            c_in = c_out
        self.main = nn.Sequential(*blocks)
        self.head = nn.Conv2d(c_in, 1, 4, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.img_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DCGANCritic: expected input (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        return self.head(self.main(x)).reshape(x.shape[0])


class ResBlk(nn.Module):
    """StarGAN v2's pre-activation residual block: ``(shortcut(x) + residual(x)) / sqrt(2)``.

    residual: [norm1] -> LeakyReLU(0.2) -> conv1 3x3 (dim_in -> dim_in) -> [avg-pool 2] -> [norm2] -> LeakyReLU(0.2)
    -> conv2 3x3 (dim_in -> dim_out). shortcut: [conv1x1 (no bias) when dim_in != dim_out] -> [avg-pool 2].
    The norms (``fastgan.nn.InstanceNorm2d(affine=True)``) exist only with ``normalize=True`` (the style encoder
    and discriminator use none).
    """

    def __init__(self, dim_in: int, dim_out: int, normalize: bool = False, downsample: bool = False):
        super().__init__()
        self.normalize, self.downsample = normalize, downsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        if normalize:
            self.norm1 = InstanceNorm2d(dim_in, affine=True)
            self.norm2 = InstanceNorm2d(dim_in, affine=True)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)
        self.act = LeakyReLU(0.2)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.learned_sc:
            x = self.conv1x1(x)
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        return x

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = self.norm1(x)
        x = self.conv1(self.act(x))
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        if self.normalize:
            x = self.norm2(x)
        return self.conv2(self.act(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._shortcut(x) + self._residual(x)) / math.sqrt(2)


class StarGANv2Discriminator(nn.Module):
    """StarGAN v2's multi-task discriminator: one real/fake output per domain, selected by the domain label.

    Layout (``main``, an ``nn.Sequential``): ``Conv2d(img_channels, dim_in, 3, 1, 1)``; ``log2(img_size) - 2``
    ``ResBlk(d, min(2d, max_conv_dim), downsample=True)`` down to 4x4; LeakyReLU(0.2);
    ``Conv2d(d, d, 4, 1, 0)`` to 1x1; LeakyReLU(0.2); ``Conv2d(d, num_domains, 1, 1, 0)``.

    Args:
        img_size: input height = width, a power of two >= 8.
        num_domains: number of domains (output branches).
        max_conv_dim: cap on the channel count.
        dim_in: channels after the stem; default ``2**14 // img_size`` as in StarGAN v2 (64 at 256x256). Smaller
            values give small test/toy models.
        img_channels: input channels (3).

    ``forward(x, y)``: ``x`` ``(N, img_channels, img_size, img_size)``, ``y`` integer domain labels ``(N,)``; returns
    ``(N,)``, sample ``n``'s output for domain ``y[n]``. ``forward(x)`` (``y=None``) returns all ``(N, num_domains)``.
    """

    def __init__(self, img_size: int = 64, num_domains: int = 2, max_conv_dim: int = 512, dim_in: int | None = None,
                 img_channels: int = 3):
        super().__init__()
        repeat_num = _log2_size(img_size, "img_size", "StarGANv2Discriminator") - 2
        if num_domains < 1:
            raise ValueError(f"StarGANv2Discriminator: num_domains must be >= 1, got {num_domains}")
        if dim_in is None:
            dim_in = 2 ** 14 // img_size
        self.img_size, self.num_domains, self.img_channels = img_size, num_domains, img_channels
        blocks: list[nn.Module] = [nn.Conv2d(img_channels, dim_in, 3, 1, 1)]
        dim_out = dim_in
        for _ in range(repeat_num):
            dim_out = min(dim_in * 2, max_conv_dim)
            blocks.append(ResBlk(dim_in, dim_out, downsample=True))
            dim_in = dim_out
        blocks += [
            LeakyReLU(0.2),
            nn.Conv2d(dim_out, dim_out, 4, 1, 0),
            LeakyReLU(0.2),
            nn.Conv2d(dim_out, num_domains, 1, 1, 0),
        ]
        self.main = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.img_channels, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"StarGANv2Discriminator: expected input (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        out = self.main(x).reshape(x.shape[0], self.num_domains)
        if y is None:
            return out
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError("StarGANv2Discriminator: y must be an integer tensor of domain labels")
        if y.shape != (x.shape[0],):
            raise ValueError(f"StarGANv2Discriminator: y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        return out.gather(1, y.to(device=out.device, dtype=torch.long).unsqueeze(1)).squeeze(1)
