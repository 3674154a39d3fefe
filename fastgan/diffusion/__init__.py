"""Diffusion sampling: noise schedules and fused DDPM/DDIM steps (``fastgan.diffusion``)."""
from . import step_kernels  # noqa: F401  (registers fastgan::diffusion_step_triton; Triton loads on first use)
from .samplers import DDIMSampler, DDPMSampler, leading_timesteps
from .schedule import NoiseSchedule
from .steps import ddim_step, ddpm_step, fused_step, step_coefficients

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "NoiseSchedule",
    "ddim_step",
    "ddpm_step",
    "fused_step",
    "leading_timesteps",
    "step_coefficients",
]
