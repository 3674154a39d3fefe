"""``fastgan.nn.SPADE``: spatially-adaptive normalisation (Park et al., 2019) on fastgan's instance norm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.spade import spatial_adaptive_norm


class SPADE(nn.Module):
    """SPADE with an instance-norm base: ``IN(x) * (1 + gamma(m)) + beta(m)`` for a label map ``m``.

    The modulation network matches the usual PyTorch SPADE block, so its ``state_dict`` keys are the same
    (``mlp_shared.0.*``, ``mlp_gamma.*``, ``mlp_beta.*``): a shared ``Conv2d(label_nc, hidden, k) + ReLU``, then
    one ``Conv2d(hidden, norm_nc, k)`` each for gamma and beta. The label map is resized to x's spatial size with
    nearest-neighbour interpolation first.

    Args:
        norm_nc: channels C of x.
        label_nc: channels of the label (segmentation) map.
        hidden: channels of the shared hidden layer (128 in the paper).
        kernel_size: of the three convolutions (odd; padding keeps the size).
        eps: added to the variance.

    Shapes:
        x: ``(N, norm_nc, H, W)``; segmap: ``(N, label_nc, H', W')``. Output: like x.
    """

    impl: str | None = None  # pin the normalisation backend; None = automatic

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, kernel_size: int = 3, eps: float = 1e-5):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"fastgan.nn.SPADE: kernel_size must be odd to keep the size, got {kernel_size}")
        pad = kernel_size // 2
        self.norm_nc, self.label_nc, self.eps = norm_nc, label_nc, eps
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.norm_nc:
            raise ValueError(f"fastgan.nn.SPADE: x must be (N, {self.norm_nc}, H, W), got {tuple(x.shape)}")
        if segmap.dim() != 4 or segmap.shape[1] != self.label_nc or segmap.shape[0] != x.shape[0]:
            raise ValueError(
                f"fastgan.nn.SPADE: segmap must be (N, {self.label_nc}, H', W') with x's N = {x.shape[0]}, "
                f"got {tuple(segmap.shape)}"
            )
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return spatial_adaptive_norm(x, self.mlp_gamma(actv), self.mlp_beta(actv), self.eps, impl=self.impl)

    def extra_repr(self) -> str:
        return f"norm_nc={self.norm_nc}, label_nc={self.label_nc}, eps={self.eps}"
