"""The standard GAN losses as small functions of the critic's logits.

Every function takes raw critic outputs (logits, before any sigmoid) of any shape — one per sample ``(N,)`` or
``(N, 1)``, or a PatchGAN map — and returns a 0-d tensor: the mean over all elements. Discriminator losses take
``(real_logits, fake_logits)``; generator losses take the logits of the fakes. All are minimised.

Notation: ``r`` = real logits, ``f`` = fake logits, ``E`` = mean over elements, ``softplus(x) = log(1 + e^x)``, so
``-log(sigmoid(x)) = softplus(-x)`` and ``-log(1 - sigmoid(x)) = softplus(x)`` (computed stably, as
``F.binary_cross_entropy_with_logits`` does).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "clip_weights_",
    "hinge_d_loss",
    "hinge_g_loss",
    "lsgan_d_loss",
    "lsgan_g_loss",
    "ns_d_loss",
    "ns_g_loss",
    "vanilla_d_loss",
    "vanilla_g_loss",
    "wgan_d_loss",
    "wgan_g_loss",
]


def _logits(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of critic logits, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty")
    return x


# --- non-saturating / vanilla (Goodfellow et al. 2014) -----------------------------------------------------------

def ns_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of the standard GAN (binary cross-entropy, reals labelled 1, fakes 0):

    ``E[softplus(-r)] + E[softplus(f)]  =  -E[log sigmoid(r)] - E[log(1 - sigmoid(f))]``.

    The same for the non-saturating and the minimax (vanilla) game; ``vanilla_d_loss`` is this function.
    """
    r = _logits(real_logits, "real_logits")
    f = _logits(fake_logits, "fake_logits")
    return F.softplus(-r).mean() + F.softplus(f).mean()


vanilla_d_loss = ns_d_loss


def ns_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: ``E[softplus(-f)] = -E[log sigmoid(f)]`` (BCE with label 1 on fakes).

    The loss StyleGAN and StarGAN v2 train with.
    """
    return F.softplus(-_logits(fake_logits, "fake_logits")).mean()


def vanilla_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Minimax (saturating) generator loss: ``E[log(1 - sigmoid(f))] = -E[softplus(f)]``.

    Minimising it is the original two-player game; its gradient vanishes when the discriminator confidently
    rejects the fakes, which is why :func:`ns_g_loss` is used in practice.
    """
    return -F.softplus(_logits(fake_logits, "fake_logits")).mean()


# --- least squares (Mao et al. 2017) ---------------------------------------------------------------------------------

def lsgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, a: float = 0.0, b: float = 1.0) -> torch.Tensor:
    """LSGAN discriminator loss: ``0.5 * E[(r - b)^2] + 0.5 * E[(f - a)^2]`` (fake label ``a``, real label ``b``).

    The critic output is used as is (no sigmoid). Defaults ``a=0, b=1`` are the 0-1 coding of the paper.
    """
    r = _logits(real_logits, "real_logits")
    f = _logits(fake_logits, "fake_logits")
    return 0.5 * (r - b).square().mean() + 0.5 * (f - a).square().mean()


def lsgan_g_loss(fake_logits: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """LSGAN generator loss: ``0.5 * E[(f - c)^2]``, ``c`` the value the generator wants fakes scored (1)."""
    return 0.5 * (_logits(fake_logits, "fake_logits") - c).square().mean()


# --- Wasserstein (Arjovsky et al. 2017; with gradient penalty, Gulrajani et al. 2017) ------------------------------

def wgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss: ``E[f] - E[r]`` (the negated Wasserstein estimate).

    Keep the critic Lipschitz: :func:`clip_weights_` after every critic step (WGAN), or add
    ``gradient_penalty(..., kind="wgan-gp")`` to this loss (WGAN-GP).
    """
    r = _logits(real_logits, "real_logits")
    f = _logits(fake_logits, "fake_logits")
    return f.mean() - r.mean()


def wgan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss: ``-E[f]``."""
    return -_logits(fake_logits, "fake_logits").mean()


@torch.no_grad()
def clip_weights_(module: nn.Module, c: float = 0.01) -> nn.Module:
    """Clamp every parameter of ``module`` to ``[-c, c]`` in place (WGAN's weight clipping; the paper's c = 0.01).

    Call after each critic optimiser step. Buffers (running statistics) are left alone. Returns ``module``.
    """
    if not c > 0:
        raise ValueError(f"clip_weights_: c must be positive, got {c}")
    for p in module.parameters():
        p.clamp_(-c, c)
    return module


# --- hinge (Lim & Ye 2017; SAGAN, BigGAN) ---------------------------------------------------------------------------

def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss: ``E[relu(1 - r)] + E[relu(1 + f)]``."""
    r = _logits(real_logits, "real_logits")
    f = _logits(fake_logits, "fake_logits")
    return F.relu(1 - r).mean() + F.relu(1 + f).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss: ``-E[f]`` (as in SAGAN and BigGAN; the same as :func:`wgan_g_loss`)."""
    return -_logits(fake_logits, "fake_logits").mean()
