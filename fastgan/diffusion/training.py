"""Training a denoiser: the DDPM objective (``diffusion_loss``), an EMA of the weights and a small loop helper.

The objective (Ho et al.): draw ``t ~ U{0, ..., T-1}`` and ``eps ~ N(0, I)`` per sample, form
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with the schedule's ``alphas_cumprod`` (gathered on x0's device
from the schedule's cached float64 tables: no host sync), and regress the model's output on the target of its
parameterisation: ``eps``, ``x0`` or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (the same conventions as the
samplers' ``prediction=``). For classifier-free guidance, labels are replaced by the null class with probability
``p_uncond`` so one network learns both the conditional and the unconditional model.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .schedule import NoiseSchedule
from .steps import _as_index

__all__ = ["EMA", "diffusion_loss", "infinite_batches", "q_sample", "train_steps"]


def _draw(fn, shape, generator, device, **kw) -> torch.Tensor:
    """Draw with ``fn`` (torch.rand/randn/randint) from ``generator`` on the generator's device, then move: a CPU
    generator seeds runs reproducibly whatever device the model is on."""
    where = generator.device if generator is not None else device
    return fn(*kw.pop("args", ()), shape, generator=generator, device=where, **kw).to(device)


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """The forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

    Args:
        schedule: the noise schedule.
        x0: ``(N, ...)`` clean samples.
        t: ``(N,)`` int64 timesteps in ``[0, T)`` on x0's device.
        noise: standard normal, x0's shape.
    Returns:
        ``(x_t, sqrt_abar, sqrt_one_minus_abar)``, the coefficients shaped ``(N, 1, ...)`` in x0's dtype.
    """
    abar = schedule.tables(x0.device)[0].index_select(0, t + 1)  # row 0 is abar with a leading 1: index t + 1
    view = (-1,) + (1,) * (x0.dim() - 1)
    sa = abar.sqrt().to(x0.dtype).reshape(view)
    s1a = (1 - abar).sqrt().to(x0.dtype).reshape(view)
    return sa * x0 + s1a * noise, sa, s1a


def diffusion_loss(model: Callable[..., torch.Tensor], x0: torch.Tensor, schedule: NoiseSchedule, *,
                   prediction: str = "eps", generator: torch.Generator | None = None, cond=None,
                   p_uncond: float = 0.0, null_class=None, t: torch.Tensor | None = None) -> torch.Tensor:
    """The simple DDPM loss: MSE between ``model(x_t, t[, cond])`` and the target of ``prediction``.

    Args:
        model: ``model(x, t)`` or ``model(x, t, cond)`` (the samplers' signature); ``t`` an (N,) int64 tensor.
        x0: ``(N, ...)`` clean training samples (e.g. images in [-1, 1]).
        schedule: the :class:`NoiseSchedule` the model will be sampled with.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        generator: for t, the noise and the label dropout (drawn on its device, then moved to x0's).
        cond: conditioning passed as the model's third argument, ``(N, ...)`` (class labels, embeddings).
        p_uncond: probability of replacing a sample's ``cond`` by ``null_class`` (classifier-free guidance).
        null_class: the unconditional value (e.g. ``num_classes`` for :class:`~fastgan.models.UNet`).
        t: fixed ``(N,)`` timesteps instead of uniform ones (evaluation at chosen noise levels).
    Returns:
        Scalar float32 loss (mean over every element).
    Raises:
        ValueError: unknown prediction, p_uncond outside [0, 1], label dropout without cond/null_class.
    """
    if prediction not in ("eps", "x0", "v"):
        raise ValueError(f"fastgan: prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"fastgan: p_uncond must be in [0, 1], got {p_uncond}")
    if p_uncond > 0 and (cond is None or null_class is None):
        raise ValueError("fastgan: label dropout (p_uncond > 0) needs cond and null_class")
    if not isinstance(x0, torch.Tensor) or not x0.dtype.is_floating_point or x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError("fastgan: x0 must be a non-empty floating tensor of shape (N, ...)")
    n, device = x0.shape[0], x0.device
    if t is None:
        t = _draw(torch.randint, (n,), generator, device, args=(0, schedule.num_steps), dtype=torch.int64)
    else:  # t = -1 read the table's leading 1 (x_t = x0, a silently wrong loss); t >= T an IndexError
        t = _as_index(t, n, device, "t", schedule.num_steps, allow_minus_one=False)
    noise = _draw(torch.randn, x0.shape, generator, device, dtype=x0.dtype)
    x_t, sa, s1a = q_sample(schedule, x0, t, noise)
    if prediction == "eps":
        target = noise
    elif prediction == "x0":
        target = x0
    else:
        target = sa * noise - s1a * x0
    if cond is None:
        out = model(x_t, t)
    else:
        if p_uncond > 0:
            drop = _draw(torch.rand, (n,), generator, device) < p_uncond
            null = torch.as_tensor(null_class, dtype=cond.dtype, device=device)
            cond = torch.where(drop.reshape((-1,) + (1,) * (cond.dim() - 1)), null, cond)
        out = model(x_t, t, cond)
    if out.shape != x0.shape:
        raise ValueError(f"fastgan: the model returned shape {tuple(out.shape)}, expected x0's {tuple(x0.shape)}")
    return F.mse_loss(out.float(), target.float())


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied): ``ema = decay ema + (1 - decay) p``.

    Args:
        model: the trained model; a frozen deep copy is kept in ``.module`` (eval mode).
        decay: e.g. 0.999; the effective decay warms up as ``min(decay, (1 + k) / (10 + k))`` over the first
            updates so early, poor weights are forgotten quickly.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"fastgan: EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        ema_p = list(self.module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        self.module.load_state_dict(state["module"])


def infinite_batches(images: torch.Tensor, labels: torch.Tensor | None, batch_size: int,
                     generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Endless shuffled minibatches of an in-memory set (a fresh permutation per epoch; the last partial batch of
    an epoch is dropped so every batch has ``batch_size`` rows, unless the set is smaller than one batch).

    Args:
        images: ``(N, ...)``; labels: ``(N,)`` or None.
    Yields:
        ``(images[idx], labels[idx] or None)``.
    """
    n = images.shape[0]
    if n == 0 or batch_size < 1:
        raise ValueError(f"fastgan: need a non-empty set and batch_size >= 1 (got {n} images, batch {batch_size})")
    b = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - b + 1, b):
            idx = perm[start: start + b]
            yield images[idx], (labels[idx] if labels is not None else None)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable, schedule: NoiseSchedule,
                steps: int, *, ema: EMA | None = None, prediction: str = "eps", p_uncond: float = 0.0,
                null_class=None, generator: torch.Generator | None = None, device=None, grad_clip: float | None = 1.0,
                callback: Callable[[int, float], None] | None = None) -> list[float]:
    """Run ``steps`` optimiser steps of :func:`diffusion_loss`.

    Args:
        model, optimizer: what to train.
        batches: iterable of ``(x0, cond)`` (``cond`` None for unconditional), e.g. :func:`infinite_batches`.
        schedule, prediction, p_uncond, null_class, generator: passed to :func:`diffusion_loss`.
        steps: number of updates.
        ema: updated after every step if given.
        device: batches are moved there (default: the model's device).
        grad_clip: clip the global gradient norm (None: off).
        callback: ``callback(step_index, loss)`` after every step (logging, checkpoints).
    Returns:
        The per-step losses (Python floats; one host sync per step, which logging needs anyway).
    """
    device = device if device is not None else next(model.parameters()).device
    model.train()
    losses = []
    it = iter(batches)
    for k in range(steps):
        x0, cond = next(it)
        x0 = x0.to(device, non_blocking=True)
        cond = cond.to(device, non_blocking=True) if cond is not None else None
        loss = diffusion_loss(model, x0, schedule, prediction=prediction, generator=generator, cond=cond,
                              p_uncond=p_uncond if cond is not None else 0.0, null_class=null_class)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        losses.append(loss.item())
        if callback is not None:
            callback(k, losses[-1])
    return losses
