"""Drop-in replacement for ``torch.nn.GroupNorm`` (optionally with a fused activation) on fastgan's kernels.

It subclasses torch's module, so constructor arguments, ``state_dict`` keys (``weight``, ``bias``), parameter
initialisation and ``isinstance`` checks are torch's own; only the arithmetic is replaced. ``act="silu"`` makes
``GroupNorm(G, C, act="silu")`` a drop-in for ``nn.Sequential(nn.GroupNorm(G, C), nn.SiLU())`` (same parameters
under the same keys minus the Sequential's ``0.`` prefix), in one kernel.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from ..ops.group_norm import group_norm, resolve_act


_TORCH_GROUPNORM_HAS_BIAS = "bias" in inspect.signature(nn.GroupNorm.__init__).parameters


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` on fastgan kernels, with an optional fused activation and per-sample AdaGN affine.

    Args:
        num_groups, num_channels, eps, affine, device, dtype, bias: as ``torch.nn.GroupNorm`` (``bias=False``: an
            affine weight without a bias).
        act: ``"linear"`` (default: exactly ``nn.GroupNorm``), ``"silu"``, ``"relu"`` or ``"lrelu"``, applied after
            the affine.
        alpha: lrelu's negative slope (default 0.2).

    ``forward(x, scale=None, shift=None)``: ``act(GN(x) * (1 + scale) + shift)`` with optional per-sample
    ``(N, C)`` scale/shift (a diffusion UNet's scale-shift conditioning). Input ``(N, C, *)`` of any rank >= 2;
    ranks other than 3-5 are viewed as ``(N, C, L)``.
    """

    impl: str | None = None  # pin a backend for this module ("ref", "cpp", "triton"); None = automatic

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None,
                 dtype=None, act: str = "linear", alpha: float | None = None, *, bias: bool = True):
        if _TORCH_GROUPNORM_HAS_BIAS:
            super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype, bias=bias)
        else:  # torch < 2.12 (e.g. 2.11 on the lent H200) has no `bias` argument: drop the bias as newer torch does
            super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)
            if affine and not bias:
                self.bias = None  # nn.Module turns a registered parameter set to None into an absent one
        resolve_act(act, alpha)  # fail at construction on an unknown activation
        self.act = act
        self.alpha = alpha

    def reset_parameters(self) -> None:
        if self.affine:  # torch < 2.12's version assumes a bias
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, input: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        x = input
        if x.dim() < 2:
            raise ValueError(f"fastgan.nn.GroupNorm: input must be (N, C, *) with at least 2 dims, got {x.dim()}-D of "
                             f"shape {tuple(x.shape)}")
        if x.dim() == 2 or x.dim() > 5:  # (N, C) or (N, C, d1..dk): the statistics do not depend on the view
            x = x.reshape(x.shape[0], x.shape[1], -1)
        y = group_norm(x, self.num_groups, self.weight, self.bias, self.eps, scale=scale, shift=shift, act=self.act,
                       alpha=self.alpha, impl=self.impl)
        return y.reshape(input.shape) if y.shape != input.shape else y

    def extra_repr(self) -> str:
        extra = "" if self.act == "linear" else f", act={self.act!r}"
        if self.act == "lrelu" and self.alpha is not None:
            extra += f", alpha={self.alpha}"
        return super().extra_repr() + extra
