"""Sampling loops: ``DDPMSampler`` and ``DDIMSampler`` around the fused steps.

Timesteps follow diffusers' default ("leading") spacing: with ``k = T // num_inference_steps`` the loop visits
``t = (n - 1) k, ..., k, 0`` and steps from ``t`` to ``t - k`` (``-1`` after ``t = 0`` for DDIM, where the
cumulative alpha is taken as 1). Classifier-free guidance runs the model once on the doubled batch
``[x, x]`` with ``[cond, null_cond]`` and combines the halves inside the fused step.

The loop has no host synchronisation of its own (timesteps are Python ints, coefficients are cached per step);
capturing (model call + step) in a CUDA graph is not implemented yet.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from .schedule import NoiseSchedule
from .steps import ddim_step, ddpm_step

__all__ = ["DDPMSampler", "DDIMSampler", "leading_timesteps"]


def leading_timesteps(num_steps: int, num_inference_steps: int) -> list[int]:
    """diffusers' "leading" spacing: ``[(n - 1) k, ..., k, 0]`` with ``k = num_steps // n``."""
    if not 1 <= num_inference_steps <= num_steps:
        raise ValueError(f"fastgan: num_inference_steps must be in [1, {num_steps}], got {num_inference_steps}")
    k = num_steps // num_inference_steps
    return [i * k for i in range(num_inference_steps - 1, -1, -1)]


class _Sampler:
    kind = ""

    def __init__(self, model: Callable[..., torch.Tensor], schedule: NoiseSchedule, *, prediction: str = "eps",
                 clip_x0: float | None = None, num_inference_steps: int | None = None):
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.timesteps = leading_timesteps(
            schedule.num_steps, schedule.num_steps if num_inference_steps is None else num_inference_steps
        )
        self.stride = schedule.num_steps // len(self.timesteps)

    def _model_out(self, x, t: int, cond, null_cond, guidance):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.int64)
        if cond is None:
            return self.model(x, tt), None
        if guidance is None:
            return self.model(x, tt, cond), None
        both = self.model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null_cond]))
        c, u = both.chunk(2)
        return c, u

    def _step(self, x, out, uncond, t, t_prev, guidance, generator, step_kw) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, x_T: torch.Tensor, *, cond: Any = None, null_cond: Any = None, guidance: float | None = None,
               generator: torch.Generator | None = None, progress: bool = False, **step_kw) -> torch.Tensor:
        """Run the loop from ``x_T`` (e.g. ``torch.randn(shape, generator=g)``) to a sample.

        Args:
            x_T: starting noise ``(N, ...)``.
            cond: conditioning passed as the model's third argument (class labels, embeddings).
            null_cond: the unconditional conditioning for classifier-free guidance (same type as ``cond``).
            guidance: CFG weight ``w`` (``u + w (c - u)``); needs ``cond`` and ``null_cond``.
            generator: for the step noise.
            progress: print a progress line to stderr.
            step_kw: extra step options (``variance=`` for DDPM, ``eta=`` for DDIM).

        Returns:
            The final sample, x_T's shape and dtype.
        """
        if guidance is not None and (cond is None or null_cond is None):
            raise ValueError("fastgan: classifier-free guidance needs cond and null_cond")
        x = x_T
        n = len(self.timesteps)
        for i, t in enumerate(self.timesteps):
            out, uncond = self._model_out(x, t, cond, null_cond, guidance)
            t_prev = t - self.stride if i + 1 < n else -1
            x = self._step(x, out, uncond, t, t_prev, guidance, generator, step_kw)
            if progress and (i + 1 == n or (i + 1) % max(1, n // 20) == 0):
                print(f"\r{self.kind} {i + 1}/{n}", end="\n" if i + 1 == n else "", file=sys.stderr, flush=True)
        return x


class DDPMSampler(_Sampler):
    """Ancestral DDPM sampling (``ddpm_step`` per timestep; fewer inference steps skip timesteps as diffusers'
    ``DDPMScheduler`` does).

    Args:
        model: ``model(x, t)`` or ``model(x, t, cond)`` returning the prediction (x's shape); ``t`` is an (N,)
            int64 tensor.
        schedule: the :class:`NoiseSchedule`.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_x0: clamp the predicted x0 (None: off).
        num_inference_steps: default: every timestep.
    """

    kind = "ddpm"

    def _step(self, x, out, uncond, t, t_prev, guidance, generator, step_kw):
        return ddpm_step(x, out, t, self.schedule, t_prev=t_prev, prediction=self.prediction,
                         clip_x0=self.clip_x0, generator=generator, model_out_uncond=uncond, guidance=guidance,
                         **step_kw)


class DDIMSampler(_Sampler):
    """DDIM sampling (``ddim_step``; ``eta=0`` deterministic). Arguments as :class:`DDPMSampler`; pass
    ``eta=`` to :meth:`sample`."""

    kind = "ddim"

    def _step(self, x, out, uncond, t, t_prev, guidance, generator, step_kw):
        return ddim_step(x, out, t, t_prev, self.schedule, prediction=self.prediction, clip_x0=self.clip_x0,
                         generator=generator, model_out_uncond=uncond, guidance=guidance, **step_kw)
