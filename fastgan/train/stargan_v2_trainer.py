"""The StarGAN v2 training step and state, as the official solver does it.

One iteration (:meth:`StarGANv2Trainer.train_step`) on a source batch ``(x_real, y_org)``, two references
``x_ref, x_ref2`` of target domain ``y_trg`` and latents ``z_trg, z_trg2 ~ N(0, I)``:

1. discriminator, latent-guided: ``discriminator_loss(..., z_trg=z_trg)``, backward, D step;
2. discriminator, reference-guided: ``discriminator_loss(..., x_ref=x_ref)``, backward, D step;
3. generator, latent-guided: ``generator_loss(..., z_trgs=[z_trg, z_trg2])``, backward, steps of the generator,
   mapping network and style encoder;
4. generator, reference-guided: ``generator_loss(..., x_refs=[x_ref, x_ref2])``, backward, generator step only;
5. EMA of generator, mapping network and style encoder (``moving_average`` with ``cfg.ema_beta``).

All gradients are cleared before each backward (the official ``_reset_grad``), since a generator loss also leaves
gradients in the discriminator. The diversity-sensitive weight decays linearly from ``cfg.lambda_ds`` to 0 over
``cfg.ds_iter`` iterations; it is computed from the iteration index rather than decremented, so a resumed run uses
the same value. Optimisers are Adam with ``betas=(beta1, beta2)`` and ``weight_decay``; ``lr`` for the generator,
style encoder and discriminator, ``f_lr`` for the mapping network. Under ``torchrun`` gradients are averaged across
ranks after each backward (see :mod:`fastgan.train.distributed` for why not DDP).
"""
from __future__ import annotations

import torch

from . import distributed as fdist

NETS = ("generator", "mapping_network", "style_encoder", "discriminator")
EMA_NETS = ("generator", "mapping_network", "style_encoder")


def _model_module():
    # Imported lazily: `fastgan train --help` and the checkpoint tools work without building a model.
    from ..models import stargan_v2
    return stargan_v2


def _losses_module():
    from ..models import stargan_v2_losses
    return stargan_v2_losses


def lambda_ds_at(cfg, iteration: int) -> float:
    """Diversity-sensitive loss weight at 0-based ``iteration``: ``lambda_ds * max(0, 1 - iteration / ds_iter)``."""
    if cfg.ds_iter <= 0:
        return 0.0
    return float(cfg.lambda_ds) * max(0.0, 1.0 - iteration / float(cfg.ds_iter))


class StarGANv2Trainer:
    """Networks, EMA copies and optimisers of one StarGAN v2 run, and the training step.

    Args:
        cfg: a ``fastgan.models.stargan_v2.StarGANv2Config``.
        device: where the networks live.
        dist: the process's :class:`fastgan.train.distributed.DistInfo` (default: single process).
    Attributes:
        nets, nets_ema: ``nn.ModuleDict`` of the networks (see :data:`NETS`) and their EMA copies.
        optims: one Adam per network in ``nets``.
    """

    def __init__(self, cfg, device="cpu", dist: fdist.DistInfo | None = None):
        self.cfg, self.device = cfg, torch.device(device)
        self.dist = dist or fdist.DistInfo(device=self.device)
        nets, nets_ema = _model_module().build_model(cfg)
        self.nets, self.nets_ema = nets.to(self.device), nets_ema.to(self.device)
        # Same seed on every rank gives the same initial weights; broadcasting makes it certain (and costs once).
        fdist.broadcast_modules([self.nets, self.nets_ema], self.dist)
        self.optims = {
            name: torch.optim.Adam(self.nets[name].parameters(),
                                   lr=cfg.f_lr if name == "mapping_network" else cfg.lr,
                                   betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
            for name in NETS}

    def _zero_grad(self) -> None:
        for opt in self.optims.values():
            opt.zero_grad(set_to_none=True)

    def _backward_and_step(self, loss: torch.Tensor, names: tuple[str, ...]) -> None:
        self._zero_grad()
        loss.backward()
        fdist.all_reduce_grads([self.nets[n] for n in names], self.dist)
        for n in names:
            self.optims[n].step()

    def train_step(self, iteration: int, x_real, y_org, x_ref, x_ref2, y_trg, z_trg, z_trg2) -> dict[str, float]:
        """One StarGAN v2 iteration (see the module doc).

        Args:
            iteration: 0-based index of this iteration (sets the diversity weight).
            x_real, y_org: source images ``(N, 3, S, S)`` in [-1, 1] and their domains ``(N,)``.
            x_ref, x_ref2, y_trg: two reference images of domain ``y_trg``.
            z_trg, z_trg2: latents ``(N, latent_dim)``.
        Returns:
            Losses of this iteration: the four loss dicts with prefixes ``D/latent_``, ``D/ref_``, ``G/latent_``,
            ``G/ref_``, plus ``D`` and ``G`` (means of the two total losses of each), ``cyc`` (mean cycle loss
            when reported) and ``lambda_ds``.
        """
        L = _losses_module()
        cfg, nets = self.cfg, self.nets
        for m in nets.values():
            m.train()
        out: dict[str, float] = {}

        d_latent, d_lat_terms = L.discriminator_loss(nets, cfg, x_real, y_org, y_trg, z_trg=z_trg)
        self._backward_and_step(d_latent, ("discriminator",))
        d_ref, d_ref_terms = L.discriminator_loss(nets, cfg, x_real, y_org, y_trg, x_ref=x_ref)
        self._backward_and_step(d_ref, ("discriminator",))

        lam = lambda_ds_at(cfg, iteration)
        g_latent, g_lat_terms = L.generator_loss(nets, cfg, x_real, y_org, y_trg, z_trgs=[z_trg, z_trg2],
                                                 lambda_ds=lam)
        self._backward_and_step(g_latent, ("generator", "mapping_network", "style_encoder"))
        g_ref, g_ref_terms = L.generator_loss(nets, cfg, x_real, y_org, y_trg, x_refs=[x_ref, x_ref2], lambda_ds=lam)
        self._backward_and_step(g_ref, ("generator",))

        self.update_ema()

        for prefix, terms in (("D/latent_", d_lat_terms), ("D/ref_", d_ref_terms), ("G/latent_", g_lat_terms),
                              ("G/ref_", g_ref_terms)):
            out.update({prefix + k: float(v) for k, v in terms.items()})
        out["D"] = 0.5 * (float(d_latent.detach()) + float(d_ref.detach()))
        out["G"] = 0.5 * (float(g_latent.detach()) + float(g_ref.detach()))
        cyc = [out[k] for k in ("G/latent_cyc", "G/ref_cyc") if k in out]
        if cyc:
            out["cyc"] = sum(cyc) / len(cyc)
        out["lambda_ds"] = lam
        return out

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of generator, mapping network and style encoder into ``nets_ema`` (``cfg.ema_beta``)."""
        mod = _model_module()
        for n in EMA_NETS:
            mod.moving_average(self.nets[n], self.nets_ema[n], beta=self.cfg.ema_beta)

    def state_dict(self) -> dict:
        """Networks, EMA networks and optimiser states (tensors stay on their device; torch.save maps them)."""
        return {"config": self.cfg.to_dict(),
                "nets": {n: m.state_dict() for n, m in self.nets.items()},
                "nets_ema": {n: m.state_dict() for n, m in self.nets_ema.items()},
                "optims": {n: o.state_dict() for n, o in self.optims.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (strict: the architecture must match)."""
        for n, m in self.nets.items():
            m.load_state_dict(state["nets"][n])
        for n, m in self.nets_ema.items():
            m.load_state_dict(state["nets_ema"][n])
        for n, o in self.optims.items():
            o.load_state_dict(state["optims"][n])

    def all_modules(self) -> list:
        """Every network and EMA network (for digests and broadcasts)."""
        return [self.nets, self.nets_ema]
