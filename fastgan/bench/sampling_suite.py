"""Benchmark cases for whole sampling loops: fastgan's UNet sampled with DDPM (1000 steps) or DDIM (50 steps), the
fused-step samplers (eager and CUDA-graph loops) against a diffusers-style eager step loop around the same model.

The issue's goal: 1000-step DDPM sampling with fastgan's UNet at 32x32, batch 64, at least 1.5x faster than the same
UNet under a diffusers-style eager step loop, on the H100. One call is one whole loop from x_T, so the CUDA-graph
sampler's capture (once per call) is inside the time.
"""
from __future__ import annotations

import torch

from .suites import Case, HOPPER, SuiteOptions, Target, fastgan_impls, register_suite

H100_MIN_SPEEDUP = 1.5
# fastgan's UNet with its defaults (base 64, mult (1, 2, 2, 2), 2 res blocks, attention at 16x16) at 32x32.
GPU_MODEL = dict(img_size=32)
GPU_BATCH, GPU_DDPM_STEPS = 64, 1000
# CPU preset: a toy UNet and short loops (a UNet call dominates every step there).
CPU_MODEL = dict(img_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                 norm_groups=8)
CPU_BATCH, CPU_DDPM_STEPS = 4, 20
DDIM_STEPS = 50
SEED = 1234

NOTES = f"""
One call = one whole sampling loop from x_T with fastgan's UNet (`eval()`, random weights, eps prediction, linear
1000-step schedule). `eager` is a diffusers-style loop around the same model: per step the model call, then the
step as diffusers' schedulers write it, one PyTorch op per term with Python-float scalars (DDPM: `torch.randn` noise
from a generator). `fastgan-auto` is `DDPMSampler`/`DDIMSampler.sample` (one fused step per timestep, in-kernel
noise), `fastgan-graph` the same with `cuda_graph=True` (CUDA only; the capture is inside each call). The bytes floor
does not apply (the UNet dominates), so read µs per loop and *vs eager*. DDPM loops draw different (equally
distributed) noise in eager and fastgan, so their outputs are not compared; DDIM (eta = 0, deterministic) is
checked against eager. Goal: ≥ {H100_MIN_SPEEDUP}x for {GPU_DDPM_STEPS}-step DDPM at 32x32, batch {GPU_BATCH}, on
the H100. CPU preset: a toy UNet (base 16, 16x16), batch {CPU_BATCH}, {CPU_DDPM_STEPS} DDPM / 10 DDIM steps.
"""


class _Model:
    """The UNet and schedule of a case, built on first use (listing cases stays cheap)."""

    def __init__(self, cfg: dict, device: str):
        self.cfg, self.device, self.net, self.schedule = cfg, device, None, None

    def get(self):
        if self.net is None:
            from ..diffusion import NoiseSchedule
            from ..models.unet import UNet

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                self.net = UNet(**self.cfg).to(self.device).eval()
            self.schedule = NoiseSchedule.linear(1000)
        return self.net, self.schedule


def _eager_loop(model: _Model, kind: str, steps: int):
    """diffusers' step arithmetic, one op per term, scalars precomputed as Python floats (diffusers reads them
    from a CPU tensor per step, which costs it more host time than this)."""
    from ..diffusion import leading_timesteps

    @torch.no_grad()
    def run(x_T):
        net, sched = model.get()
        abar = sched.alphas_cumprod.tolist()
        ts = leading_timesteps(sched.num_steps, steps)
        stride = sched.num_steps // steps
        gen = torch.Generator(device=x_T.device).manual_seed(SEED)
        x = x_T
        for t in ts:
            eps = net(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.int64))
            ab, abp = abar[t], (abar[t - stride] if t - stride >= 0 else 1.0)
            x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
            if kind == "ddim":
                x = abp**0.5 * x0 + (1 - abp) ** 0.5 * eps
                continue
            alpha, beta = ab / abp, 1 - ab / abp
            x = (abp**0.5 * beta / (1 - ab)) * x0 + (alpha**0.5 * (1 - abp) / (1 - ab)) * x
            if t > 0:
                var = max((1 - abp) / (1 - ab) * beta, 1e-20)
                x = x + var**0.5 * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return x

    return run


def _fastgan_loop(model: _Model, kind: str, steps: int, graph: bool):
    @torch.no_grad()
    def run(x_T):
        from ..diffusion import DDIMSampler, DDPMSampler

        net, sched = model.get()
        sampler = (DDPMSampler if kind == "ddpm" else DDIMSampler)(net, sched, num_inference_steps=steps)
        gen = torch.Generator(device=x_T.device).manual_seed(SEED)
        return sampler.sample(x_T, generator=gen, cuda_graph=graph)

    return run


def _make_inputs(shape, device: str):
    def make(seed: int) -> tuple:
        return (torch.randn(shape, generator=torch.Generator(device=device).manual_seed(seed), device=device),)

    return make


def matrix(device: str, preset: str) -> list[tuple[str, int, dict, int]]:
    """``(kind, steps, model config, batch)`` per case."""
    if device == "cpu" and preset != "full":
        combos = [("ddpm", CPU_DDPM_STEPS, CPU_MODEL, CPU_BATCH), ("ddim", 10, CPU_MODEL, CPU_BATCH)]
    else:
        combos = [("ddpm", GPU_DDPM_STEPS, GPU_MODEL, GPU_BATCH), ("ddim", DDIM_STEPS, GPU_MODEL, GPU_BATCH)]
    return combos[:1] if preset == "quick" else combos


@register_suite("sampling", ops=("diffusion_step", "group_norm_fwd"), notes=NOTES)
def sampling_cases(opts: SuiteOptions):
    """Yield one case per sampler: ``eager`` (diffusers-style loop), ``fastgan-auto`` and, on CUDA,
    ``fastgan-graph``."""
    live = {"auto", "graph"} | set(fastgan_impls("diffusion_step", opts.device))
    want_fastgan = opts.impls is None or bool(set(opts.impls) & live)
    for kind, steps, cfg, batch in matrix(opts.device, opts.preset):
        model = _Model(dict(cfg), opts.device)
        fns = {"eager": _eager_loop(model, kind, steps)}
        if want_fastgan:
            fns["fastgan-auto"] = _fastgan_loop(model, kind, steps, graph=False)
            if opts.device == "cuda":
                fns["fastgan-graph"] = _fastgan_loop(model, kind, steps, graph=True)
        targets = ()
        if opts.device == "cuda" and kind == "ddpm" and steps == GPU_DDPM_STEPS and batch == GPU_BATCH:
            targets = (Target("min_speedup", H100_MIN_SPEEDUP, "fastgan", HOPPER,
                              "issue goal on the H100: 1000-step DDPM sampling vs a diffusers-style eager loop"),)
        size = cfg["img_size"]
        yield Case(suite="sampling", shape=(batch, 3, size, size), dtype=torch.float32,
                   layout=f"{kind}-{steps}-steps", mode="sample", device=opts.device,
                   make_inputs=_make_inputs((batch, 3, size, size), opts.device), fns=fns, bytes_floor=0,
                   bytes_detail="not applicable (a whole sampling loop)", targets=targets, check=kind == "ddim")
