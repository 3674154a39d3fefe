"""Drop-in modules built on fastgan's ops."""
from .adain import AdaIN
from .bias_act import BiasAct
from .group_norm import GroupNorm
from .instance_norm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .spade import SPADE

__all__ = ["AdaIN", "BiasAct", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "SPADE"]
