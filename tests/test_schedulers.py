"""fastgan's diffusers-compatible schedulers against diffusers' own DDPMScheduler / DDIMScheduler.

Both sides draw their step noise from identically seeded generators (fastgan draws it as diffusers' randn_tensor
does: same shape, dtype, device and order), so whole loops are compared number for number; the only difference
left is the coefficients' rounding (fastgan float64, diffusers float32), hence the relative tolerance.
"""
import subprocess
import sys

import pytest
import torch

from fastgan.diffusion.schedulers import FusedDDIMScheduler, FusedDDPMScheduler, randn_like_diffusers

MU, SIGMA = 0.3, 0.5
PREDICTIONS = ["epsilon", "sample", "v_prediction"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dif():
    return pytest.importorskip("diffusers")


def toy_model(prediction_type, alphas_cumprod):
    """The optimal denoiser of N(MU, SIGMA^2) data plus a tanh term (so x0 leaves [-0.8, 0.8] and clipping bites),
    returned as the given prediction type. Both schedulers call the same function."""
    def model(x, t):
        a = alphas_cumprod[int(t)].double()
        x0 = MU + a.sqrt() * SIGMA**2 * (x - a.sqrt() * MU) / (a * SIGMA**2 + 1 - a) + 0.4 * torch.tanh(2 * x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        out = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction_type]
        return out.to(x.dtype)
    return model


def run_loop(sched, model, x, seed, **step_kw):
    g = torch.Generator().manual_seed(seed)
    x0s = []
    for t in sched.timesteps:
        out = sched.step(model(x, t), t, x, generator=g, **step_kw)
        x = out.prev_sample
        x0s.append(out.pred_original_sample)
    return x, torch.stack(x0s)


def assert_close(got, want, what, rtol=1e-4):
    # The coefficients differ in float32 rounding only (~1e-7), but eps -> x0 divides by sqrt(abar), amplifying
    # rounding up to 1/sqrt(abar_999) ~ 160x (measured: 4e-5 at worst). A wrong formula, timestep or noise draw
    # gives errors of order 1e-2 and more.
    err = (got - want).abs().max().item()
    assert err <= rtol * max(1.0, want.abs().max().item()), f"{what}: max error {err}"


def x_T(shape=(2, 3, 5, 4), dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(11), dtype=dtype)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_tables_equal_diffusers(dif, beta_schedule):
    a, b = dif.DDPMScheduler(beta_schedule=beta_schedule), FusedDDPMScheduler(beta_schedule=beta_schedule)
    assert torch.equal(a.alphas_cumprod, b.alphas_cumprod) and torch.equal(a.betas, b.betas)
    # fastgan's float64 tables hold diffusers' float32 products (not a re-derived float64 cumprod)
    assert (b.schedule.alphas_cumprod - a.alphas_cumprod.double()).abs().max().item() < 1e-15


@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_timesteps_equal_diffusers(dif, spacing, offset):
    for cls, ours in ((dif.DDPMScheduler, FusedDDPMScheduler), (dif.DDIMScheduler, FusedDDIMScheduler)):
        a, b = cls(timestep_spacing=spacing, steps_offset=offset), ours(timestep_spacing=spacing, steps_offset=offset)
        assert torch.equal(a.timesteps, b.timesteps)
        for n in (1, 3, 7, 10, 50, 333, 999) + ((1000,) if offset == 0 else ()):
            a.set_timesteps(n)
            b.set_timesteps(n)
            assert torch.equal(a.timesteps, b.timesteps), (cls.__name__, spacing, n)
            assert b.timesteps.dtype == torch.int64


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_loop_equals_diffusers(dif, prediction_type, variance_type, clip):
    kw = dict(prediction_type=prediction_type, variance_type=variance_type, clip_sample=clip, clip_sample_range=0.8)
    a, b = dif.DDPMScheduler(**kw), FusedDDPMScheduler(**kw)
    a.set_timesteps(40)
    b.set_timesteps(40)
    model = toy_model(prediction_type, a.alphas_cumprod)
    want, want_x0 = run_loop(a, model, x_T(), seed=5)
    got, got_x0 = run_loop(b, model, x_T(), seed=5)
    assert_close(got, want, f"ddpm {kw}")
    assert_close(got_x0, want_x0, f"ddpm x0 {kw}")
    if clip:  # the clamp was active somewhere, so it was tested
        bound = torch.tensor(0.8).item()  # 0.8 in float32
        assert (want_x0.abs() == bound).any() and got_x0.abs().max().item() <= bound
    assert not torch.equal(got, run_loop(b, model, x_T(), seed=6)[0])  # the noise matters


def test_ddpm_every_timestep_and_custom_timesteps_equal_diffusers(dif):
    a, b = dif.DDPMScheduler(clip_sample=False), FusedDDPMScheduler(clip_sample=False)
    model = toy_model("epsilon", a.alphas_cumprod)
    # no set_timesteps: all 1000 steps, previous timestep t - 1
    assert_close(run_loop(b, model, x_T((1, 1, 3, 3)), 3)[0], run_loop(a, model, x_T((1, 1, 3, 3)), 3)[0], "full")
    custom = [900, 700, 350, 100, 20, 3]
    a.set_timesteps(timesteps=custom)
    b.set_timesteps(timesteps=custom)
    assert torch.equal(a.timesteps, b.timesteps)
    assert_close(run_loop(b, model, x_T(), 4)[0], run_loop(a, model, x_T(), 4)[0], "custom")
    assert b.previous_timestep(350) == 100 and b.previous_timestep(torch.tensor(3)) == -1


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_loop_equals_diffusers(dif, prediction_type, set_alpha_to_one, eta):
    for clip, spacing, offset in ((False, "leading", 1), (True, "trailing", 0), (False, "linspace", 0)):
        kw = dict(prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one, clip_sample=clip,
                  clip_sample_range=0.8, timestep_spacing=spacing, steps_offset=offset,
                  beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        a, b = dif.DDIMScheduler(**kw), FusedDDIMScheduler(**kw)
        a.set_timesteps(15)
        b.set_timesteps(15)
        model = toy_model(prediction_type, a.alphas_cumprod)
        want, want_x0 = run_loop(a, model, x_T(), seed=8, eta=eta)
        got, got_x0 = run_loop(b, model, x_T(), seed=8, eta=eta)
        assert_close(got, want, f"ddim eta={eta} {kw}")
        assert_close(got_x0, want_x0, f"ddim x0 eta={eta} {kw}")


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_zero_terminal_snr_loops_equal_diffusers(dif, prediction_type, spacing):
    # rescale_betas_zero_snr: alphas_cumprod[999] = 0 (it raised NotImplementedError before). An eps model cannot
    # step from t = 999 (x0 = (x - eps) / 0: diffusers returns inf/NaN there); "trailing" spacing starts there.
    base = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
                prediction_type=prediction_type, timestep_spacing=spacing, clip_sample=False)
    for theirs, ours, kw in ((dif.DDPMScheduler, FusedDDPMScheduler, {}), (dif.DDIMScheduler, FusedDDIMScheduler,
                                                                           {"eta": 0.5})):
        a, b = theirs(**base), ours(**base)
        assert torch.equal(a.betas, b.betas) and torch.equal(a.alphas_cumprod, b.alphas_cumprod)
        assert b.alphas_cumprod[-1].item() == 0.0 and b.schedule.zero_terminal_snr
        a.set_timesteps(12)
        b.set_timesteps(12)
        model = toy_model(prediction_type, a.alphas_cumprod)
        if prediction_type == "epsilon" and spacing == "trailing":
            assert a.timesteps[0].item() == 999
            with pytest.raises(ValueError, match="zero-terminal-SNR"):
                run_loop(b, model, x_T(), seed=2, **kw)
            assert not torch.isfinite(run_loop(a, model, x_T(), seed=2, **kw)[1][0]).all()  # what it replaces
            continue
        want, want_x0 = run_loop(a, model, x_T(), seed=2, **kw)
        got, got_x0 = run_loop(b, model, x_T(), seed=2, **kw)
        assert_close(got, want, f"zero-snr {theirs.__name__} {base}")
        assert_close(got_x0, want_x0, f"zero-snr x0 {theirs.__name__} {base}")


def test_noise_is_drawn_as_diffusers_randn_tensor(dif):
    from diffusers.utils.torch_utils import randn_tensor

    shape = (3, 2, 4, 4)
    for dtype in (torch.float32, torch.float64):
        gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
        assert torch.equal(randn_like_diffusers(shape, gens(), torch.device("cpu"), dtype),
                           randn_tensor(shape, generator=gens(), device=torch.device("cpu"), dtype=dtype))
        g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        assert torch.equal(randn_like_diffusers(shape, g1, torch.device("cpu"), dtype),
                           randn_tensor(shape, generator=g2, device=torch.device("cpu"), dtype=dtype))
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn_like_diffusers(shape, gens()[:2], torch.device("cpu"), torch.float32)


def test_variance_noise_tuple_output_and_generator_lists(dif):
    a, b = dif.DDIMScheduler(clip_sample=False), FusedDDIMScheduler(clip_sample=False)
    a.set_timesteps(10)
    b.set_timesteps(10)
    x, m, z = x_T(), x_T() * 0.5, torch.randn(x_T().shape)
    t = a.timesteps[3]
    want = a.step(m, t, x, eta=0.8, variance_noise=z, return_dict=False)
    got = b.step(m, t, x, eta=0.8, variance_noise=z, return_dict=False)
    assert isinstance(got, tuple) and len(got) == 2
    assert_close(got[0], want[0], "variance_noise")
    assert_close(got[1], want[1], "x0")
    out = b.step(m, int(t), x, eta=0.8, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    ref = a.step(m, int(t), x, eta=0.8, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert_close(out[0], ref.prev_sample, "generator list")
    assert torch.equal(out["prev_sample"], out.prev_sample)
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        b.step(m, t, x, eta=0.8, variance_noise=z, generator=torch.Generator())


def test_add_noise_and_velocity_equal_diffusers(dif):
    a, b = dif.DDPMScheduler(beta_schedule="squaredcos_cap_v2"), FusedDDPMScheduler(beta_schedule="squaredcos_cap_v2")
    x0, noise, t = x_T(), torch.randn(x_T().shape), torch.tensor([0, 999])
    assert_close(b.add_noise(x0, noise, t), a.add_noise(x0, noise, t), "add_noise", rtol=1e-6)
    assert_close(b.get_velocity(x0, noise, t), a.get_velocity(x0, noise, t), "velocity", rtol=1e-6)
    assert b.scale_model_input(x0, 5) is x0 and b.init_noise_sigma == 1.0 and len(b) == 1000 and b.order == 1


def test_from_config_takes_diffusers_configs_and_back(dif):
    sd_like = dif.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                skip_prk_steps=True, set_alpha_to_one=False)
    ours = FusedDDIMScheduler.from_config(sd_like.config, clip_sample=False)
    assert ours.config.beta_schedule == "scaled_linear" and ours.config.steps_offset == 1
    assert ours.config["set_alpha_to_one"] is False and ours.config.clip_sample is False
    assert "skip_prk_steps" not in ours.config
    assert FusedDDPMScheduler.from_config(ours).config.beta_end == 0.012  # a scheduler object works too
    back = dif.DDIMScheduler.from_config(ours.config)  # and diffusers reads ours
    assert torch.equal(back.alphas_cumprod, ours.alphas_cumprod)
    with pytest.raises(AttributeError, match="no field 'nope'"):
        ours.config.nope


@pytest.mark.parametrize("cls", [FusedDDPMScheduler, FusedDDIMScheduler])
def test_save_pretrained_round_trip(cls, tmp_path):
    """save_pretrained writes diffusers' scheduler_config.json (diffusers' class name, trained_betas as a list);
    from_pretrained reads the folder, the file, or a pipeline folder's subfolder, and kwargs override fields."""
    import json

    betas = torch.linspace(1e-4, 0.03, 50, dtype=torch.float64)
    s = cls(num_train_timesteps=50, trained_betas=betas, prediction_type="v_prediction", clip_sample=False,
            timestep_spacing="trailing")
    path = s.save_pretrained(tmp_path / "pipe" / "scheduler")
    saved = json.loads(open(path).read())
    assert saved["_class_name"] == {"FusedDDPMScheduler": "DDPMScheduler", "FusedDDIMScheduler": "DDIMScheduler"}[
        cls.__name__]
    assert saved["trained_betas"] == betas.tolist()
    for source in ({"pretrained_model_name_or_path": tmp_path / "pipe", "subfolder": "scheduler"},
                   {"pretrained_model_name_or_path": path}):
        back = cls.from_pretrained(**source)
        assert back.config.keys() == s.config.keys()
        assert all(str(back.config[k]) == str(s.config[k]) for k in s.config if k != "trained_betas")
        assert torch.equal(back.alphas_cumprod, s.alphas_cumprod)
    assert cls.from_pretrained(path, clip_sample=True).config.clip_sample is True
    with pytest.raises(FileNotFoundError, match="from_config"):
        cls.from_pretrained("some-org/some-model", subfolder="scheduler")
    with pytest.raises(NotImplementedError, match="push_to_hub"):
        s.save_pretrained(tmp_path / "x", push_to_hub=True)
    # numpy scalars are saved as numbers; a value JSON cannot hold fails before the good file is touched
    import numpy as np

    cls(num_train_timesteps=np.int64(50), beta_end=np.float32(0.02)).save_pretrained(tmp_path / "np")
    assert cls.from_pretrained(tmp_path / "np").config.num_train_timesteps == 50
    bad = cls(num_train_timesteps=50)
    bad.config["steps_offset"] = object()
    with pytest.raises(TypeError, match="cannot be saved as JSON"):
        bad.save_pretrained(tmp_path / "np")
    assert cls.from_pretrained(tmp_path / "np").config.beta_end == pytest.approx(0.02)


def test_save_pretrained_loads_in_diffusers_and_back(dif, tmp_path):
    """A file we save loads with diffusers' own from_pretrained (so a folder stays usable without fastgan), and a
    folder diffusers saved loads with ours, with the same tables."""
    ours = FusedDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                              set_alpha_to_one=False, clip_sample=False)
    ours.save_pretrained(tmp_path / "ours")
    theirs = dif.DDIMScheduler.from_pretrained(tmp_path / "ours")
    assert torch.equal(theirs.alphas_cumprod, ours.alphas_cumprod)
    assert theirs.config.steps_offset == 1 and theirs.config.set_alpha_to_one is False
    dif.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large").save_pretrained(
        tmp_path / "theirs")
    back = FusedDDPMScheduler.from_pretrained(tmp_path / "theirs")
    assert back.config.variance_type == "fixed_large" and back.config.beta_schedule == "squaredcos_cap_v2"
    assert torch.equal(back.alphas_cumprod, dif.DDPMScheduler.from_pretrained(tmp_path / "theirs").alphas_cumprod)


def test_swaps_into_a_diffusers_pipeline(dif):
    unet = dif.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                           layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                           up_block_types=("UpBlock2D",) * 2)
    for pipe_cls, sched_cls, ours_cls, kw in ((dif.DDPMPipeline, dif.DDPMScheduler, FusedDDPMScheduler, {}),
                                              (dif.DDIMPipeline, dif.DDIMScheduler, FusedDDIMScheduler, {"eta": 0.5})):
        pipe = pipe_cls(unet=unet, scheduler=sched_cls())
        pipe.set_progress_bar_config(disable=True)
        call = dict(batch_size=2, num_inference_steps=8, output_type="np", **kw)
        want = pipe(generator=torch.Generator().manual_seed(0), **call).images
        pipe.scheduler = ours_cls.from_config(pipe.scheduler.config)
        got = pipe(generator=torch.Generator().manual_seed(0), **call).images
        assert isinstance(pipe.scheduler, ours_cls)
        assert abs(got - want).max() < 1e-5


def test_unsupported_options_raise_clearly():
    for kw in ({"thresholding": True}, {"variance_type": "learned"},
               {"variance_type": "learned_range"}, {"variance_type": "fixed_large_log"}, {"beta_schedule": "laplace"}):
        with pytest.raises(NotImplementedError, match="fastgan"):
            FusedDDPMScheduler(**kw)
    with pytest.raises(ValueError, match="prediction_type"):
        FusedDDIMScheduler(prediction_type="eps")
    with pytest.raises(ValueError, match="timestep_spacing"):
        FusedDDIMScheduler(timestep_spacing="karras")
    s = FusedDDIMScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)
    s.set_timesteps(10)
    with pytest.raises(NotImplementedError, match="use_clipped_model_output"):
        s.step(x, 900, x, use_clipped_model_output=True)
    s.step(x, 900, x, use_clipped_model_output=False)
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 1000\]"):
        s.set_timesteps(1001)
    d = FusedDDPMScheduler()
    d.set_timesteps(10)
    with pytest.raises(ValueError, match="not in the scheduler's timesteps"):
        d.step(x, 901, x)
    with pytest.raises(ValueError, match="descending"):
        d.set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match="one-element integer tensor"):
        d.step(x, torch.tensor(900.0), x)


def test_importing_the_schedulers_does_not_import_diffusers():
    code = ("import sys, fastgan.diffusion.schedulers, fastgan.diffusion; "
            "assert 'diffusers' not in sys.modules, 'diffusers imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_pred_original_sample_never_stale():
    # It is computed when first read; a loop that writes prev_sample back into its sample buffer before reading it
    # got an x0 from the new values (41 off on this input). Now that raises; read before, it is exact; under
    # inference_mode (no version counters) it is computed in step().
    from fastgan.diffusion import FusedDDIMScheduler

    s = FusedDDIMScheduler(clip_sample=False)
    s.set_timesteps(10)
    x, eps = torch.ones(1, 4), torch.full((1, 4), 0.5)
    abar = s.alphas_cumprod[900]
    want = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    out = s.step(eps, 900, x)
    x.copy_(out.prev_sample)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.pred_original_sample
    x = torch.ones(1, 4)
    out = s.step(eps, 900, x)
    torch.testing.assert_close(out.pred_original_sample, want)
    x.copy_(out.prev_sample)  # after the first read the value is kept
    torch.testing.assert_close(out.pred_original_sample, want)
    with torch.inference_mode():
        x = torch.ones(1, 4)
        out = s.step(eps, 900, x)
        x.copy_(out.prev_sample)
        torch.testing.assert_close(out.pred_original_sample, want)


@pytest.mark.parametrize("cls", [FusedDDIMScheduler, FusedDDPMScheduler])
def test_pred_original_sample_at_the_first_step_of_a_cosine_schedule(cls):
    # t = 999, abar ~ 2e-9: x0 = (x - sqrt(1 - abar) eps) / sqrt(abar). The deferred x0 used a_x x + a_m m with
    # a_x ~ -a_m ~ 2e4, each rounded to float32: 4e-3 off on this x0 in [-1, 1]; now 1e-7 (the kernels' form).
    s = cls(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    s.set_timesteps(1000)
    abar = s.alphas_cumprod[999].double()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    x, m = (abar.sqrt() * x0 + (1 - abar).sqrt() * eps).float(), eps.float()
    want = (x.double() - (1 - abar).sqrt() * m.double()) / abar.sqrt()
    got = s.step(m, 999, x, generator=torch.Generator().manual_seed(0)).pred_original_sample
    assert (got.double() - want).abs().max().item() < 1e-6


def test_betas_below_float32_resolution_are_named():
    from fastgan.diffusion import FusedDDPMScheduler

    with pytest.raises(ValueError, match=r"betas at steps \[0\] are below float32's resolution"):
        FusedDDPMScheduler(trained_betas=[1e-8, 0.1, 0.2], num_train_timesteps=3)
    FusedDDPMScheduler(trained_betas=[1e-6, 0.1, 0.2], num_train_timesteps=3)
