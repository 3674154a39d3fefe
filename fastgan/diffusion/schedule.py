"""Noise schedules of DDPM/DDIM: ``NoiseSchedule.linear / .scaled_linear / .cosine``.

Conventions follow diffusers' schedulers so numbers can be compared one to one: timesteps are 0-indexed
(``t = 0`` is the last denoising step), ``alphas_cumprod[t] = prod_{s <= t} (1 - betas[s])`` and the cumulative
product "before" the first step (``t_prev < 0``) is taken as 1.
"""
from __future__ import annotations

import math

import torch

__all__ = ["NoiseSchedule"]


class NoiseSchedule:
    """A DDPM noise schedule: float64 master tables, with per-device copies cached on first use.

    Attributes:
        betas: ``(T,)`` float64, the per-step noise variances.
        alphas: ``1 - betas``.
        alphas_cumprod: ``(T,)`` float64 cumulative products, decreasing from ``alphas[0]``.
        num_steps: ``T``.
        zero_terminal_snr: whether the last beta is 1 (``alphas_cumprod[T - 1] = 0``).

    Build one with :meth:`linear`, :meth:`scaled_linear` or :meth:`cosine`, or pass any betas in ``(0, 1)``. The
    last beta may be 1: a zero-terminal-SNR schedule (Lin et al. 2023, :meth:`rescale_zero_terminal_snr`), whose
    ``alphas_cumprod[T - 1]`` is 0, so ``x_{T-1}`` is pure noise. An eps-prediction model cannot give x0 there
    (``x0 = (x - eps) / 0``): the steps refuse ``t = T - 1`` with ``prediction="eps"`` (use ``"v"``).
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        inner = betas[:-1]
        if (betas.numel() < 1 or not bool(((inner > 0) & (inner < 1)).all())
                or not 0 < betas[-1].item() <= 1):
            raise ValueError(f"fastgan: betas must be a non-empty sequence in (0, 1) (the last may be 1); got "
                             f"{betas.numel()} values in [{betas.min().item() if betas.numel() else 'n/a'}, "
                             f"{betas.max().item() if betas.numel() else 'n/a'}]")
        self.betas = betas
        self.zero_terminal_snr = betas[-1].item() == 1.0  # alphas_cumprod[T - 1] = 0
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # abar with a leading 1 so that index t_prev + 1 = 0 reads "before the first step".
        self._abar_ext = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        self._device_tables: dict[torch.device, torch.Tensor] = {}

    @property
    def num_steps(self) -> int:
        return int(self.betas.numel())

    # ---------------------------------------------------------------------------------------- constructors
    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al.; diffusers ``"linear"``)."""
        return cls(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, num_steps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> "NoiseSchedule":
        """Square roots of the betas evenly spaced (latent diffusion; diffusers ``"scaled_linear"``)."""
        return cls(torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=torch.float64) ** 2)

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal's cosine schedule: ``abar(u) = cos((u + s) / (1 + s) * pi / 2)^2`` for
        ``u = t / T``, ``beta_t = min(1 - abar((t + 1) / T) / abar(t / T), max_beta)`` (diffusers
        ``"squaredcos_cap_v2"``)."""
        def abar(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)]
        return cls(torch.tensor(betas, dtype=torch.float64))

    def rescale_zero_terminal_snr(self) -> "NoiseSchedule":
        """This schedule with zero terminal SNR (Lin et al. 2023, Algorithm 1): ``sqrt(alphas_cumprod)`` shifted so
        its last value is 0 and scaled so its first is unchanged, in float64 (diffusers' ``rescale_betas_zero_snr``
        does the same in float32: :class:`~fastgan.diffusion.FusedDDPMScheduler` follows it there)."""
        return NoiseSchedule(_zero_terminal_snr_betas(self.betas))

    # -------------------------------------------------------------------------------------------- lookups
    def tables(self, device: torch.device) -> torch.Tensor:
        """``(3, T + 1)`` float64 on ``device``: rows ``abar_ext`` (1 then alphas_cumprod), ``betas`` and
        ``alphas`` (both with a leading 0/1 pad so every row is indexed by ``t + 1``). Cached per device."""
        device = torch.device(device)
        if device not in self._device_tables:
            pad_b = torch.cat([torch.zeros(1, dtype=torch.float64), self.betas])
            pad_a = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas])
            self._device_tables[device] = torch.stack([self._abar_ext, pad_b, pad_a]).to(device)
        return self._device_tables[device]

    def __repr__(self) -> str:
        return (f"NoiseSchedule(num_steps={self.num_steps}, beta[0]={self.betas[0].item():.3g}, "
                f"beta[-1]={self.betas[-1].item():.3g}, alphas_cumprod[-1]={self.alphas_cumprod[-1].item():.3g})")


def _zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Betas (in their own dtype) whose ``sqrt(alphas_cumprod)`` is the input's, minus its last value and scaled
    back to the first: the last beta comes out 1."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    abar = root**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas
