"""Diffusion: noise schedules, fused DDPM/DDIM steps, samplers, diffusers-compatible schedulers and training
(``fastgan.diffusion``). The UNet is :class:`fastgan.models.unet.UNet`; the CLI is :mod:`.train_cli`."""
from . import step_kernels  # noqa: F401  (registers fastgan::diffusion_step_triton; Triton loads on first use)
from .samplers import DDIMSampler, DDPMSampler, leading_timesteps
from .schedule import NoiseSchedule
from .schedulers import FusedDDIMScheduler, FusedDDPMScheduler
from .steps import ddim_step, ddpm_step, fused_step, step_coefficients
from .training import EMA, diffusion_loss, infinite_batches, q_sample, train_steps

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "EMA",
    "FusedDDIMScheduler",
    "FusedDDPMScheduler",
    "NoiseSchedule",
    "ddim_step",
    "ddpm_step",
    "diffusion_loss",
    "fused_step",
    "infinite_batches",
    "leading_timesteps",
    "q_sample",
    "step_coefficients",
    "train_steps",
]
