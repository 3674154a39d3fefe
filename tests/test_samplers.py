"""DDPM/DDIM sampling loops: exact on Gaussian data (where the optimal denoiser is known), equal to a manual loop."""
import pytest
import torch

from fastgan.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, ddim_step, leading_timesteps

SCHED = NoiseSchedule.linear(1000)
MU, SIGMA = 0.7, 0.4  # data: every element ~ N(MU, SIGMA^2)


_ABAR = {}  # alphas_cumprod per device: a copy per call would be a host-to-device copy inside a CUDA-graph capture


def gaussian_eps_model(x, t):
    """E[eps | x_t] for x0 ~ N(MU, SIGMA^2): (x_t - sqrt(abar) MU) sqrt(1 - abar) / (abar SIGMA^2 + 1 - abar)."""
    table = _ABAR.get(x.device)
    if table is None:  # not setdefault: its argument (the copy) would be evaluated on every call
        table = _ABAR[x.device] = SCHED.alphas_cumprod.to(x.device)
    abar = table[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (x - abar.sqrt() * MU) * (1 - abar).sqrt() / (abar * SIGMA**2 + 1 - abar)


# (sampler, inference steps, step options, tolerance on the std). Many steps approach the data's std (DDPM's
# fixed_small variance is the lower bound of the true reverse variance, so it stays slightly under); few steps
# undershoot more (measured: DDIM 50 steps 0.375, DDPM 50 steps 0.349 for SIGMA = 0.4). Starting noise has std 1.
CASES = [(DDPMSampler, 1000, {}, 0.01), (DDIMSampler, 200, {"eta": 0.0}, 0.01), (DDIMSampler, 50, {"eta": 0.0}, 0.04),
         (DDIMSampler, 100, {"eta": 1.0}, 0.04), (DDPMSampler, 250, {}, 0.03)]


@pytest.mark.parametrize("sampler,steps,kw,tol", CASES)
def test_samples_of_gaussian_data_have_its_mean_and_std(sampler, steps, kw, tol):
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(8192, 4, generator=g, dtype=torch.float64)
    x0 = sampler(gaussian_eps_model, SCHED, num_inference_steps=steps).sample(x_T, generator=g, **kw)
    assert abs(x0.mean().item() - MU) < 0.01 and abs(x0.std().item() - SIGMA) < tol


def test_ddim_sampler_equals_a_manual_loop_and_is_deterministic():
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    s = DDIMSampler(gaussian_eps_model, SCHED, num_inference_steps=20)
    got = s.sample(x_T)
    x = x_T
    ts = leading_timesteps(1000, 20)
    for i, t in enumerate(ts):
        eps = gaussian_eps_model(x, torch.full((3,), t))
        x = ddim_step(x, eps, t, ts[i + 1] if i + 1 < len(ts) else -1, SCHED)
    assert torch.equal(got, x) and torch.equal(s.sample(x_T), got)
    assert ts[:2] == [950, 900] and ts[-1] == 0


def test_classifier_free_guidance_batches_the_two_calls():
    calls = []

    def model(x, t, cond):
        calls.append(x.shape[0])
        return gaussian_eps_model(x, t) + 0.1 * cond.reshape(-1, 1)

    x_T = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cond, null = torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    s = DDIMSampler(model, SCHED, num_inference_steps=10)
    guided = s.sample(x_T, cond=cond, null_cond=null, guidance=3.0)
    assert calls == [10] * 10  # one doubled batch per step

    def explicit(x, t):  # u + w (c - u) by hand
        u, c = gaussian_eps_model(x, t), gaussian_eps_model(x, t) + 0.1
        return u + 3.0 * (c - u)

    want = DDIMSampler(explicit, SCHED, num_inference_steps=10).sample(x_T)
    assert (guided - want).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="needs cond and null_cond"):
        s.sample(x_T, cond=cond, guidance=2.0)


def test_seeded_ddpm_runs_reproduce():
    x_T = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    s = DDPMSampler(gaussian_eps_model, SCHED, num_inference_steps=50)
    a = s.sample(x_T, generator=torch.Generator().manual_seed(7))
    b = s.sample(x_T, generator=torch.Generator().manual_seed(7))
    c = s.sample(x_T, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="num_inference_steps must be in"):
        DDPMSampler(gaussian_eps_model, SCHED, num_inference_steps=0)


# The graphed loop (sample(cuda_graph=True)) runs its body on static buffers; with capture=False the same body runs
# directly, so on CPU it must give the eager loop's samples bit for bit and leave the generator where it leaves it.
STATIC_CASES = [
    ("ddpm", 50, {}, "gen"),  # noisy steps graphed, the last (t = 0, noiseless) one eager
    ("ddpm", 20, {"variance": "fixed_large"}, "default"),  # noise from the default generator
    ("ddim", 20, {"eta": 0.0}, None),
    ("ddim", 25, {"eta": 0.7}, "gen"),
    ("ddpm", 2, {}, "gen"),  # every step in the warm-up: nothing graphed
    ("ddpm", 3, {}, "gen"),  # the two noisy steps warm the body up; the noiseless last one is eager: no graph
    ("ddpm", 1, {}, "gen"),  # the one noiseless step is the body's kind
    ("ddim", 3, {"eta": 1.0, "impl": "ref"}, "gen"),
]


def _sampler(kind, steps, model=gaussian_eps_model, **kw):
    return (DDPMSampler if kind == "ddpm" else DDIMSampler)(model, SCHED, num_inference_steps=steps, **kw)


def _run(sampler, x_T, gen_kind, static: bool, **kw):
    gen = torch.Generator().manual_seed(11) if gen_kind == "gen" else None
    torch.manual_seed(12)  # the default generator: drawn from when gen_kind is "default", and read after the loop
    if static:
        impl = {k: kw.pop(k) for k in ("variance", "eta", "impl") if k in kw}
        out = sampler._sample_static(x_T, kw.get("cond"), kw.get("null_cond"), kw.get("guidance"), gen, False, impl,
                                     capture=False)
    else:
        out = sampler.sample(x_T, generator=gen, **kw)
    after = torch.randint(0, 2**62, (1,), generator=gen) if gen is not None else torch.randint(0, 2**62, (1,))
    return out, after


@pytest.mark.parametrize("kind,steps,kw,gen_kind", STATIC_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_static_buffer_loop_equals_the_eager_loop(kind, steps, kw, gen_kind, dtype):
    x_T = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(4), dtype=dtype)
    s = _sampler(kind, steps, clip_x0=1.5)
    want, want_after = _run(s, x_T, gen_kind, False, **kw)
    got, got_after = _run(s, x_T, gen_kind, True, **kw)
    assert torch.equal(got, want) and torch.equal(got_after, want_after)
    assert not torch.equal(got, x_T) and got.dtype == dtype


def test_static_buffer_loop_keeps_channels_last_and_guidance():
    def model(x, t, cond):
        return gaussian_eps_model(x, t) + 0.1 * cond.reshape(-1, 1, 1, 1)

    x_T = torch.randn(4, 3, 6, 5, generator=torch.Generator().manual_seed(5)).to(memory_format=torch.channels_last)
    cond, null = torch.ones(4), torch.zeros(4)
    s = _sampler("ddim", 12, model=model)
    want, _ = _run(s, x_T, "gen", False, cond=cond, null_cond=null, guidance=2.5, eta=0.3)
    got, _ = _run(s, x_T, "gen", True, cond=cond, null_cond=null, guidance=2.5, eta=0.3)
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)


def test_cuda_graph_option_errors():
    x_T = torch.randn(2, 3)
    with pytest.raises(ValueError, match="needs x_T on a CUDA device"):
        _sampler("ddpm", 10).sample(x_T, cuda_graph=True)
    with pytest.raises(ValueError, match="noise= is not supported"):
        _sampler("ddpm", 10)._sample_static(x_T, None, None, None, None, False, {"noise": x_T}, capture=False)


def test_a_loop_copies_its_coefficients_once_and_they_equal_the_per_step_ones():
    """The sampler computes every step's coefficients in one batch (one host-to-device copy on CUDA, not one per
    step); the values must be those of the one-step path bit for bit, or a loop would differ from manual steps."""
    from fastgan.diffusion import steps

    fresh, per_step = NoiseSchedule.cosine(1000), NoiseSchedule.cosine(1000)
    x = torch.randn(2, 3)
    for sampler, opts in ((DDPMSampler, {"variance": "fixed_small"}), (DDPMSampler, {"variance": "fixed_large"}),
                          (DDIMSampler, {"eta": 0.0}), (DDIMSampler, {"eta": 0.5})):
        for prediction in ("eps", "x0", "v"):
            s = sampler(gaussian_eps_model, fresh, prediction=prediction, num_inference_steps=37)
            kind = "ddpm" if sampler is DDPMSampler else "ddim"
            plans = s._plans(x, opts)
            t_prevs = s._t_prevs()
            assert len(plans) == 37 and t_prevs[-1] == -1
            for (coef, noisy), t, t_prev in zip(plans, s.timesteps, t_prevs):
                one = steps._coefficients(kind, per_step, t, t_prev, x, prediction=prediction,
                                          **({"eta": float(opts["eta"])} if "eta" in opts else opts))
                assert torch.equal(coef, one) and coef.shape == (1, 7)
                assert noisy == ((t != 0) if kind == "ddpm" else opts["eta"] > 0)
    assert len(fresh._coef_cache) == len(per_step._coef_cache) == 4 * 3 * 37


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
@pytest.mark.parametrize("kind,steps,kw,gen_kind", STATIC_CASES)
def test_cuda_graph_loop_equals_the_eager_loop_on_cuda(kind, steps, kw, gen_kind):
    """Replaying the captured (model + step) must give the eager loop's samples and generator state: the seed draw
    inside the graph advances torch's graph-safe Philox state on every replay."""
    x_T = torch.randn(3, 2, 5, 7, device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    s = _sampler(kind, steps, clip_x0=1.5)

    def run(graph):
        gen = torch.Generator("cuda").manual_seed(11) if gen_kind == "gen" else None
        torch.cuda.manual_seed(12)
        out = s.sample(x_T, generator=gen, cuda_graph=graph, **kw)
        after = torch.randint(0, 2**62, (1,), device="cuda", generator=gen)
        return out, after

    (want, want_after), (got, got_after) = run(False), run(True)
    assert torch.equal(got, want) and torch.equal(got_after, want_after)


@cuda_only
@pytest.mark.parametrize("graph", [False, True])
def test_sampling_loops_do_no_host_sync_per_step_on_cuda(graph):
    """Counted with torch.cuda.set_sync_debug_mode("warn"): a 60-step loop syncs no more often than a 20-step one
    (a fresh schedule each time, so the coefficient copies of a first run count too)."""
    import warnings

    from fastgan.models.unet import UNet

    net = UNet(in_channels=3, base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
               img_size=16, norm_groups=8).cuda().eval()

    def syncs(steps):
        s = DDPMSampler(net, NoiseSchedule.linear(1000), num_inference_steps=steps)
        x_T = torch.randn(2, 3, 16, 16, device="cuda")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                s.sample(x_T, cuda_graph=graph)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)

    syncs(20)  # compile / autotune outside the count
    assert syncs(60) == syncs(20)
