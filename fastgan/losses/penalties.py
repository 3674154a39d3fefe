"""Gradient penalties (WGAN-GP, DRAGAN, R1, R2) and StyleGAN2's lazy regularisation.

Every penalty here is ``weight * mean_n p(g_n)``, where ``g_n`` is the gradient of the critic's (summed) output with
respect to the n-th input sample, evaluated at points that depend on the kind:

============  ================================================  ===========================  ==============
kind          points x_hat                                      per-sample p(g)              default weight
============  ================================================  ===========================  ==============
``wgan-gp``   ``alpha * real + (1 - alpha) * fake``,            ``(||g||_2 - target)^2``     10 (lambda)
              ``alpha ~ U[0, 1)`` one per sample
``dragan``    ``real + c * std(real) * U[0, 1)`` elementwise    ``(||g||_2 - target)^2``     10 (lambda)
``r1``        ``real``                                          ``0.5 * ||g||_2^2``          10 (gamma)
``r2``        ``fake``                                          ``0.5 * ||g||_2^2``          10 (gamma)
============  ================================================  ===========================  ==============

So for R1/R2 ``weight`` is the ``gamma`` of Mescheder et al. (2018) and StyleGAN, and the ``1/2`` is inside the
penalty: ``gradient_penalty(..., kind="r1", weight=gamma) == gamma / 2 * E||grad D(real)||^2``, which is StyleGAN2's
``r1_penalty * (r1_gamma / 2)`` and StarGAN v2's ``lambda_reg * r1_reg`` (StarGAN v2 trains with ``weight=1``).

Gradients are taken with ``create_graph=True``, so ``penalty.backward()`` runs the double backward through the
critic; for a critic built from fastgan's ops (``fastgan.nn.InstanceNorm2d``, ``fastgan.nn.AdaIN``, ...) that double
backward runs on their fused kernels.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from ..ops.grad_penalty import KINDS, canonical_kind, grad_penalty

__all__ = [
    "DEFAULT_WEIGHTS",
    "KINDS",
    "LazyRegularizer",
    "gradient_penalty",
    "lazy_adam_params",
    "penalty_from_grad",
]

#: Default ``weight`` per kind: lambda = 10 for WGAN-GP (Gulrajani et al.) and DRAGAN (Kodali et al.), gamma = 10 for
#: R1/R2 (Mescheder et al., StyleGAN/StyleGAN2 on FFHQ). The penalty is ``weight * mean(p(g))`` in every case.
DEFAULT_WEIGHTS = {"wgan-gp": 10.0, "dragan": 10.0, "r1": 10.0, "r2": 10.0}


def _canonical_kind(kind: str) -> str:
    return canonical_kind(kind)


def penalty_from_grad(grad: torch.Tensor, kind: str = "wgan-gp", target: float = 1.0) -> torch.Tensor:
    """Per-sample penalty from the critic's input gradient ``grad`` of shape ``(N, ...)``; returns shape ``(N,)``.

    * ``"wgan-gp"``, ``"dragan"``: ``(||g_n||_2 - target)^2`` (two-sided), ``g_n = grad[n].flatten()``.
    * ``"r1"``, ``"r2"``: ``0.5 * ||g_n||_2^2``; ``target`` is ignored.

    Runs on the fused op :func:`fastgan.ops.grad_penalty` (one pass over ``grad`` per sample; its backward, the
    gradient w.r.t. ``grad`` that flows into the critic's double backward, and that backward's own derivative are
    fused kernels too), choosing the implementation by device like every fastgan op (``fastgan.use_impl`` pins
    one). The result has grad's dtype and equals the plain-PyTorch formula above (``impl="ref"``); at a zero
    gradient the two-sided penalty's gradient is 0, as with ``torch.linalg.vector_norm``.
    """
    k = _canonical_kind(kind)
    if not isinstance(grad, torch.Tensor) or grad.dim() < 1:
        raise ValueError("penalty_from_grad: grad must have a batch dimension, got a 0-d tensor")
    return grad_penalty(grad, k, target)


def _sum_outputs(out: Any, path: str = "output") -> torch.Tensor | None:
    """Sum every floating-point tensor in a (possibly nested) critic output to one scalar (None if there is none)."""
    if isinstance(out, torch.Tensor):
        if not out.is_floating_point():
            return None
        return out.sum()
    if isinstance(out, Mapping):
        items = [(f"{path}[{k!r}]", v) for k, v in out.items()]
    elif isinstance(out, Sequence) and not isinstance(out, (str, bytes)):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(out)]
    else:
        raise TypeError(f"gradient_penalty: critic {path} has type {type(out).__name__}; expected a tensor, or a "
                        "tuple/list/dict of tensors")
    total = None
    for name, v in items:
        s = _sum_outputs(v, name)
        if s is not None:
            total = s if total is None else total + s
    return total


def _rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) of ``shape`` in ``like``'s dtype and device, drawn from ``generator`` (on the generator's device)."""
    if generator is None or generator.device == like.device:
        return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)


def _check_pair(real: torch.Tensor, fake: torch.Tensor) -> None:
    if tuple(real.shape) != tuple(fake.shape):
        raise ValueError(f"gradient_penalty: real and fake must have the same shape, got real {tuple(real.shape)} "
                         f"and fake {tuple(fake.shape)}")
    if real.dtype != fake.dtype or real.device != fake.device:
        raise ValueError(f"gradient_penalty: real and fake must share dtype and device, got real {real.dtype} on "
                         f"{real.device} and fake {fake.dtype} on {fake.device}")


def _penalty_points(kind: str, real, fake, dragan_c: float, generator) -> torch.Tensor:
    """The (detached) points the critic's gradient is evaluated at, before ``requires_grad_``."""
    if kind == "r2":
        if fake is None:
            raise ValueError("gradient_penalty: kind='r2' penalises the critic at fake samples; pass fake=")
        if not isinstance(fake, torch.Tensor) or fake.dim() < 1:
            raise ValueError("gradient_penalty: fake must be a tensor with a batch dimension")
        return fake.detach()
    if not isinstance(real, torch.Tensor) or real.dim() < 1:
        raise ValueError("gradient_penalty: real must be a tensor with a batch dimension")
    if not real.is_floating_point():
        raise ValueError(f"gradient_penalty: real must be floating point, got {real.dtype}")
    real = real.detach()
    if kind == "r1":
        return real
    if kind == "dragan":
        # Kodali et al.'s reference code: X + 0.5 * X.std() * U[0, 1) elementwise, with one scalar std over the
        # whole real batch, treated as a constant. numpy's ndarray.std() there is the population std (ddof=0).
        std = real.std(correction=0)
        return real + dragan_c * std * _rand(real.shape, real, generator)
    # wgan-gp
    if fake is None:
        raise ValueError("gradient_penalty: kind='wgan-gp' interpolates between real and fake samples; pass fake=")
    if not isinstance(fake, torch.Tensor):
        raise ValueError(f"gradient_penalty: fake must be a tensor, got {type(fake).__name__}")
    _check_pair(real, fake)
    alpha = _rand((real.shape[0],) + (1,) * (real.dim() - 1), real, generator)
    return alpha * real + (1 - alpha) * fake.detach()


def gradient_penalty(
    critic: Callable[..., Any],
    real: torch.Tensor | None,
    fake: torch.Tensor | None = None,
    kind: str = "wgan-gp",
    weight: float | None = None,
    target: float = 1.0,
    dragan_c: float = 0.5,
    generator: torch.Generator | None = None,
    critic_args: tuple = (),
    critic_kwargs: dict | None = None,
    return_outputs: bool = False,
):
    """Gradient penalty of ``critic`` at points built from ``real``/``fake``; ``weight * mean_n p(grad_n)``.

    Args:
        critic: callable run as ``critic(x_hat, *critic_args, **critic_kwargs)``. Its output may be a tensor of any
            shape (one logit per sample, a PatchGAN map, a StarGAN-v2 output already indexed by domain, ...) or a
            tuple/list/dict of tensors (multi-output critics); every floating-point tensor in it is summed to one
            scalar, and the gradient of that sum w.r.t. ``x_hat`` is the per-sample input gradient (samples must be
            independent in the critic: no BatchNorm in training mode, no minibatch-stddev layer).
        real: real batch ``(N, ...)``. Used by ``wgan-gp``, ``dragan`` and ``r1``; ignored (may be None) for ``r2``.
        fake: fake batch, same shape/dtype/device as ``real``. Needed by ``wgan-gp`` and ``r2``; ignored otherwise.
            Both are detached: the penalty's gradient reaches the critic's parameters, never the generator.
        kind: ``"wgan-gp"`` | ``"dragan"`` | ``"r1"`` | ``"r2"`` (``_`` for ``-`` and any case accepted).
            * wgan-gp: ``x_hat = alpha * real + (1 - alpha) * fake`` with one ``alpha ~ U[0, 1)`` per sample, drawn
              as ``torch.rand((N, 1, ..., 1), generator=generator)`` in real's dtype; ``p = (||g||_2 - target)^2``.
            * dragan: ``x_hat = real + dragan_c * real.std(correction=0) * torch.rand(real.shape,
              generator=generator)``: one scalar std over the whole real batch (all elements, the population std
              as numpy's in Kodali et al.'s reference code, a constant), uniform noise as there (the paper writes
              a Gaussian); ``p = (||g||_2 - target)^2``.
            * r1: ``x_hat = real``; ``p = 0.5 * ||g||_2^2``. r2: the same at ``fake``.
        weight: multiplies the batch mean of ``p``. Default (None) per kind: 10 (WGAN-GP lambda), 10 (DRAGAN
            lambda), 10 (R1/R2 gamma, so the penalty is ``gamma/2 * E||g||^2`` as in StyleGAN).
        target: the norm the two-sided penalties pull towards (1 for WGAN-GP/DRAGAN). Ignored by r1/r2.
        dragan_c: the DRAGAN perturbation scale ``c`` (0.5 in the paper's code).
        generator: ``torch.Generator`` for the random draws (wgan-gp, dragan), for reproducibility. A generator on
            another device than ``real`` draws there and the values are copied over.
        critic_args, critic_kwargs: passed through to the critic (class labels, domain indices, conditions).
        return_outputs: also return the critic's output on ``x_hat`` (as the critic returned it, still attached to
            the critic's parameters). For r1 these are the real logits: a discriminator step can compute its real
            loss from them instead of running the critic on the real batch a second time (StarGAN v2 does this).

    Returns:
        the penalty (0-d tensor), or ``(penalty, outputs)`` with ``return_outputs=True``.

    Raises:
        ValueError: unknown kind; a fake batch required but missing; real/fake shape, dtype or device mismatch; a
            critic output that does not depend on its input (or carries no gradient at all).
    """
    k = _canonical_kind(kind)
    if weight is None:
        weight = DEFAULT_WEIGHTS[k]
    if critic_kwargs is None:
        critic_kwargs = {}
    if not isinstance(critic_args, (tuple, list)):
        critic_args = (critic_args,)
    with torch.enable_grad():
        x_hat = _penalty_points(k, real, fake, dragan_c, generator).requires_grad_(True)
        outputs = critic(x_hat, *critic_args, **critic_kwargs)
        total = _sum_outputs(outputs)
        if total is None:
            raise ValueError("gradient_penalty: the critic returned no floating-point tensor to differentiate")
        if not total.requires_grad:
            raise ValueError("gradient_penalty: the critic's output does not depend on its input (it carries no "
                             "gradient at all: was it computed under torch.no_grad() or detached?)")
        (grad,) = torch.autograd.grad(total, x_hat, create_graph=True, allow_unused=True)
        if grad is None:
            raise ValueError("gradient_penalty: the critic's output does not depend on its input x, so its gradient "
                             "w.r.t. x is undefined (does the critic use its first argument? is it detached inside?)")
        penalty = weight * penalty_from_grad(grad, k, target).mean()
    return (penalty, outputs) if return_outputs else penalty


class LazyRegularizer:
    """StyleGAN2's lazy regularisation: apply the penalty every ``every`` steps only, with its weight times ``every``.

    Usage, StyleGAN2's scheme (the penalty as its own optimiser step every ``every`` steps)::

        lazy = LazyRegularizer(every=16)
        opt_d = torch.optim.Adam(D.parameters(), **lazy.adam_params(lr=2e-3, betas=(0.0, 0.99)))
        for step in range(num_steps):
            opt_d.zero_grad(); d_loss(...).backward(); opt_d.step()
            if lazy.should_run(step):
                opt_d.zero_grad(); lazy.scale(gradient_penalty(D, real, kind="r1")).backward(); opt_d.step()

    ``should_run(step)`` is true for ``step % every == 0`` (steps 0, k, 2k, ...); ``scale(p)`` is ``p * every`` so
    the penalty's average contribution per step is unchanged. ``every=1`` is ordinary (every-step) regularisation.
    Adding ``lazy.scale(penalty)`` to the loss of the same step instead (one optimiser step per iteration) is the
    common simpler variant; there the optimiser takes one step per iteration and needs no adjustment, whereas the
    two-step scheme above takes ``every + 1`` steps per ``every`` iterations, which :func:`lazy_adam_params`
    (``adam_params``) compensates.
    """

    def __init__(self, every: int = 16):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"LazyRegularizer: every must be a positive integer, got {every!r}")
        self.every = every

    def should_run(self, step: int) -> bool:
        """True when the penalty is due at (0-based) ``step``: ``step % every == 0``."""
        if step < 0:
            raise ValueError(f"LazyRegularizer.should_run: step must be >= 0, got {step}")
        return step % self.every == 0

    def scale(self, penalty):
        """``penalty * every``: the weight scaled by the interval, so the expected penalty per step is unchanged."""
        return penalty * self.every

    def adam_params(self, lr: float, betas: tuple[float, float] = (0.0, 0.99)) -> dict:
        """``{"lr": ..., "betas": ...}`` adjusted for this interval; see :func:`lazy_adam_params`."""
        lr_c, betas_c = lazy_adam_params(lr, betas, self.every)
        return {"lr": lr_c, "betas": betas_c}

    def __repr__(self) -> str:
        return f"LazyRegularizer(every={self.every})"


def lazy_adam_params(lr: float, betas: tuple[float, float], every: int) -> tuple[float, tuple[float, float]]:
    """Adam hyper-parameters for a network regularised lazily every ``every`` steps (StyleGAN2, appendix B).

    With ``c = every / (every + 1)``, returns ``(lr * c, (beta1 ** c, beta2 ** c))``. Each regularised
    "minibatch" of ``every`` steps then counts ``every + 1`` optimiser steps (``every`` loss steps plus one penalty
    step in StyleGAN2's scheme), so learning rate and the Adam momenta are rescaled to keep their per-iteration
    effect. ``every=1`` still changes them (c = 1/2), as in StyleGAN2; skip this helper for non-lazy training.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"lazy_adam_params: every must be a positive integer, got {every!r}")
    c = every / (every + 1)
    b1, b2 = betas
    return lr * c, (b1 ** c, b2 ** c)
