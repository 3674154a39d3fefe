"""Drop-in replacements for ``torch.nn.InstanceNorm1d/2d/3d`` running on fastgan's kernels.

They subclass torch's modules, so constructor arguments, ``state_dict`` keys, ``isinstance`` checks, unbatched
input and the affine/num_features checks are torch's own; only the arithmetic is replaced.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops._family import check_eps, check_float_tensor
from ..ops.instance_norm import instance_norm, instance_norm_stats


class _FastInstanceNorm:
    """Mixin overriding the one method torch's ``_InstanceNorm`` routes all arithmetic through."""

    impl: str | None = None  # pin a backend for this module ("ref", "cpp", "cuda", "triton"); None = automatic

    def _apply_instance_norm(self, input: torch.Tensor) -> torch.Tensor:
        use_batch_stats = self.training or not self.track_running_stats
        if self.track_running_stats and self.running_mean is not None and input.shape[1] != self.running_mean.numel():
            # torch's module only warns on a channel mismatch without affine; F.instance_norm then refuses the
            # running stats. Elementwise arithmetic on them would broadcast a single channel silently.
            raise ValueError(
                f"fastgan.nn.{type(self).__name__}: input has {input.shape[1]} channels but running_mean and "
                f"running_var hold num_features={self.running_mean.numel()} (track_running_stats=True needs "
                "C == num_features)"
            )
        if not use_batch_stats:
            return self._normalize_with_running_stats(input)
        if not (self.track_running_stats and self.training and self.running_mean is not None):
            return instance_norm(input, self.weight, self.bias, self.eps, impl=self.impl)
        y, mean, var = instance_norm_stats(input, self.weight, self.bias, self.eps, impl=self.impl)
        self._update_running_stats(mean, var, input)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, input: torch.Tensor) -> None:
        # Same rule as F.instance_norm: per-instance stats averaged over the batch, unbiased variance,
        # momentum=None means 0 (torch hands F.instance_norm 0.0 then, so the buffers stay put), and
        # num_batches_tracked is left alone as torch's InstanceNorm leaves it.
        momentum = self.momentum if self.momentum is not None else 0.0
        length = input[0, 0].numel()
        unbiased = var * (length / (length - 1)) if length > 1 else var
        self.running_mean.mul_(1 - momentum).add_(mean.mean(0).to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased.mean(0).to(self.running_var.dtype), alpha=momentum)

    def _normalize_with_running_stats(self, input: torch.Tensor) -> torch.Tensor:
        # Eval with tracked stats is a fixed per-channel affine: no reduction, so plain elementwise torch is right.
        check_float_tensor(input, "x")  # the ops' checks, which this path does not reach
        check_eps(self.eps)
        shape = (1, -1) + (1,) * (input.dim() - 2)
        acc = torch.float64 if input.dtype == torch.float64 else torch.float32
        scale = torch.rsqrt(self.running_var.to(acc) + self.eps)
        shift = -self.running_mean.to(acc) * scale
        if self.weight is not None:
            scale = scale * self.weight.to(acc)
            shift = shift * self.weight.to(acc)
        if self.bias is not None:
            shift = shift + self.bias.to(acc)
        return (input.to(acc) * scale.reshape(shape) + shift.reshape(shape)).to(input.dtype)


class InstanceNorm1d(_FastInstanceNorm, nn.InstanceNorm1d):
    """``torch.nn.InstanceNorm1d`` on fastgan kernels. Input ``(N, C, L)`` or unbatched ``(C, L)``."""


class InstanceNorm2d(_FastInstanceNorm, nn.InstanceNorm2d):
    """``torch.nn.InstanceNorm2d`` on fastgan kernels. Input ``(N, C, H, W)`` or unbatched ``(C, H, W)``."""


class InstanceNorm3d(_FastInstanceNorm, nn.InstanceNorm3d):
    """``torch.nn.InstanceNorm3d`` on fastgan kernels. Input ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)``."""
