"""StarGAN v2 building blocks, parameterised by the layers they normalise and activate with.

Every block takes a :class:`Layers` — three factory functions, ``norm(C)``, ``adain(style_dim, C)`` and
``act(kind)`` — so one definition gives both builds of :mod:`fastgan.models.stargan_v2`:

* ``impl="fastgan"`` (:data:`FASTGAN_LAYERS`): ``fastgan.nn.InstanceNorm2d``, ``fastgan.nn.AdaIN`` (normalisation
  and the ``(1 + gamma) * . + beta`` modulation in one fused kernel) and activations on ``fastgan.ops.bias_act``
  (fused kernels for the first and second derivative, which R1's double backward through the discriminator runs
  on).
* ``impl="torch"`` (:data:`TORCH_LAYERS`): the official ``torch.nn`` formulation — ``nn.InstanceNorm2d``,
  :class:`TorchAdaIN` (``nn.InstanceNorm2d`` + ``Linear``, the official AdaIN), ``nn.LeakyReLU`` / ``nn.ReLU``.

The factories create modules with identical ``state_dict`` keys (the activations have no parameters; both norms are
``weight``/``bias``; both AdaINs are ``fc.weight``/``fc.bias``), so the two builds load each other's weights.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import AdaIN, InstanceNorm2d
from ..ops.bias_act import bias_act
from . import critics

__all__ = [
    "FASTGAN_LAYERS", "IMPLS", "TORCH_LAYERS", "AdainResBlk", "HighPass", "Layers", "ReLU", "ResBlk", "TorchAdaIN",
    "get_layers",
]

IMPLS = ("fastgan", "torch")
LRELU_SLOPE = 0.2  # every LeakyReLU of StarGAN v2


class ReLU(nn.Module):
    """``F.relu`` on fastgan's fused ``bias_act`` (no parameters, so ``state_dict`` keys are unaffected)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.numel() == 0:  # bias_act refuses these (its bias dim, empty input); no kernel needed
            return F.relu(x)
        # gain=1: the plain activation (bias_act's default; StyleGAN's layers pass sqrt(2)).
        return bias_act(x, None, "relu", gain=1.0)


class TorchAdaIN(nn.Module):
    """The official StarGAN v2 AdaIN in plain ``torch.nn``: ``(1 + gamma) * InstanceNorm2d(x) + beta``.

    ``gamma, beta = fc(s).chunk(2)`` with ``fc = Linear(style_dim, 2 * num_features)``; keys ``fc.weight``,
    ``fc.bias`` (the ``InstanceNorm2d(affine=False)`` holds no state), the same as ``fastgan.nn.AdaIN``.

    Shapes: x ``(N, num_features, H, W)``, s ``(N, style_dim)``; output like x.
    """

    def __init__(self, style_dim: int, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.style_dim, self.num_features = style_dim, num_features
        self.norm = nn.InstanceNorm2d(num_features, affine=False, eps=eps)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.fc(s)
        gamma, beta = h.view(h.size(0), h.size(1), 1, 1).chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


@dataclasses.dataclass(frozen=True)
class Layers:
    """The layer factories a build uses.

    Attributes:
        impl: ``"fastgan"`` or ``"torch"``.
        norm: ``C -> module``: instance norm with a per-channel affine (keys ``weight``, ``bias``).
        adain: ``(style_dim, C) -> module`` called as ``m(x, s)`` (keys ``fc.weight``, ``fc.bias``).
        act: ``kind -> module`` for ``kind`` ``"lrelu"`` (slope 0.2) or ``"relu"``; no parameters.
    """

    impl: str
    norm: Callable[[int], nn.Module]
    adain: Callable[[int, int], nn.Module]
    act: Callable[[str], nn.Module]


def _fastgan_act(kind: str) -> nn.Module:
    return critics.LeakyReLU(LRELU_SLOPE) if kind == "lrelu" else ReLU()


def _torch_act(kind: str) -> nn.Module:
    return nn.LeakyReLU(LRELU_SLOPE) if kind == "lrelu" else nn.ReLU()


FASTGAN_LAYERS = Layers("fastgan", lambda c: InstanceNorm2d(c, affine=True), AdaIN, _fastgan_act)
TORCH_LAYERS = Layers("torch", lambda c: nn.InstanceNorm2d(c, affine=True), TorchAdaIN, _torch_act)


def get_layers(impl: str | Layers) -> Layers:
    """The :class:`Layers` of ``impl`` (``"fastgan"`` or ``"torch"``; a ``Layers`` is returned as is)."""
    if isinstance(impl, Layers):
        return impl
    if impl == "fastgan":
        return FASTGAN_LAYERS
    if impl == "torch":
        return TORCH_LAYERS
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def use_layers(module: nn.Module, layers: Layers) -> nn.Module:
    """Replace, in place, every fastgan LeakyReLU of ``module`` by ``layers.act("lrelu")``; returns ``module``.

    For modules built elsewhere with fastgan's activation hard-wired (``critics.StarGANv2Discriminator``), so the
    torch build runs ``nn.LeakyReLU`` there too. Parameters and ``state_dict`` keys are unchanged.
    """
    if layers.impl == "fastgan":
        return module
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, critics.LeakyReLU):
                setattr(parent, name, layers.act("lrelu"))
    return module


class ResBlk(critics.ResBlk):
    """:class:`fastgan.models.critics.ResBlk` (StarGAN v2's pre-activation residual block) with the norms and the
    activation from ``layers``: ``(shortcut(x) + residual(x)) / sqrt(2)``.

    residual: [norm1] -> LeakyReLU(0.2) -> conv1 3x3 -> [avg-pool 2] -> [norm2] -> LeakyReLU(0.2) -> conv2 3x3;
    shortcut: [conv1x1, no bias, when dim_in != dim_out] -> [avg-pool 2]. Keys as the official ``ResBlk``.

    Args:
        dim_in, dim_out: channels in and out.
        normalize: instance norms ``norm1``/``norm2`` (the generator's encoder) or none (style encoder, critic).
        downsample: halve the resolution with 2x2 average pooling.
        layers: the factories (:func:`get_layers`), or an impl name.
    """

    def __init__(self, dim_in: int, dim_out: int, normalize: bool = False, downsample: bool = False,
                 layers: Layers | str = FASTGAN_LAYERS):
        super().__init__(dim_in, dim_out, normalize=normalize, downsample=downsample)
        layers = get_layers(layers)
        if normalize:  # replaces the parent's modules under the same names
            self.norm1, self.norm2 = layers.norm(dim_in), layers.norm(dim_in)
        self.act = layers.act("lrelu")


class AdainResBlk(nn.Module):
    """StarGAN v2's decoder block: AdaIN-modulated pre-activation residual block with optional 2x upsampling.

    residual: norm1 = AdaIN(x, s) -> LeakyReLU(0.2) -> [nearest 2x upsample] -> conv1 3x3 (dim_in -> dim_out) ->
    norm2 = AdaIN(., s) -> LeakyReLU(0.2) -> conv2 3x3. With ``w_hpf == 0`` the output is
    ``(residual + shortcut) / sqrt(2)``, shortcut = [nearest upsample] -> [conv1x1 when dim_in != dim_out]; with
    ``w_hpf > 0`` it is the residual alone (the generator adds high-pass encoder features instead), and
    ``conv1x1``, still created so official checkpoints load, is unused — as in the official model.

    Args:
        dim_in, dim_out: channels in and out.
        style_dim: style code length.
        w_hpf: the high-pass weight of the generator (only ``> 0`` matters here).
        upsample: double the resolution (nearest).
        layers: the factories (:func:`get_layers`), or an impl name.

    Shapes: x ``(N, dim_in, H, W)``, s ``(N, style_dim)`` -> ``(N, dim_out, H', W')``, H' = 2H when upsampling.
    """

    def __init__(self, dim_in: int, dim_out: int, style_dim: int = 64, w_hpf: float = 0.0, upsample: bool = False,
                 layers: Layers | str = FASTGAN_LAYERS):
        super().__init__()
        layers = get_layers(layers)
        self.w_hpf, self.upsample, self.learned_sc = w_hpf, upsample, dim_in != dim_out
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = layers.adain(style_dim, dim_in)
        self.norm2 = layers.adain(style_dim, dim_out)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)
        self.act = layers.act("lrelu")

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.learned_sc:
            x = self.conv1x1(x)
        return x

    def _residual(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(x, s))
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.act(self.norm2(self.conv1(x), s))
        return self.conv2(x)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out = self._residual(x, s)
        if self.w_hpf == 0:
            out = (out + self._shortcut(x)) / math.sqrt(2)
        return out


class HighPass(nn.Module):
    """Depthwise 3x3 Laplacian high-pass ``[[-1,-1,-1],[-1,8,-1],[-1,-1,-1]] / w_hpf`` (zero padding).

    The filter is a non-persistent buffer: it follows ``.to()`` but is not in the ``state_dict``, like the official
    model's plain attribute. Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, w_hpf: float):
        super().__init__()
        if not w_hpf > 0:
            raise ValueError(f"HighPass: w_hpf must be > 0, got {w_hpf!r}")
        self.w_hpf = w_hpf
        k = torch.full((3, 3), -1.0)
        k[1, 1] = 8.0
        self.register_buffer("filter", k / w_hpf, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight = self.filter.to(x.dtype).expand(c, 1, 3, 3).contiguous()  # tiny; some conv backends want it dense
        return F.conv2d(x, weight, padding=1, groups=c)

    def extra_repr(self) -> str:
        return f"w_hpf={self.w_hpf}"
