"""fastgan's ops. Each has a plain-PyTorch reference, CPU C++, Triton and CUDA C++ implementations."""
from .. import _backend
from . import norm_kernels
from . import bias_act_kernels
from . import grad_penalty_kernels
from . import group_norm_kernels
from .adain import adain, adain_reference, adain_transfer
from .bias_act import bias_act, bias_act_reference
from .grad_penalty import grad_penalty, grad_penalty_reference
from .group_norm import group_norm, group_norm_reference
from .spade import spatial_adaptive_norm, spatial_adaptive_norm_reference
from .instance_norm import instance_norm, instance_norm_stats
from .instance_norm_ref import instance_norm_reference

norm_kernels.register_compiled()
norm_kernels.compiled_wb()  # its fake, at import: not from inside a torch.compile trace
bias_act_kernels.register_compiled()
grad_penalty_kernels.register_compiled()
group_norm_kernels.register_compiled()

__all__ = [
    "adain",
    "adain_reference",
    "adain_transfer",
    "bias_act",
    "bias_act_reference",
    "grad_penalty",
    "grad_penalty_reference",
    "group_norm",
    "group_norm_reference",
    "instance_norm",
    "instance_norm_stats",
    "instance_norm_reference",
    "spatial_adaptive_norm",
    "spatial_adaptive_norm_reference",
]
