"""StarGAN v2's training losses (Choi et al. 2020, official ``compute_d_loss`` / ``compute_g_loss``).

Discriminator, one step with either a latent code or a reference image for the fake's style::

    L_D = E[softplus(-D(x, y_org))] + E[softplus(D(G(x, s~), y_trg))] + lambda_reg * R1
    R1  = 0.5 * mean_n ||grad_x D(x, y_org)_n||^2          (zero-centred, on the real batch)

with ``s~ = F(z, y_trg)`` or ``E(x_ref, y_trg)`` and the fake generated under ``no_grad``. R1 is
:func:`fastgan.losses.gradient_penalty` with ``kind="r1"`` — its ``weight * mean_n 0.5 * ||g_n||^2`` is the
official ``r1_reg`` exactly for ``weight=1`` — and ``return_outputs=True`` hands back the real logits, so the
discriminator runs once on the real batch (its double backward runs on fastgan's fused kernels in the fastgan build).

Generator, with two latent codes (or two references) for the diversity term::

    L_G = E[softplus(-D(G(x, s~), y_trg))] + lambda_sty * E|s~ - E(G(x, s~), y_trg)|
          - lambda_ds * E|G(x, s~) - sg(G(x, s~2))| + lambda_cyc * E|x - G(G(x, s~), E(x, y_org))|

(``sg`` = detached). The non-saturating terms are fastgan's :func:`~fastgan.losses.ns_d_loss` /
:func:`~fastgan.losses.ns_g_loss` formulas (binary cross-entropy on logits, as the official ``adv_loss``).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..losses import gradient_penalty, ns_g_loss
from .stargan_v2 import StarGANv2Config, check_labels

__all__ = ["discriminator_loss", "generator_loss"]


def _nets(nets: Mapping, names: Sequence[str], who: str) -> list:
    missing = [n for n in names if n not in nets]
    if missing:
        raise ValueError(f"{who}: nets has no {missing} (expected the keys of build_model's nets: {list(names)})")
    return [nets[n] for n in names]


def _one_of(a, b, name_a: str, name_b: str, who: str) -> None:
    if (a is None) == (b is None):
        raise ValueError(f"{who}: give exactly one of {name_a} (latent-guided) and {name_b} (reference-guided), "
                         f"got {'both' if a is not None else 'neither'}")


def _pair(v, name: str, who: str) -> tuple:
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"{who}: {name} must be a pair (two latent codes or two reference batches for the "
                         f"diversity loss), got {type(v).__name__}")
    return tuple(v)


def _check_real(x_real, who: str) -> int:
    if not isinstance(x_real, torch.Tensor) or x_real.dim() != 4 or not x_real.is_floating_point():
        raise ValueError(f"{who}: x_real must be a floating-point image batch (N, C, H, W), got "
                         f"{tuple(x_real.shape) if isinstance(x_real, torch.Tensor) else type(x_real).__name__}")
    return x_real.shape[0]


def _floats(**terms: torch.Tensor) -> dict[str, float]:
    # One device->host copy for all the logged values instead of one .item() sync each.
    values = torch.stack([t.detach().float() for t in terms.values()]).tolist()
    return dict(zip(terms, values))


def discriminator_loss(nets, cfg: StarGANv2Config, x_real: torch.Tensor, y_org: torch.Tensor, y_trg: torch.Tensor,
                       z_trg: torch.Tensor | None = None, x_ref: torch.Tensor | None = None,
                       masks: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """StarGAN v2 discriminator loss (official ``compute_d_loss``).

    Args:
        nets: ``build_model``'s nets (``generator``, ``mapping_network``, ``style_encoder``, ``discriminator``).
        cfg: uses ``lambda_reg``.
        x_real: real images ``(N, C, H, W)`` (not modified; R1's gradient is taken at a detached copy).
        y_org: their domains ``(N,)``. y_trg: target domains ``(N,)`` for the fakes.
        z_trg: latent codes ``(N, latent_dim)`` (latent-guided) — or —
        x_ref: reference images ``(N, C, H, W)`` of domains ``y_trg`` (reference-guided); exactly one of the two.
        masks: face heatmap pair for the generator (``w_hpf > 0``), or None.

    Returns:
        ``(loss, {"real", "fake", "reg"})``: the 0-d loss ``real + fake + lambda_reg * reg`` and the floats of its
        terms, ``reg`` unweighted (as the official logs). Gradients reach the discriminator only.
    """
    who = "discriminator_loss"
    _one_of(z_trg, x_ref, "z_trg", "x_ref", who)
    G, M, E, D = _nets(nets, ("generator", "mapping_network", "style_encoder", "discriminator"), who)
    n = _check_real(x_real, who)
    check_labels(y_org, n, D.num_domains, who, "y_org")
    # Real: R1 at x_real, and the logits it computed on the way serve the adversarial term (one D pass, not two).
    reg, real_logits = gradient_penalty(D, x_real, kind="r1", weight=1.0, critic_args=(y_org,), return_outputs=True)
    loss_real = ns_g_loss(real_logits)  # softplus(-r): BCE with label 1
    with torch.no_grad():
        s_trg = M(z_trg, y_trg) if z_trg is not None else E(x_ref, y_trg)
        x_fake = G(x_real, s_trg, masks=masks)
    loss_fake = F.softplus(D(x_fake, y_trg)).mean()  # BCE with label 0
    loss = loss_real + loss_fake + cfg.lambda_reg * reg
    return loss, _floats(real=loss_real, fake=loss_fake, reg=reg)


def generator_loss(nets, cfg: StarGANv2Config, x_real: torch.Tensor, y_org: torch.Tensor, y_trg: torch.Tensor,
                   z_trgs: Sequence[torch.Tensor] | None = None, x_refs: Sequence[torch.Tensor] | None = None,
                   masks: Sequence[torch.Tensor] | None = None, lambda_ds: float | None = None, *,
                   mask_fn: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None,
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """StarGAN v2 generator loss (official ``compute_g_loss``): adversarial + style reconstruction - diversity +
    cycle consistency.

    Args:
        nets: ``build_model``'s nets.
        cfg: uses ``lambda_sty``, ``lambda_cyc``, ``lambda_ds`` (unless ``lambda_ds`` is given).
        x_real: source images ``(N, C, H, W)``. y_org: their domains ``(N,)``. y_trg: target domains ``(N,)``.
        z_trgs: two latent batches ``(z, z2)``, each ``(N, latent_dim)`` — or —
        x_refs: two reference batches ``(x_ref, x_ref2)`` of domains ``y_trg``; exactly one of the two.
        masks: face heatmap pair (``w_hpf > 0``) for generating from ``x_real``, or None.
        lambda_ds: weight of the diversity term; None means ``cfg.lambda_ds`` (the trainer passes the linearly
            decayed value).
        mask_fn: heatmaps of the fake for the cycle pass, ``mask_fn(x_fake)`` (the official model's
            ``fan.get_heatmap``). Without it the cycle pass reuses ``masks`` (the fake keeps the source's pose).

    Returns:
        ``(loss, {"adv", "sty", "ds", "cyc"})``: the 0-d loss and the floats of its unweighted terms.
        Gradients reach the generator, mapping network and style encoder (and the discriminator's parameters
        through ``adv``: zero its gradients before its own step, as the official solver does).
    """
    who = "generator_loss"
    _one_of(z_trgs, x_refs, "z_trgs", "x_refs", who)
    G, M, E, D = _nets(nets, ("generator", "mapping_network", "style_encoder", "discriminator"), who)
    n = _check_real(x_real, who)
    check_labels(y_org, n, D.num_domains, who, "y_org")
    lam_ds = cfg.lambda_ds if lambda_ds is None else lambda_ds
    if z_trgs is not None:
        first, second = _pair(z_trgs, "z_trgs", who)
        style = M
    else:
        first, second = _pair(x_refs, "x_refs", who)
        style = E

    s_trg = style(first, y_trg)
    x_fake = G(x_real, s_trg, masks=masks)
    loss_adv = ns_g_loss(D(x_fake, y_trg))
    loss_sty = (E(x_fake, y_trg) - s_trg).abs().mean()
    # Diversity: the second image is a constant target (the official detaches it, so neither it nor its style code
    # sends gradient anywhere): computed without a graph.
    with torch.no_grad():
        x_fake2 = G(x_real, style(second, y_trg), masks=masks)
    loss_ds = (x_fake - x_fake2).abs().mean()
    cyc_masks = masks
    if mask_fn is not None and masks is not None:
        with torch.no_grad():  # heatmaps are an input of the cycle pass, not differentiated (as the official FAN)
            cyc_masks = mask_fn(x_fake)
    x_rec = G(x_fake, E(x_real, y_org), masks=cyc_masks)
    loss_cyc = (x_rec - x_real).abs().mean()
    loss = loss_adv + cfg.lambda_sty * loss_sty - lam_ds * loss_ds + cfg.lambda_cyc * loss_cyc
    return loss, _floats(adv=loss_adv, sty=loss_sty, ds=loss_ds, cyc=loss_cyc)
