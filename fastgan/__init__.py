"""fastgan: kernel-optimised ops, layers and models for GANs and diffusion on PyTorch.

Importing never compiles anything and never fails for a missing backend: without the compiled extension the CPU
ops run the plain-PyTorch reference (a warning says so once); ``python -m fastgan info`` lists what is live.
"""
__version__ = "0.1.0"

from ._backend import use_impl
from . import ops, nn
from . import diffusion, graphs, losses, models

__all__ = ["ops", "nn", "diffusion", "graphs", "losses", "models", "use_impl", "__version__"]
