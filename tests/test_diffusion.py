"""fastgan.diffusion: schedules and fused DDPM/DDIM steps against the textbook formulas in float64."""
import math

import pytest
import torch

from fastgan import _backend
from fastgan.diffusion import NoiseSchedule, ddim_step, ddpm_step

from conftest import devices
from tolerance import assert_rule


def impls():
    return [pytest.param(d, i, id=f"{d}-{i}") for d in devices() for i in _backend.live_impls("diffusion_step", d)]


SCHED = NoiseSchedule.linear(1000)


def _abar(s, t):
    return 1.0 if t < 0 else s.alphas_cumprod[t].item()


def textbook_ddpm(x, out, t, s, prediction, clip, variance, z, t_prev=None):
    """Ho et al.'s posterior, written per the paper (diffusers' DDPMScheduler.step), float64, one t for all."""
    tp = t - 1 if t_prev is None else t_prev
    ab, abp = _abar(s, t), _abar(s, tp)
    alpha, beta = ab / abp, 1 - ab / abp
    if prediction == "eps":
        x0 = (x - math.sqrt(1 - ab) * out) / math.sqrt(ab)
    elif prediction == "x0":
        x0 = out
    else:
        x0 = math.sqrt(ab) * x - math.sqrt(1 - ab) * out
    if clip:
        x0 = x0.clamp(-clip, clip)
    mean = math.sqrt(abp) * beta / (1 - ab) * x0 + math.sqrt(alpha) * (1 - abp) / (1 - ab) * x
    var = max((1 - abp) / (1 - ab) * beta, 1e-20) if variance == "fixed_small" else beta
    return mean + (math.sqrt(var) * z if t > 0 else 0)


def textbook_ddim(x, out, t, tp, s, eta, prediction, clip, z):
    ab, abp = _abar(s, t), _abar(s, tp)
    if prediction == "eps":
        eps, x0 = out, (x - math.sqrt(1 - ab) * out) / math.sqrt(ab)
    elif prediction == "x0":
        x0, eps = out, (x - math.sqrt(ab) * out) / math.sqrt(1 - ab)
    else:
        x0, eps = math.sqrt(ab) * x - math.sqrt(1 - ab) * out, math.sqrt(ab) * out + math.sqrt(1 - ab) * x
    if clip:
        x0 = x0.clamp(-clip, clip)
    sigma = eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)
    return math.sqrt(abp) * x0 + math.sqrt(max(1 - abp - sigma**2, 0)) * eps + sigma * z


def _inputs(device, dtype, shape=(3, 2, 5, 7)):
    x, out, z = (torch.randn(shape, device=device, dtype=torch.float64) for _ in range(3))
    return x, out, z, [t.to(dtype) for t in (x, out, z)]


@pytest.mark.parametrize("device,impl", impls())
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_ddpm_step_equals_the_textbook(device, impl, prediction, variance, t):
    for dtype in (torch.float64, torch.float32):
        x, out, z, (xd, od, zd) = _inputs(device, dtype)
        for clip in (None, 1.0):
            got = ddpm_step(xd, od, t, SCHED, prediction=prediction, variance=variance, clip_x0=clip, noise=zd,
                            impl=impl)
            want = textbook_ddpm(xd.double(), od.double(), t, SCHED, prediction, clip, variance, zd.double())
            assert got.dtype == dtype
            what = f"{impl} ddpm {dtype} {prediction} {variance} t={t} clip={clip}"
            if dtype == torch.float64:  # the reference itself: held to 1e-12 of the magnitude (different op order)
                assert (got - want).abs().max().item() <= 1e-12 * max(1, want.abs().max().item()), what
            else:  # the rule: at most 2x the error of the same formula evaluated in x's dtype
                assert_rule(got, textbook_ddpm(xd, od, t, SCHED, prediction, clip, variance, zd), want, what)


@pytest.mark.parametrize("device,impl", impls())
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("t,tp", [(999, 979), (20, 0), (0, -1), (500, 250)])
def test_ddim_step_equals_the_textbook(device, impl, prediction, eta, t, tp):
    x, out, z, (xd, od, zd) = _inputs(device, torch.float64)
    for clip in (None, 1.0):
        got = ddim_step(xd, od, t, tp, SCHED, eta=eta, prediction=prediction, clip_x0=clip, noise=zd, impl=impl)
        want = textbook_ddim(x, out, t, tp, SCHED, eta, prediction, clip, z)
        assert (got - want).abs().max().item() <= 1e-12 * max(1, want.abs().max().item())


@pytest.mark.parametrize("device,impl", impls())
def test_ddim_eta_1_has_ddpm_posterior_variance(device, impl):
    """eta = 1 gives sigma^2 = the DDPM posterior variance; same mean when t_prev = t - 1 (Song et al., eq. 16)."""
    x, out, z, _ = _inputs(device, torch.float64)
    a = ddim_step(x, out, 300, 299, SCHED, eta=1.0, noise=z, impl=impl)
    b = ddpm_step(x, out, 300, SCHED, noise=z, impl=impl)
    assert (a - b).abs().max().item() < 1e-10


@pytest.mark.parametrize("device,impl", impls())
def test_classifier_free_guidance_equals_the_formula(device, impl):
    x, cond, z, _ = _inputs(device, torch.float64)
    uncond = torch.randn_like(cond)
    for w in (0.0, 1.0, 7.5):
        got = ddpm_step(x, cond, 400, SCHED, model_out_uncond=uncond, guidance=w, noise=z, impl=impl)
        want = ddpm_step(x, uncond + w * (cond - uncond), 400, SCHED, noise=z, impl="ref")
        assert (got - want).abs().max().item() < 1e-12


@pytest.mark.parametrize("device,impl", impls())
def test_per_sample_timesteps(device, impl):
    x, out, z, _ = _inputs(device, torch.float64)
    ts = torch.tensor([999, 0, 37], device=device)
    got = ddpm_step(x, out, ts, SCHED, noise=z, impl=impl)
    for i, t in enumerate(ts.tolist()):
        want = textbook_ddpm(x[i], out[i], t, SCHED, "eps", None, "fixed_small", z[i])
        assert (got[i] - want).abs().max().item() < 1e-12
    got = ddim_step(x, out, ts, torch.tensor([979, -1, 17], device=device), SCHED, eta=0.3, noise=z, impl=impl)
    for i, (t, tp) in enumerate([(999, 979), (0, -1), (37, 17)]):
        want = textbook_ddim(x[i], out[i], t, tp, SCHED, 0.3, "eps", None, z[i])
        assert (got[i] - want).abs().max().item() < 1e-12


@pytest.mark.parametrize("device,impl", impls())
def test_last_step_adds_no_noise_and_seeded_runs_reproduce(device, impl):
    x, out, _, _ = _inputs(device, torch.float32)
    a = ddpm_step(x.float(), out.float(), 0, SCHED, generator=torch.Generator(device).manual_seed(1), impl=impl)
    b = ddpm_step(x.float(), out.float(), 0, SCHED, generator=torch.Generator(device).manual_seed(2), impl=impl)
    assert torch.equal(a, b)  # t = 0: no noise, whatever the generator
    c = ddpm_step(x.float(), out.float(), 10, SCHED, generator=torch.Generator(device).manual_seed(1), impl=impl)
    d = ddpm_step(x.float(), out.float(), 10, SCHED, generator=torch.Generator(device).manual_seed(1), impl=impl)
    e = ddpm_step(x.float(), out.float(), 10, SCHED, generator=torch.Generator(device).manual_seed(2), impl=impl)
    assert torch.equal(c, d) and not torch.equal(c, e)


@pytest.mark.parametrize("device,impl", impls())
def test_layouts_and_half_types(device, impl):
    x, out, z, _ = _inputs(device, torch.float64, shape=(2, 3, 4, 5))
    want = ddpm_step(x, out, 123, SCHED, noise=z, impl="ref")
    xc = x.float().contiguous(memory_format=torch.channels_last)
    zt = z.float().transpose(2, 3).contiguous().transpose(2, 3)  # a third layout: neither contiguous nor cl
    got = ddpm_step(xc, out.float(), 123, SCHED, noise=zt, impl=impl)
    eager = textbook_ddpm(x.float(), out.float(), 123, SCHED, "eps", None, "fixed_small", z.float())
    assert got.shape == x.shape
    assert_rule(got, eager, textbook_ddpm(x, out, 123, SCHED, "eps", None, "fixed_small", z), f"{impl} layouts")
    for dtype in (torch.float16, torch.bfloat16):
        xd, od, zd = x.to(dtype), out.to(dtype), z.to(dtype)
        got = ddpm_step(xd, od, 123, SCHED, noise=zd, impl=impl)
        eager = textbook_ddpm(xd, od, 123, SCHED, "eps", None, "fixed_small", zd)
        want = textbook_ddpm(xd.double(), od.double(), 123, SCHED, "eps", None, "fixed_small", zd.double())
        assert got.dtype == dtype
        assert_rule(got, eager, want, f"{impl} {dtype}")


@pytest.mark.parametrize("device,impl", impls())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_finer_model_output_is_read_in_float32(device, impl, dtype):
    # 16-bit x_t with an fp32 model output, unconditional output and noise (a UNet run in fp32 over an fp16 chain):
    # each stream is read in float32. The C++ kernel once rounded them to x's dtype first; with a cosine schedule's
    # large x0 coefficient at the last steps that was 5x off on this input.
    sched = NoiseSchedule.cosine(2)
    x = torch.ones(3, 4, device=device, dtype=dtype)
    m = torch.full((3, 4), 1.0002, device=device)
    got = ddim_step(x, m, 1, -1, sched, impl=impl)
    want = ddim_step(x.double(), m.double(), 1, -1, sched, impl="ref")
    torch.testing.assert_close(got.double(), want, rtol=2 ** -7, atol=0.0)
    x, m, u, z = (torch.randn(2, 3, 4, 5, device=device) for _ in range(4))
    xd = x.to(dtype).contiguous(memory_format=torch.channels_last)
    kw = dict(model_out_uncond=u, guidance=3.0, clip_x0=1.0)
    for noise in ({"noise": z}, {"generator": torch.Generator(device=device)}):
        runs = []
        for i in (impl, "ref"):
            if "generator" in noise:
                noise["generator"].manual_seed(7)
            runs.append(ddpm_step(xd, m, 600, SCHED, impl=i, **kw, **noise))
        assert runs[0].dtype == dtype and runs[0].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(runs[0], runs[1], rtol=2 ** -7, atol=1e-3)
    # A non-dense 16-bit x: the output has the strides of x's own-dtype path (what the fake kernel declares;
    # converting x first picked channels_last for this one and broke torch.compile's stride check).
    xs = torch.randn(2, 3, 8, 5, device=device).contiguous(memory_format=torch.channels_last).to(dtype)[:, :, ::2]
    same = ddim_step(xs, m.to(dtype), 3, 1, SCHED, impl=impl)
    mixed = ddim_step(xs, m, 3, 1, SCHED, impl=impl)
    assert mixed.stride() == same.stride() and mixed.dtype == dtype


@pytest.mark.parametrize("device,impl", impls())
def test_differentiable_in_every_impl(device, impl):
    # Backpropagating through steps (reward fine-tuning through a DDIM chain, optimising the initial noise): the
    # kernels' backward is the reference's vector-Jacobian product. The C++ op had no autograd formula and
    # returned a result whose backward silently gave x no gradient.
    opts = dict(device=device, dtype=torch.float64, requires_grad=True)
    x, m, u, z = (torch.randn(2, 3, 2, 2, **opts) for _ in range(4))
    fast = impl == "triton"

    def guided(x, m, u, z):
        return ddpm_step(x, m, 3, NoiseSchedule.linear(10), noise=z, model_out_uncond=u, guidance=3.0, clip_x0=1.0,
                         impl=impl)

    assert torch.autograd.gradcheck(guided, (x, m, u, z), fast_mode=fast)
    assert torch.autograd.gradgradcheck(guided, (x, m, u, z), fast_mode=fast)

    def philox(x, m):  # in-kernel noise: a constant of the inputs
        return ddim_step(x, m, 3, 1, NoiseSchedule.linear(10), eta=0.5, impl=impl,
                         generator=torch.Generator(device=device).manual_seed(0))

    assert torch.autograd.gradcheck(philox, (x, m), fast_mode=fast)
    xf, mf = (t.detach().float().requires_grad_() for t in (x, m))
    grads = [torch.autograd.grad(ddim_step(xf, mf, 3, 1, SCHED, impl=i).square().sum(), (xf, mf)) for i in
             (impl, "ref")]
    torch.testing.assert_close(grads[0], grads[1])
    # Calls autograd does not record skip the Python formula (fused_step goes below the Autograd key).
    assert not ddim_step(x.detach(), m.detach(), 3, 1, SCHED, impl=impl).requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(ddim_step(x, m, 3, 1, SCHED, impl=impl), ddim_step(x, m, 3, 1, SCHED, impl="ref"))


def test_schedules():
    lin = NoiseSchedule.linear(1000)
    assert lin.betas[0].item() == pytest.approx(1e-4) and lin.betas[-1].item() == pytest.approx(0.02)
    assert lin.alphas_cumprod[-1].item() == pytest.approx(math.prod(1 - b for b in lin.betas.tolist()), rel=1e-9)
    cos = NoiseSchedule.cosine(1000)
    abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cos.alphas_cumprod[499].item() == pytest.approx(abar(0.5) / abar(0.0), rel=1e-6)
    assert cos.betas.max().item() <= 0.999
    sl = NoiseSchedule.scaled_linear(1000)
    assert sl.betas[0].item() == pytest.approx(0.00085) and sl.betas[-1].item() == pytest.approx(0.012)
    with pytest.raises(ValueError, match="betas must be"):
        NoiseSchedule(torch.tensor([0.1, 1.5]))


def test_zero_terminal_snr_schedule():
    # Lin et al. 2023: sqrt(abar) shifted to end at 0 and scaled to keep its start; the last beta is 1.
    base = NoiseSchedule.scaled_linear(1000)
    z = base.rescale_zero_terminal_snr()
    assert z.zero_terminal_snr and not base.zero_terminal_snr
    assert z.betas[-1].item() == 1.0 and z.alphas_cumprod[-1].item() == 0.0
    assert z.alphas_cumprod[0].item() == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-12)
    root, root0 = z.alphas_cumprod.sqrt(), base.alphas_cumprod.sqrt()
    shifted = (root0 - root0[-1]) * root0[0] / (root0[0] - root0[-1])
    torch.testing.assert_close(root, shifted, rtol=1e-12, atol=1e-15)
    for bad in ([0.1, 1.0, 0.2], [0.1, 1.5], [0.0, 0.5]):  # a beta of 1 only last
        with pytest.raises(ValueError, match="betas must be"):
            NoiseSchedule(torch.tensor(bad))
    # An eps model cannot give x0 where abar = 0 (x0 = (x - eps) / 0): int and per-sample CPU t are refused.
    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for step in (lambda t: ddpm_step(x, m, t, z), lambda t: ddim_step(x, m, t, 900, z)):
        for t in (999, torch.tensor([5, 999])):
            with pytest.raises(ValueError, match="zero-terminal-SNR"):
                step(t)
        assert torch.isfinite(step(998)).all()
    # v and x0 models step from there: x0 = sqrt(abar) x - sqrt(1 - abar) v = -v
    for impl in _backend.live_impls("diffusion_step", "cpu"):
        torch.testing.assert_close(ddim_step(x, m, 999, -1, z, prediction="v", impl=impl), -m)
        torch.testing.assert_close(ddim_step(x, m, 999, -1, z, prediction="x0", impl=impl), m)


def test_bad_input_gets_a_clear_error():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\)"):
        ddpm_step(x, x, 1000, SCHED)
    with pytest.raises(ValueError, match="t_prev must be in"):
        ddim_step(x, x, 10, -2, SCHED)
    with pytest.raises(ValueError, match="a DDPM step needs t_prev < t, got t=3, t_prev=5"):
        ddpm_step(x, x, 3, SCHED, t_prev=5)
    with pytest.raises(ValueError, match="model_out must have x_t's shape"):
        ddpm_step(x, x[:1], 10, SCHED)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(2,\)"):
        ddpm_step(x, x, torch.tensor([1, 2, 3]), SCHED)
    with pytest.raises(TypeError, match="t must be an int or an integer tensor"):
        ddpm_step(x, x, 1.5, SCHED)
    with pytest.raises(ValueError, match="prediction must be one of"):
        ddpm_step(x, x, 10, SCHED, prediction="score")
    with pytest.raises(ValueError, match="needs both model_out_uncond and guidance"):
        ddpm_step(x, x, 10, SCHED, guidance=3.0)
    with pytest.raises(ValueError, match="clip_x0 must be > 0"):
        ddpm_step(x, x, 10, SCHED, clip_x0=0.0)
    with pytest.raises(RuntimeError, match="out of range"):
        ddpm_step(x, x, torch.tensor([5, 1000]), SCHED)


@pytest.mark.parametrize("device,impl", impls())
def test_compiles_with_fullgraph(device, impl):
    x, out, z = (torch.randn(2, 3, 4, 4, device=device) for _ in range(3))
    t = torch.tensor([10, 900], device=device)

    def f(x, out, z, t):
        return ddpm_step(x, out, t, SCHED, noise=z, impl=impl)

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x, out, z, t), f(x, out, z, t))


@pytest.mark.parametrize("device", [d for d in devices() if "triton" in _backend.live_impls("diffusion_step", d)])
def test_opcheck_triton_op(device):
    x, m, u, z = (torch.randn(2, 3, 4, 5, device=device) for _ in range(4))
    coef = torch.randn(2, 7, device=device)
    op = torch.ops.fastgan.diffusion_step_triton.default
    for args in ((x, m, u, z, coef, 2.0, 1.0), (x, m, None, None, coef, 1.0, 0.0)):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    # The old 8-wide table (before the x0 = a_x (x - g m) + r m form) is refused, not read in the new layout.
    with pytest.raises(RuntimeError, match=r"coef must be \(N, 7\) = \(2, 7\) or \(1, 7\), got \[2, 8\]"):
        op(x, m, None, None, torch.randn(2, 8, device=device), 1.0, 0.0)


@pytest.mark.parametrize("device", [d for d in devices() if _backend.has_kernel("diffusion_step", d.upper())])
def test_opcheck_and_errors_of_the_compiled_op(device):
    x, m, u, z = (torch.randn(2, 3, 4, 5, device=device) for _ in range(4))
    op = torch.ops.fastgan.diffusion_step.default
    for coef in (torch.randn(2, 7, device=device), torch.randn(1, 7, device=device)):
        for args in ((x, m, u, z, coef, 2.0, 1.0), (x.contiguous(memory_format=torch.channels_last), m, None, None,
                                                    coef, 1.0, 0.0)):
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    with pytest.raises(RuntimeError, match=r"coef must be \(N, 7\) = \(2, 7\) or \(1, 7\)"):
        op(x, m, None, None, torch.randn(3, 7, device=device), 1.0, 0.0)
    with pytest.raises(RuntimeError, match="model_out must have x's shape"):
        op(x, m[:1], None, None, torch.randn(2, 7, device=device), 1.0, 0.0)
    with pytest.raises(RuntimeError, match="x must be a non-empty"):
        op(x[:0], m[:0], None, None, torch.randn(0, 7, device=device), 1.0, 0.0)


@pytest.mark.parametrize("device,impl", impls())
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_predicted_x0_within_the_rule_at_every_noise_level(device, impl, prediction):
    """A DDIM step to t_prev = -1 returns x0 itself (c_0 = 1, no noise term). Near t = T an eps step divides
    x - sqrt(1 - abar) m by sqrt(abar) ~ 4.5e-5 (cosine, t = 999); eager (diffusers' formula) subtracts first. The
    former a_x x + a_m m form rounded a_x and a_m apart and was 1e2-1e4 x eager's error there."""
    sched = NoiseSchedule.cosine(1000)
    gen = torch.Generator().manual_seed(7)
    for t in (999, 995, 950, 500, 20, 0):
        abar = sched.tables(torch.device("cpu"))[0][t + 1]
        x0 = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64).clamp(-1, 1)
        eps = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
        x = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        m = {"eps": eps, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0, "x0": x0}[prediction]
        x32, m32 = x.float(), m.float()
        ours = ddim_step(x32.to(device), m32.to(device), t, -1, sched, prediction=prediction, impl=impl).cpu()

        def x0_of(xs, ms, a):  # diffusers' DDIM pred_original_sample
            if prediction == "eps":
                return (xs - (1 - a) ** 0.5 * ms) / a**0.5
            return a**0.5 * xs - (1 - a) ** 0.5 * ms if prediction == "v" else ms

        ref64 = x0_of(x32.double(), m32.double(), abar)
        assert_rule(ours, x0_of(x32, m32, abar.float()), ref64, f"{prediction} t={t}")


@pytest.mark.parametrize("device,impl", impls())
def test_infinite_input_as_the_reference(device, impl):
    # A DDPM step has c_e = 0: the Triton kernel multiplied it by an infinite eps (NaN) where the reference and the
    # C++ kernel, which fold c_x x + c_e eps into b_x x + b_m m, keep x's inf.
    x = torch.tensor([[math.inf, 1.0, -math.inf, 2.0]], device=device)
    m = torch.tensor([[0.0, math.inf, 1.0, math.nan]], device=device)
    z = torch.zeros_like(x)
    got = ddpm_step(x, m, 5, NoiseSchedule.linear(10), noise=z, impl=impl)
    want = ddpm_step(x, m, 5, NoiseSchedule.linear(10), noise=z, impl="ref")
    assert got[0, 0] == math.inf and got[0, 2] == -math.inf and got[0, 3].isnan()
    torch.testing.assert_close(got, want, equal_nan=True)
    # An infinite model output gives no finite value (NaN or +-inf, as the reference: see steps' docstring).
    m = torch.tensor([[math.inf, -math.inf]], device=device)
    for pred in ("eps", "v", "x0"):
        got = ddim_step(torch.ones_like(m), m, 500, 480, SCHED, prediction=pred, clip_x0=1.0, impl=impl)
        want = ddim_step(torch.ones_like(m), m, 500, 480, SCHED, prediction=pred, clip_x0=1.0, impl="ref")
        assert not got.isfinite().any()
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("device,impl", impls())
def test_ddim_step_with_t_prev_above_t_is_a_deterministic_inversion(device, impl):
    """t_prev > t is DDIM inversion: no noise whatever eta (sigma clamps to 0), and stepping back with the same
    eps returns the start (x_5 -> x_40 -> x_5)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 5, 4, generator=gen).to(device)
    eps = torch.randn(2, 3, 5, 4, generator=gen).to(device)
    up = ddim_step(x, eps, 5, 40, SCHED, impl=impl)
    torch.testing.assert_close(ddim_step(x, eps, 5, 40, SCHED, eta=0.7, impl=impl), up)
    assert (up - x).abs().max() > 1e-2, "the inversion step did not move x"
    torch.testing.assert_close(ddim_step(up, eps, 40, 5, SCHED, impl=impl), x, rtol=1e-5, atol=1e-5)
