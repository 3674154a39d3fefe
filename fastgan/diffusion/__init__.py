"""Diffusion sampling: noise schedules and fused DDPM/DDIM steps (``fastgan.diffusion``)."""
from . import step_kernels  # noqa: F401  (registers fastgan::diffusion_step_triton; Triton loads on first use)
from .schedule import NoiseSchedule
from .steps import ddim_step, ddpm_step, fused_step, step_coefficients

__all__ = ["NoiseSchedule", "ddpm_step", "ddim_step", "fused_step", "step_coefficients"]
