"""Models built on fastgan's ops: critics for gradient-penalty training (:mod:`fastgan.models.critics`)."""
from .critics import DCGANCritic, ResBlk, StarGANv2Discriminator

__all__ = ["DCGANCritic", "ResBlk", "StarGANv2Discriminator"]
