"""``fastgan.nn.AdaIN``: StarGAN v2's adaptive instance norm on the fused kernels."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.adain import adain


class AdaIN(nn.Module):
    """StarGAN v2's AdaIN: ``(1 + gamma) * IN(x) + beta`` with ``gamma, beta = fc(s).chunk(2)``.

    Same parameters and ``state_dict`` keys (``fc.weight``, ``fc.bias``) as the reference implementation's
    ``AdaIN(style_dim, num_features)`` (a ``Linear(style_dim, 2 * num_features)`` named ``fc`` beside an
    ``InstanceNorm2d(affine=False)``), so its checkpoints load unchanged. The ``1 +`` is added to the (N, C) scale,
    and normalisation and affine are one fused kernel; gradients reach x, s and ``fc`` to any order.

    Args:
        style_dim: length of the style code ``s``.
        num_features: channels C of x.
        eps: added to the variance.

    Shapes:
        x: ``(N, C, H, W)`` (any of 3-D, 4-D, 5-D works); s: ``(N, style_dim)``. Output: like x.
    """

    impl: str | None = None  # pin a backend ("ref", "cpp", "cuda", "triton"); None = automatic

    def __init__(self, style_dim: int, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.style_dim = style_dim
        self.num_features = num_features
        self.eps = eps
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if s.dim() != 2 or s.shape[1] != self.style_dim:
            raise ValueError(
                f"fastgan.nn.AdaIN: s must be (N, style_dim) = (N, {self.style_dim}), got {tuple(s.shape)}"
            )
        if x.dim() < 3 or x.shape[1] != self.num_features or x.shape[0] != s.shape[0]:
            raise ValueError(
                f"fastgan.nn.AdaIN: x must be (N, {self.num_features}, ...) with s's N = {s.shape[0]}, "
                f"got {tuple(x.shape)}"
            )
        gamma, beta = self.fc(s).chunk(2, dim=1)
        return adain(x, 1 + gamma, beta, self.eps, impl=self.impl)

    def extra_repr(self) -> str:
        return f"style_dim={self.style_dim}, num_features={self.num_features}, eps={self.eps}"
