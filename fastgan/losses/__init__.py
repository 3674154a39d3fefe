"""GAN losses and gradient penalties.

Gradient penalties (:mod:`fastgan.losses.penalties`) need the critic's input gradient with ``create_graph=True`` and
a backward through it (double backward); on critics built from fastgan's ops that double backward runs on fused
kernels. ::

    from fastgan.losses import gradient_penalty, ns_d_loss

    gp = gradient_penalty(D, real, fake, kind="wgan-gp", generator=g)          # 10 * E(||grad D(x_hat)||_2 - 1)^2
    r1, real_logits = gradient_penalty(D, real, kind="r1", weight=1.0,          # 1/2 * E||grad D(real)||^2
                                       critic_args=(y,), return_outputs=True)  # D(x, y): StarGAN v2's call
    loss_d = ns_d_loss(real_logits, D(fake, y)) + r1                            # real logits reused

Standard GAN losses (:mod:`fastgan.losses.gan_losses`) take logits and return the mean: non-saturating
(``ns_d_loss``/``ns_g_loss``), minimax (``vanilla_g_loss``), least squares (``lsgan_*``), Wasserstein (``wgan_*``,
``clip_weights_``) and hinge (``hinge_*``). :class:`LazyRegularizer` and :func:`lazy_adam_params` implement
StyleGAN2's lazy regularisation.
"""
from .gan_losses import (
    clip_weights_,
    hinge_d_loss,
    hinge_g_loss,
    lsgan_d_loss,
    lsgan_g_loss,
    ns_d_loss,
    ns_g_loss,
    vanilla_d_loss,
    vanilla_g_loss,
    wgan_d_loss,
    wgan_g_loss,
)
from .penalties import (
    DEFAULT_WEIGHTS,
    KINDS,
    LazyRegularizer,
    gradient_penalty,
    lazy_adam_params,
    penalty_from_grad,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "KINDS",
    "LazyRegularizer",
    "clip_weights_",
    "gradient_penalty",
    "hinge_d_loss",
    "hinge_g_loss",
    "lazy_adam_params",
    "lsgan_d_loss",
    "lsgan_g_loss",
    "ns_d_loss",
    "ns_g_loss",
    "penalty_from_grad",
    "vanilla_d_loss",
    "vanilla_g_loss",
    "wgan_d_loss",
    "wgan_g_loss",
]
