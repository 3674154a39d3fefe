"""Models built on fastgan's ops.

* :mod:`fastgan.models.critics`: critics for gradient-penalty training (``DCGANCritic``, ``StarGANv2Discriminator``).
* :mod:`fastgan.models.stargan_v2`: StarGAN v2 (``Generator``, ``MappingNetwork``, ``StyleEncoder``,
  ``build_model``, ``moving_average``, ``load_official_checkpoint``) in a fastgan build and a ``torch.nn`` build with
  the same weights; its losses in :mod:`fastgan.models.stargan_v2_losses`.
* :mod:`fastgan.models.unet`: the DDPM-style ``UNet`` the diffusion samplers and ``fastgan train ddpm`` use.
"""
from .critics import DCGANCritic, ResBlk, StarGANv2Discriminator
from .stargan_v2 import (
    Generator,
    MappingNetwork,
    StarGANv2Config,
    StyleEncoder,
    build_model,
    he_init,
    load_official_checkpoint,
    moving_average,
)
from .stargan_v2_blocks import AdainResBlk, HighPass, TorchAdaIN
from .stargan_v2_losses import discriminator_loss, generator_loss
from .unet import UNet

__all__ = [
    "AdainResBlk",
    "DCGANCritic",
    "Generator",
    "HighPass",
    "MappingNetwork",
    "ResBlk",
    "StarGANv2Config",
    "StarGANv2Discriminator",
    "StyleEncoder",
    "TorchAdaIN",
    "UNet",
    "build_model",
    "discriminator_loss",
    "generator_loss",
    "he_init",
    "load_official_checkpoint",
    "moving_average",
]
