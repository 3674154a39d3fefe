"""Benchmark cases for one StarGAN v2 training iteration: the fastgan build against the ``torch.nn`` build.

One iteration is the official solver's: a discriminator step with a latent-guided fake and one with a
reference-guided fake (each with R1 on the real batch: a double backward through the discriminator), a generator
step with latent codes (generator, mapping network and style encoder updated) and one with references (generator
updated), Adam with the official hyper-parameters, and the EMA update of the three networks. ``"eager"`` is
``build_model(impl="torch")``, ``"fastgan-auto"`` is ``build_model(impl="fastgan")`` (every fastgan op on its
automatic backend: the C++ kernels on CPU, CUDA C++ or Triton on a GPU), loaded with the same weights; on CUDA
``"fastgan-cl"`` is that build with ``channels_last=True``.
"""
from __future__ import annotations

import contextlib

import torch

from .suites import Case, HOPPER, SuiteOptions, Target, fastgan_impls, register_suite

SUITE = "stargan_v2"
H100_MIN_SPEEDUP = 1.5
# The official AFHQ setting (3 domains, no high-pass path) at 256x256, batch 8: the goal.
OFFICIAL = dict(img_size=256, num_domains=3, dim_in=None, max_conv_dim=512, hidden_dim=512, style_dim=64,
                latent_dim=16, w_hpf=0.0)
# CPU-sized models (2 cores: one iteration takes well under a second), batch 2.
CPU_SMALL = (
    dict(img_size=32, num_domains=2, dim_in=16, max_conv_dim=64, hidden_dim=64, style_dim=16, latent_dim=8),
    dict(img_size=64, num_domains=2, dim_in=16, max_conv_dim=64, hidden_dim=64, style_dim=16, latent_dim=8),
)
CPU_BATCH, GPU_BATCH = 2, 8
SEED = 1234

NOTES = f"""
One full training iteration per call (mode `train`): two discriminator steps (latent- and reference-guided fake, R1
on the real batch, i.e. a double backward through the discriminator), two generator steps (latent: generator,
mapping network and style encoder; reference: generator), Adam (official lr/betas/weight decay) and the EMA update.
`eager` = `build_model(impl="torch")` (the official `torch.nn` formulation), `fastgan-auto` =
`build_model(impl="fastgan")` with the same weights, and on CUDA `fastgan-cl` the same fastgan build with
`channels_last=True` (NHWC activations end to end); `bf16` cases run under `torch.autocast(dtype=bfloat16)` with
float32 weights. **The bytes floor does not apply** to a whole iteration (dominated by convolutions, which both builds
run on the same library kernels), so it is set to 0 and the GB/s, % ceiling and floor columns carry no information:
read µs per iteration and *vs eager* (the speedup). No `torch.compile` baseline (R1's double backward does not
compile). Goal: ≥ {H100_MIN_SPEEDUP}x on the H100 at the official sizes (256x256, dim_in 64, batch {GPU_BATCH}, 3
domains), fp32 and bf16 autocast. CPU default preset:
toy models (`layout` = `toy-dim16`: img 32 and 64, dim_in 16, channel cap 64, batch {CPU_BATCH}, fp32); `--full`
for the official sizes. The correctness check compares the four losses of the first iteration (same weights and
inputs in both builds).
"""


class _Trainer:
    """One build's networks, optimisers and the iteration; built on first use (cases stay cheap to list)."""

    def __init__(self, cfg, device: str, state: dict | None):
        from ..models.stargan_v2 import build_model

        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # reproducible weights without touching the caller's RNG
            torch.manual_seed(SEED)
            self.nets, self.nets_ema = build_model(cfg)
        if state is not None:  # the other build's initial weights
            self.nets.load_state_dict(state["nets"])
            self.nets_ema.load_state_dict(state["ema"])
        self.nets.to(device)
        self.nets_ema.to(device)
        self.opt = {
            name: torch.optim.Adam(net.parameters(), lr=cfg.f_lr if name == "mapping_network" else cfg.lr,
                                   betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
            for name, net in self.nets.items()
        }

    def initial_state(self) -> dict:
        return {"nets": {k: v.detach().cpu().clone() for k, v in self.nets.state_dict().items()},
                "ema": {k: v.detach().cpu().clone() for k, v in self.nets_ema.state_dict().items()}}

    def _step(self, loss: torch.Tensor, names: tuple[str, ...]) -> None:
        for opt in self.opt.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for name in names:
            self.opt[name].step()

    def iteration(self, dtype: torch.dtype, x_real, y_org, y_trg, z, z2, x_ref, x_ref2) -> torch.Tensor:
        from ..models.stargan_v2 import moving_average
        from ..models.stargan_v2_losses import discriminator_loss, generator_loss

        cfg, nets = self.cfg, self.nets
        amp = (torch.autocast(x_real.device.type, dtype=dtype) if dtype != torch.float32
               else contextlib.nullcontext())
        losses = []
        for kw in ({"z_trg": z}, {"x_ref": x_ref}):
            with amp:
                loss, _ = discriminator_loss(nets, cfg, x_real, y_org, y_trg, **kw)
            self._step(loss, ("discriminator",))
            losses.append(loss.detach().float())
        for kw, names in (({"z_trgs": (z, z2)}, ("generator", "mapping_network", "style_encoder")),
                          ({"x_refs": (x_ref, x_ref2)}, ("generator",))):
            with amp:
                loss, _ = generator_loss(nets, cfg, x_real, y_org, y_trg, **kw)
            self._step(loss, names)
            losses.append(loss.detach().float())
        for name, ema in self.nets_ema.items():
            moving_average(nets[name], ema, beta=cfg.ema_beta)
        return torch.stack(losses)


class _Pair:
    """The torch build and the fastgan build of one case, the second loaded with the first's initial weights."""

    def __init__(self, cfg_kwargs: dict, device: str):
        self.cfg_kwargs, self.device = cfg_kwargs, device
        self.trainers: dict[str, _Trainer] = {}
        self.state: dict | None = None

    def get(self, impl: str) -> _Trainer:
        """``"torch"``, ``"fastgan"`` or ``"fastgan-cl"`` (the fastgan build in channels-last memory format)."""
        from ..models.stargan_v2 import StarGANv2Config

        if not self.trainers:
            ref = _Trainer(StarGANv2Config(impl="torch", **self.cfg_kwargs), self.device, None)
            self.state = ref.initial_state()
            fast = _Trainer(StarGANv2Config(impl="fastgan", **self.cfg_kwargs), self.device, self.state)
            self.trainers = {"torch": ref, "fastgan": fast}
        if impl not in self.trainers and impl == "fastgan-cl":
            cfg = StarGANv2Config(impl="fastgan", channels_last=True, **self.cfg_kwargs)
            self.trainers[impl] = _Trainer(cfg, self.device, self.state)
        return self.trainers[impl]


def _make_inputs(cfg_kwargs: dict, batch: int, device: str):
    size, nd, latent = cfg_kwargs["img_size"], cfg_kwargs["num_domains"], cfg_kwargs["latent_dim"]

    def make(seed: int) -> tuple:
        g = torch.Generator(device=device).manual_seed(seed)
        img = lambda: torch.rand((batch, 3, size, size), generator=g, device=device) * 2 - 1  # noqa: E731
        lab = lambda: torch.randint(0, nd, (batch,), generator=g, device=device)  # noqa: E731
        lat = lambda: torch.randn((batch, latent), generator=g, device=device)  # noqa: E731
        return img(), lab(), lab(), lat(), lat(), img(), img()

    return make


def matrix(device: str, preset: str) -> list[tuple[dict, int, torch.dtype]]:
    """``(config kwargs, batch, dtype)`` per case for a device and preset."""
    if device == "cpu" and preset != "full":
        combos = [(kw, CPU_BATCH, torch.float32) for kw in CPU_SMALL]
        return combos[:1] if preset == "quick" else combos
    return [(OFFICIAL, GPU_BATCH, torch.float32), (OFFICIAL, GPU_BATCH, torch.bfloat16)]  # both issue goals


def _layout(kw: dict) -> str:
    return "official" if kw.get("dim_in") is None else f"toy-dim{kw['dim_in']}"


@register_suite(SUITE, ops=("instance_norm_fwd", "instance_norm_bwd", "bias_act_fwd", "bias_act_bwd"), notes=NOTES)
def stargan_v2_cases(opts: SuiteOptions):
    """Yield one case per (model size, dtype): ``eager`` (torch build) and ``fastgan-auto`` (fastgan build)."""
    want_fastgan = opts.impls is None or bool(
        set(opts.impls) & ({"auto"} | set(fastgan_impls("instance_norm_fwd", opts.device))))
    for kw, batch, dtype in matrix(opts.device, opts.preset):
        pair = _Pair(dict(kw), opts.device)
        fns = {"eager": (lambda p, d: lambda *a: p.get("torch").iteration(d, *a))(pair, dtype)}
        if want_fastgan:
            fns["fastgan-auto"] = (lambda p, d: lambda *a: p.get("fastgan").iteration(d, *a))(pair, dtype)
            if opts.device == "cuda":  # NHWC end to end: cuDNN's NHWC convolutions, no layout conversions
                fns["fastgan-cl"] = (lambda p, d: lambda *a: p.get("fastgan-cl").iteration(d, *a))(pair, dtype)
        targets = ()
        if opts.device == "cuda" and kw is OFFICIAL:
            targets = (Target("min_speedup", H100_MIN_SPEEDUP, "fastgan", HOPPER,
                              "issue goal on the H100: a whole training iteration vs the torch.nn build"),)
        yield Case(suite=SUITE, shape=(batch, 3, kw["img_size"], kw["img_size"]), dtype=dtype, layout=_layout(kw),
                   mode="train", device=opts.device, make_inputs=_make_inputs(kw, batch, opts.device), fns=fns,
                   bytes_floor=0, bytes_detail="not applicable (a whole training iteration)", targets=targets)

