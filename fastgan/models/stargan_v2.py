"""StarGAN v2 (Choi et al. 2020): generator, mapping network, style encoder, discriminator, on fastgan's ops.

Architecture and ``state_dict`` layout follow the official implementation (which differs from the paper's table in
one place: ``from_rgb`` is a 3x3 convolution there, and its checkpoints hold 3x3 weights):

* :class:`Generator` ``G(x, s, masks=None)``: ``from_rgb`` (3x3 conv) -> ``encode`` (``ResBlk(normalize=True)``:
  instance norm, 2x2 avg-pool downsampling; ``log2(img_size) - 4`` of them, one more when ``w_hpf > 0``, then two
  bottleneck blocks) -> ``decode`` (:class:`AdainResBlk`, inserted at the front as the encoder is built, so they
  mirror it; nearest 2x upsampling) -> ``to_rgb`` (InstanceNorm2d(affine) + LeakyReLU(0.2) + 1x1 conv). With
  ``masks`` (face heatmaps, ``w_hpf > 0``) high-pass filtered, masked encoder features are added after the decoder
  blocks at 32, 64 and 128 pixels, as in the official model.
* :class:`MappingNetwork` ``F(z, y)``: ``shared`` = 4 x (Linear + ReLU), hidden 512; ``unshared`` = per domain
  3 x (Linear + ReLU) + Linear to ``style_dim``; returns the head of each sample's domain.
* :class:`StyleEncoder` ``E(x, y)``: ``shared`` = 3x3 conv, ``ResBlk``\\ s down to 4x4, LeakyReLU, 4x4 conv,
  LeakyReLU; ``unshared`` = per-domain ``Linear(dim, style_dim)``.
* Discriminator: :class:`fastgan.models.critics.StarGANv2Discriminator` (``main.*``).

``impl="fastgan"`` normalises and activates with fastgan's fused ops, ``impl="torch"`` with ``torch.nn`` (the
official formulation); the blocks are shared (:mod:`fastgan.models.stargan_v2_blocks`) and the two builds have the
same ``state_dict`` keys. :func:`build_model` returns the networks and their EMA copies; the losses are in
:mod:`fastgan.models.stargan_v2_losses`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .critics import StarGANv2Discriminator
from .stargan_v2_blocks import IMPLS, AdainResBlk, HighPass, Layers, ResBlk, get_layers, use_layers

__all__ = [
    "Generator", "MappingNetwork", "StarGANv2Config", "StyleEncoder", "build_model", "check_labels", "he_init",
    "load_official_checkpoint", "moving_average",
]

NET_NAMES = ("generator", "mapping_network", "style_encoder", "discriminator")
EMA_NET_NAMES = NET_NAMES[:3]


def _pos_int(v, name: str, who: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {v!r}")
    return v


def _is_pow2(v, least: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= least and not v & (v - 1)


def _generator_repeat(img_size, w_hpf: float, who: str) -> int:
    """Number of down/up-sampling blocks of the generator: ``log2(img_size) - 4`` (+1 with ``w_hpf > 0``)."""
    repeat = int(math.log2(img_size)) - 4 + (w_hpf > 0) if _is_pow2(img_size, 1) else 0
    if repeat < 1:
        raise ValueError(f"{who}: img_size must be a power of two >= 32 (>= 16 with w_hpf > 0), got {img_size!r}")
    return repeat


def _dim_in(img_size: int, dim_in: int | None, who: str) -> int:
    return 2 ** 14 // img_size if dim_in is None else _pos_int(dim_in, "dim_in", who)


def _check_image(x, channels: int, size: int, who: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (channels, size, size):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who}: x must be an image batch (N, {channels}, {size}, {size}), got {got}")


def check_labels(y, n: int, num_domains: int, who: str, name: str = "y") -> None:
    """Raise ValueError unless ``y`` is an integer tensor of shape ``(n,)`` with values in ``[0, num_domains)``.

    The range check reads two numbers back from the device (one sync); an out-of-range label would otherwise be an
    opaque indexing error (a device-side assert on CUDA), or, negative, silently select a domain from the end. Under
    ``torch.compile`` (which cannot trace the read-back without a graph break, an error with ``fullgraph=True``) the
    range check is an asynchronous assert raising RuntimeError with the same message.
    """
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"{who}: {name} must be an integer tensor of domain labels, got "
                         f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
    if tuple(y.shape) != (n,):
        raise ValueError(f"{who}: {name} must have shape ({n},) (one label per sample), got {tuple(y.shape)}")
    if n and torch.compiler.is_compiling():
        torch._assert_async(((y >= 0) & (y < num_domains)).all(),
                            f"{who}: {name} must be in [0, {num_domains}) (num_domains={num_domains})")
    elif n:
        lo, hi = torch.aminmax(y)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= num_domains:
            raise ValueError(f"{who}: {name} must be in [0, {num_domains}) (num_domains={num_domains}), "
                             f"got values in [{lo}, {hi}]")


def _check_style(s, n: int, style_dim: int, who: str) -> None:
    if not isinstance(s, torch.Tensor) or s.dim() != 2 or tuple(s.shape) != (n, style_dim):
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"{who}: s must be a style code batch (N, style_dim) = ({n}, {style_dim}), got {got}")


@dataclasses.dataclass
class StarGANv2Config:
    """StarGAN v2 hyper-parameters (defaults: the official AFHQ setting, ``w_hpf=0``; CelebA-HQ uses ``w_hpf=1``).

    ``dim_in`` None means ``2**14 // img_size`` (64 at 256x256), as in the official model; smaller values give
    toy models. ``hidden_dim`` is the mapping network's width (512 officially). ``impl``: ``"fastgan"`` (fastgan's
    fused ops) or ``"torch"`` (the official ``torch.nn`` formulation), same weights either way. ``channels_last``:
    the networks' convolution weights in channels-last memory format, so every activation is NHWC: on a GPU cuDNN
    then runs its NHWC convolutions without converting layouts around each one, and fastgan's norms read
    channels-last as it is (torch.nn's InstanceNorm is slow on it). Same numbers up to rounding.
    """

    img_size: int = 256
    num_domains: int = 2
    latent_dim: int = 16
    style_dim: int = 64
    hidden_dim: int = 512
    max_conv_dim: int = 512
    w_hpf: float = 0.0
    img_channels: int = 3
    dim_in: int | None = None
    lambda_reg: float = 1.0
    lambda_cyc: float = 1.0
    lambda_sty: float = 1.0
    lambda_ds: float = 1.0
    ds_iter: int = 100000
    lr: float = 1e-4
    f_lr: float = 1e-6
    beta1: float = 0.0
    beta2: float = 0.99
    weight_decay: float = 1e-4
    ema_beta: float = 0.999
    impl: str = "fastgan"
    channels_last: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        who = "StarGANv2Config"
        for name in ("num_domains", "latent_dim", "style_dim", "hidden_dim", "max_conv_dim", "img_channels", "ds_iter"):
            _pos_int(getattr(self, name), name, who)
        if self.dim_in is not None:
            _pos_int(self.dim_in, "dim_in", who)
        if not self.w_hpf >= 0:
            raise ValueError(f"{who}: w_hpf must be >= 0, got {self.w_hpf!r}")
        _generator_repeat(self.img_size, self.w_hpf, who)
        if self.impl not in IMPLS:
            raise ValueError(f"{who}: impl must be one of {IMPLS}, got {self.impl!r}")
        if not 0.0 <= self.ema_beta <= 1.0:
            raise ValueError(f"{who}: ema_beta must be in [0, 1], got {self.ema_beta!r}")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"{who}: channels_last must be True or False, got {self.channels_last!r}")

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-able)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "StarGANv2Config":
        """A config from ``d``; unknown keys are ignored, missing ones take the defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def resolved_dim_in(self) -> int:
        """``dim_in``, or ``2**14 // img_size`` when it is None."""
        return _dim_in(self.img_size, self.dim_in, "StarGANv2Config")


class Generator(nn.Module):
    """StarGAN v2 generator ``G(x, s, masks=None)``; see the module docstring for the layout.

    Args:
        img_size: input height = width, a power of two >= 32 (>= 16 with ``w_hpf > 0``).
        style_dim: style code length.
        max_conv_dim: channel cap (channels double at each downsampling from ``dim_in``).
        w_hpf: high-pass weight; ``> 0`` adds a downsampling level, drops the decoder shortcuts and enables
            ``masks`` (the filter is ``laplacian / w_hpf``).
        dim_in: channels after ``from_rgb`` (default ``2**14 // img_size``).
        img_channels: image channels (3).
        impl: ``"fastgan"`` or ``"torch"`` (or a :class:`~fastgan.models.stargan_v2_blocks.Layers`).

    ``forward(x, s, masks=None)``: x ``(N, img_channels, img_size, img_size)``, s ``(N, style_dim)``, masks a pair
    of heatmap batches ``(N, 1, h, w)`` (any h, w: resized bilinearly; the first is used at 32 pixels, the second at
    64 and 128); returns ``(N, img_channels, img_size, img_size)``.
    """

    HPF_SIZES = (32, 64, 128)  # resolutions (pixels) where the official model adds masked high-pass features

    def __init__(self, img_size: int = 256, style_dim: int = 64, max_conv_dim: int = 512, w_hpf: float = 0.0,
                 dim_in: int | None = None, img_channels: int = 3, impl: str | Layers = "fastgan"):
        super().__init__()
        who = "Generator"
        layers = get_layers(impl)
        self.impl = layers.impl
        repeat = _generator_repeat(img_size, w_hpf, who)
        dim_in = _dim_in(img_size, dim_in, who)
        self.img_size, self.w_hpf = img_size, w_hpf
        self.style_dim = _pos_int(style_dim, "style_dim", who)
        self.img_channels = _pos_int(img_channels, "img_channels", who)
        max_conv_dim = _pos_int(max_conv_dim, "max_conv_dim", who)
        self.from_rgb = nn.Conv2d(img_channels, dim_in, 3, 1, 1)
        self.encode = nn.ModuleList()
        self.decode = nn.ModuleList()
        self.to_rgb = nn.Sequential(layers.norm(dim_in), layers.act("lrelu"), nn.Conv2d(dim_in, img_channels, 1, 1, 0))
        dim_out = dim_in
        for _ in range(repeat):
            dim_out = min(dim_in * 2, max_conv_dim)
            self.encode.append(ResBlk(dim_in, dim_out, normalize=True, downsample=True, layers=layers))
            # Front insertion: decode mirrors encode (the last encoder level is the first decoder level).
            self.decode.insert(0, AdainResBlk(dim_out, dim_in, style_dim, w_hpf=w_hpf, upsample=True, layers=layers))
            dim_in = dim_out
        for _ in range(2):  # bottleneck
            self.encode.append(ResBlk(dim_out, dim_out, normalize=True, layers=layers))
            self.decode.insert(0, AdainResBlk(dim_out, dim_out, style_dim, w_hpf=w_hpf, layers=layers))
        if w_hpf > 0:
            self.hpf = HighPass(w_hpf)

    def _check_masks(self, masks, n: int) -> None:
        if self.w_hpf <= 0:
            raise ValueError("Generator: masks are only used with w_hpf > 0 (the high-pass path); this generator has "
                             f"w_hpf={self.w_hpf}: pass masks=None")
        if not isinstance(masks, Sequence) or len(masks) != 2:
            raise ValueError("Generator: masks must be a pair (masks[0] used at 32 pixels, masks[1] at 64 and 128) "
                             f"of (N, 1, h, w) tensors, got {type(masks).__name__}")
        for i, m in enumerate(masks):
            if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape[0] != n or m.shape[1] != 1:
                got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(f"Generator: masks[{i}] must be ({n}, 1, h, w), got {got}")

    def forward(self, x: torch.Tensor, s: torch.Tensor, masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        _check_image(x, self.img_channels, self.img_size, "Generator")
        _check_style(s, x.shape[0], self.style_dim, "Generator")
        if masks is not None:
            self._check_masks(masks, x.shape[0])
        x = self.from_rgb(x)
        cache = {}
        for block in self.encode:
            if masks is not None and x.shape[2] in self.HPF_SIZES:
                cache[x.shape[2]] = x
            x = block(x)
        for block in self.decode:
            x = block(x, s)
            size = x.shape[2]
            if masks is not None and size in self.HPF_SIZES:
                mask = masks[0] if size == 32 else masks[1]
                mask = F.interpolate(mask.to(x.dtype), size=size, mode="bilinear", align_corners=False)
                x = x + self.hpf(mask * cache[size])
        return self.to_rgb(x)


def _select_domain(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``out[n, y[n]]`` for ``out`` of shape ``(N, num_domains, D)``: ``(N, D)``."""
    return out[torch.arange(out.shape[0], device=out.device), y.to(out.device, torch.long)]


class MappingNetwork(nn.Module):
    """StarGAN v2 mapping network ``F(z, y) -> s``.

    ``shared``: Linear(latent_dim, hidden) + ReLU, then 3 x (Linear(hidden, hidden) + ReLU); ``unshared[k]``:
    3 x (Linear(hidden, hidden) + ReLU) + Linear(hidden, style_dim), one head per domain.

    Args:
        latent_dim, style_dim, num_domains: sizes; hidden_dim: width (512 officially).
        impl: ``"fastgan"`` (ReLU on ``bias_act``) or ``"torch"``.

    Shapes: z ``(N, latent_dim)`` float, y ``(N,)`` integer labels in ``[0, num_domains)`` -> ``(N, style_dim)``.
    """

    def __init__(self, latent_dim: int = 16, style_dim: int = 64, num_domains: int = 2, hidden_dim: int = 512,
                 impl: str | Layers = "fastgan"):
        super().__init__()
        who = "MappingNetwork"
        layers = get_layers(impl)
        self.impl = layers.impl
        self.latent_dim, self.style_dim = _pos_int(latent_dim, "latent_dim", who), _pos_int(style_dim, "style_dim", who)
        self.num_domains, h = _pos_int(num_domains, "num_domains", who), _pos_int(hidden_dim, "hidden_dim", who)
        shared: list[nn.Module] = [nn.Linear(latent_dim, h), layers.act("relu")]
        for _ in range(3):
            shared += [nn.Linear(h, h), layers.act("relu")]
        self.shared = nn.Sequential(*shared)
        self.unshared = nn.ModuleList()
        for _ in range(num_domains):
            head: list[nn.Module] = []
            for _ in range(3):
                head += [nn.Linear(h, h), layers.act("relu")]
            self.unshared.append(nn.Sequential(*head, nn.Linear(h, style_dim)))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"MappingNetwork: z must be (N, latent_dim) = (N, {self.latent_dim}), got {got}")
        check_labels(y, z.shape[0], self.num_domains, "MappingNetwork")
        h = self.shared(z)
        return _select_domain(torch.stack([head(h) for head in self.unshared], dim=1), y)


class StyleEncoder(nn.Module):
    """StarGAN v2 style encoder ``E(x, y) -> s``.

    ``shared``: Conv2d(img_channels, dim_in, 3, 1, 1); ``log2(img_size) - 2`` ``ResBlk(d, min(2d, max_conv_dim),
    downsample=True)`` (no norm) down to 4x4; LeakyReLU(0.2); Conv2d(d, d, 4, 1, 0); LeakyReLU(0.2).
    ``unshared[k]``: Linear(d, style_dim) per domain.

    Args:
        img_size: a power of two >= 8. style_dim, num_domains, max_conv_dim: sizes.
        dim_in: channels after the stem (default ``2**14 // img_size``). img_channels: 3.
        impl: ``"fastgan"`` or ``"torch"``.

    Shapes: x ``(N, img_channels, img_size, img_size)``, y ``(N,)`` labels -> ``(N, style_dim)``.
    """

    def __init__(self, img_size: int = 256, style_dim: int = 64, num_domains: int = 2, max_conv_dim: int = 512,
                 dim_in: int | None = None, img_channels: int = 3, impl: str | Layers = "fastgan"):
        super().__init__()
        who = "StyleEncoder"
        layers = get_layers(impl)
        self.impl = layers.impl
        if not _is_pow2(img_size, 8):
            raise ValueError(f"{who}: img_size must be a power of two >= 8, got {img_size!r}")
        dim_in = _dim_in(img_size, dim_in, who)
        self.img_size, self.img_channels = img_size, _pos_int(img_channels, "img_channels", who)
        self.style_dim = _pos_int(style_dim, "style_dim", who)
        self.num_domains = _pos_int(num_domains, "num_domains", who)
        max_conv_dim = _pos_int(max_conv_dim, "max_conv_dim", who)
        blocks: list[nn.Module] = [nn.Conv2d(img_channels, dim_in, 3, 1, 1)]
        dim_out = dim_in
        for _ in range(int(math.log2(img_size)) - 2):
            dim_out = min(dim_in * 2, max_conv_dim)
            blocks.append(ResBlk(dim_in, dim_out, downsample=True, layers=layers))
            dim_in = dim_out
        blocks += [layers.act("lrelu"), nn.Conv2d(dim_out, dim_out, 4, 1, 0), layers.act("lrelu")]
        self.shared = nn.Sequential(*blocks)
        self.unshared = nn.ModuleList([nn.Linear(dim_out, style_dim) for _ in range(num_domains)])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.img_channels, self.img_size, "StyleEncoder")
        check_labels(y, x.shape[0], self.num_domains, "StyleEncoder")
        h = self.shared(x).reshape(x.shape[0], -1)
        return _select_domain(torch.stack([head(h) for head in self.unshared], dim=1), y)


def he_init(module: nn.Module) -> None:
    """The official initialisation (use with ``net.apply(he_init)``): every Conv2d and Linear weight
    ``kaiming_normal_(mode="fan_in", nonlinearity="relu")``, biases 0; norms keep weight 1, bias 0."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(cfg: StarGANv2Config) -> tuple[nn.ModuleDict, nn.ModuleDict]:
    """The StarGAN v2 networks for ``cfg`` and their EMA copies.

    Args:
        cfg: the configuration (``cfg.impl`` picks fastgan's ops or ``torch.nn``).

    Returns:
        ``(nets, nets_ema)``: ``nets`` a ModuleDict with ``generator``, ``mapping_network``, ``style_encoder``,
        ``discriminator`` (He-initialised as in the official solver); ``nets_ema`` deep copies of the first three.
        The copies are taken after initialisation, so the EMA starts at the trained networks' weights (the official
        code copies before initialising, so its EMA starts from PyTorch's default init and drifts over).
    """
    if not isinstance(cfg, StarGANv2Config):
        raise ValueError(f"build_model: cfg must be a StarGANv2Config, got {type(cfg).__name__}")
    cfg.validate()
    layers = get_layers(cfg.impl)
    dim_in = cfg.resolved_dim_in
    generator = Generator(cfg.img_size, cfg.style_dim, cfg.max_conv_dim, cfg.w_hpf, dim_in, cfg.img_channels, layers)
    mapping = MappingNetwork(cfg.latent_dim, cfg.style_dim, cfg.num_domains, cfg.hidden_dim, layers)
    style_encoder = StyleEncoder(cfg.img_size, cfg.style_dim, cfg.num_domains, cfg.max_conv_dim, dim_in,
                                 cfg.img_channels, layers)
    discriminator = use_layers(StarGANv2Discriminator(cfg.img_size, cfg.num_domains, cfg.max_conv_dim, dim_in,
                                                      cfg.img_channels), layers)
    nets = nn.ModuleDict(dict(zip(NET_NAMES, (generator, mapping, style_encoder, discriminator))))
    for net in nets.values():
        net.apply(he_init)
    if cfg.channels_last:
        nets.to(memory_format=torch.channels_last)  # 4-D weights only; the EMA copies below inherit it
    nets_ema = nn.ModuleDict({name: copy.deepcopy(nets[name]) for name in EMA_NET_NAMES})
    return nets, nets_ema


@torch.no_grad()
def moving_average(model: nn.Module, model_ema: nn.Module, beta: float = 0.999) -> None:
    """``p_ema <- beta * p_ema + (1 - beta) * p`` for every parameter, in place (the official EMA update).

    Args:
        model: the trained network. model_ema: its copy (same parameter names and shapes).
        beta: EMA decay in [0, 1] (1 keeps ``model_ema``, 0 copies ``model``).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"moving_average: beta must be in [0, 1], got {beta!r}")
    src, dst = dict(model.named_parameters()), dict(model_ema.named_parameters())
    if src.keys() != dst.keys():
        only_src, only_dst = sorted(src.keys() - dst.keys())[:5], sorted(dst.keys() - src.keys())[:5]
        raise ValueError("moving_average: model and model_ema have different parameters: only in model "
                         f"{only_src}, only in model_ema {only_dst}")
    bad = [k for k in src if src[k].shape != dst[k].shape or src[k].dtype != dst[k].dtype]
    if bad:
        raise ValueError(f"moving_average: parameter shape/dtype differs between model and model_ema: {bad[:5]}")
    names = list(dst)
    if names:
        torch._foreach_lerp_([dst[k] for k in names], [src[k] for k in names], 1.0 - beta)


def load_official_checkpoint(module_dict, state) -> None:
    """Load an official StarGAN v2 checkpoint into ``module_dict`` (``nets`` or ``nets_ema`` of :func:`build_model`).

    The official checkpoints are ``torch.save({"generator": sd, "mapping_network": sd, "style_encoder": sd}, ...)``
    (``*_nets_ema.ckpt``; ``*_nets.ckpt`` also has ``"discriminator"``), each ``sd`` a ``state_dict`` whose keys may
    carry DataParallel's ``module.`` prefix. Our module and parameter names are the official ones, so the key mapping
    is the identity after stripping ``module.``; for example::

        generator.from_rgb.weight                 (dim_in, 3, 3, 3)
        generator.encode.{i}.conv1.weight / .norm1.weight / .conv1x1.weight
        generator.decode.{i}.norm1.fc.weight      (AdaIN's Linear)      generator.to_rgb.0.weight / to_rgb.2.weight
        mapping_network.shared.{0,2,4,6}.weight   mapping_network.unshared.{k}.{0,2,4,6}.weight
        style_encoder.shared.{j}.conv1.weight     style_encoder.unshared.{k}.weight
        discriminator.main.{j}.conv1x1.weight     discriminator.main.{last}.weight

    Every network of ``module_dict`` must be in ``state`` with exactly its keys and shapes (strict); an
    ``hpf.filter`` entry (saved by variants that register the filter as a buffer) is ignored; networks in
    ``state`` but not in ``module_dict`` (``discriminator`` when loading ``*_nets.ckpt`` into ``nets_ema``, ``fan``)
    are ignored.

    Args:
        module_dict: mapping (``nn.ModuleDict`` or dict) of network name -> module.
        state: the loaded checkpoint dict, or a path to it (loaded with ``torch.load(map_location="cpu",
            weights_only=True)``).

    Raises:
        ValueError: a network missing from the checkpoint, or missing / unexpected keys or shape mismatches,
            naming them (nothing is loaded into that network then).
    """
    if isinstance(state, (str, os.PathLike)):
        state = torch.load(state, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"load_official_checkpoint: state must be a dict of state_dicts, got {type(state).__name__}")
    absent = [name for name in module_dict if name not in state]
    if absent:
        raise ValueError(f"load_official_checkpoint: the checkpoint has no entry for {absent}; it has {list(state)}")
    for name, module in module_dict.items():
        sd = state[name]
        if not isinstance(sd, Mapping):
            raise ValueError(f"load_official_checkpoint: state[{name!r}] must be a state_dict, got {type(sd).__name__}")
        sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
        sd.pop("hpf.filter", None)
        own = module.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or shapes:
            raise ValueError(f"load_official_checkpoint: {name}: missing keys {missing}; unexpected keys "
                             f"{unexpected}; shape mismatches {shapes} (is the config — img_size, dim_in, "
                             "num_domains, w_hpf, style_dim — the checkpoint's?)")
        module.load_state_dict(sd, strict=True)
