"""``fastgan.nn.BiasAct``: a learned bias followed by an activation, gain and optional clamp, on the fused kernels."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.bias_act import bias_act, resolve_act


class BiasAct(nn.Module):
    """``clamp(act(x + bias) * gain, -clamp, clamp)`` with a learned per-feature bias (StyleGAN's bias + activation).

    Args:
        num_features: size of ``x`` along ``dim`` (C of ``(N, C, H, W)``, F of ``(N, F)``).
        act: ``"linear"``, ``"relu"``, ``"lrelu"``, ``"tanh"``, ``"sigmoid"``, ``"silu"``/``"swish"``, ``"gelu"``.
        alpha: lrelu's negative slope (default 0.2).
        gain: output scale, default 1 (the plain activation); StyleGAN's layers use ``math.sqrt(2)`` for
            relu/lrelu.
        clamp: clamp the output to ``[-clamp, clamp]`` (None: no clamp).
        dim: the dim of ``x`` the bias runs along (1 for ``(N, C, ...)``; ``-1`` for channels-last features).
        bias: learn a bias (a zero-initialised ``(num_features,)`` Parameter named ``bias``); False: no bias.
        bias_init: initial value of the bias.

    Shapes:
        x: any shape with ``x.shape[dim] == num_features``. Output: like x.
    """

    impl: str | None = None  # pin a backend ("ref", "cpp", "cuda", "triton"); None = automatic

    def __init__(self, num_features: int, act: str = "lrelu", alpha: float | None = None, gain: float = 1.0,
                 clamp: float | None = None, dim: int = 1, bias: bool = True, bias_init: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.act, self.alpha, self.gain = resolve_act(act, alpha, gain)
        if clamp is not None and not clamp >= 0:
            raise ValueError(f"fastgan.nn.BiasAct: clamp must be >= 0 or None, got {clamp}")
        self.num_features = num_features
        self.clamp = clamp
        self.dim = dim
        if bias:
            self.bias = nn.Parameter(torch.full((num_features,), float(bias_init), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or not -x.dim() <= self.dim < x.dim() or x.shape[self.dim] != self.num_features:
            raise ValueError(
                f"fastgan.nn.BiasAct: x must have {self.num_features} features along dim {self.dim}, "
                f"got shape {tuple(x.shape)}"
            )
        return bias_act(x, self.bias, self.act, self.alpha, self.gain, self.clamp, self.dim, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, act={self.act!r}, alpha={self.alpha}, gain={self.gain:.4g}, "
                f"clamp={self.clamp}, dim={self.dim}, bias={self.bias is not None}")
