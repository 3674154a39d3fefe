"""DDPM/DDIM sampling loops: exact on Gaussian data (where the optimal denoiser is known), equal to a manual loop."""
import pytest
import torch

from fastgan.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, ddim_step, leading_timesteps

SCHED = NoiseSchedule.linear(1000)
MU, SIGMA = 0.7, 0.4  # data: every element ~ N(MU, SIGMA^2)


def gaussian_eps_model(x, t):
    """E[eps | x_t] for x0 ~ N(MU, SIGMA^2): (x_t - sqrt(abar) MU) sqrt(1 - abar) / (abar SIGMA^2 + 1 - abar)."""
    abar = SCHED.alphas_cumprod.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
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
