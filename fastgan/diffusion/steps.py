"""One DDPM or DDIM denoising step as one fused elementwise op: ``ddpm_step`` and ``ddim_step``.

Both steps (every prediction type, variance choice, eta and classifier-free guidance) reduce to one formula per
element with seven per-sample coefficients ``k = (a_x, g, r, c_0, b_x, b_m, c_z)``::

    m    = u + w * (c - u)            classifier-free guidance (m = c without an unconditional output)
    x0   = a_x * (x - g * m) + r * m  predicted clean sample, then clamped to [-clip, clip] if asked
    out  = c_0 * x0 + b_x * x + b_m * m + c_z * z

which is the textbook ``x0 = a_x x + a_m m``, ``eps = e_x x + e_m m`` (from the unclipped prediction, as diffusers
does), ``out = c_0 x0 + c_x x + c_e eps + c_z z`` with ``a_m = r - g a_x``, ``b_x = c_x + c_e e_x`` and
``b_m = c_e e_m``. Why ``g`` and ``r``: near ``t = T`` an eps-prediction step has ``x0 = (x - sqrt(1 - abar) m) /
sqrt(abar)`` with ``abar`` ~ 2e-9 (cosine, t = 999), so ``a_x`` and ``a_m`` are ~ +-2e4 and nearly cancel:
rounded to float32 apart, they put errors of 4e-3 on an x0 in [-1, 1] (diffusers' float32 formula: 1e-4, from
rounding ``sqrt(1 - abar)`` to 1). ``g`` is ``-a_m / a_x`` rounded to float32 (``sqrt(1 - abar)`` for eps), so
``x - g m`` cancels before the large factor multiplies it, and ``r`` (float64, tiny there) carries what the
rounding of ``g`` left out. There, with m the true noise, x0 is now 1e-7 off; with a model's imperfect m the error
is eager's (the input's rounding dominates). A review helper's sweep (2 schedules, every prediction type, 91
timesteps) found it at most 1.8x eager's error elsewhere; the tests hold every impl to 2x.

An infinite model output can give NaN (when ``a_x (x - g m)`` and ``r m`` are infinities of opposite sign, or
``0 * inf``) where the ``a_x x + a_m m`` form and diffusers give +-inf; an infinite ``x`` still gives +-inf, and NaN
stays NaN.

The coefficients come from the schedule in float64, gathered per sample on the tensor's device (a per-sample
``t`` needs no host synchronisation), and the element pass is one kernel (C++ on CPU, Triton on GPU, the formula in
plain PyTorch otherwise). ``z`` is standard normal noise: passed in (``noise=``), or drawn inside the kernel:
Philox4x32-10 + Box–Muller keyed by a seed that each step draws from ``generator`` as a one-element int64 device
tensor (:mod:`fastgan.diffusion.philox` defines the numbers; every backend, the reference included, draws the same
noise up to the rounding of log/cos/sin). The noise of an element depends only on the seed and the element's
logical index, so it is the same for any memory layout (channels-last included) and any thread count, and no
full-size noise tensor is written or read.

The generator advances by one draw per noisy step (``torch.randint`` of one int64, a fixed small advance of its
state: Mersenne-Twister outputs on CPU, one Philox offset increment on CUDA), not per element: a seeded run
reproduces exactly and a different generator state gives different noise, but the noise is not the one
``torch.randn(shape, generator=g)`` would give. Steps that add no noise (DDPM at int ``t = 0``, DDIM with
``eta = 0``) draw nothing. The seed never visits the host, so a step (model call included) can be captured in a
CUDA graph: torch's graph-safe RNG records the generator's advance and the kernel reads the seed from device memory
at replay (designed for; not yet tested on a GPU). Under ``torch.compile(fullgraph=True)`` draw from the default
generator (``generator=None``, seeded with ``torch.manual_seed``): Dynamo does not trace an explicit
``torch.Generator`` argument.
"""
from __future__ import annotations

import torch

from .. import _backend
from . import philox, step_kernels
from .step_kernels import NUM_COEF
from .schedule import NoiseSchedule

__all__ = ["ddpm_step", "ddim_step", "step_coefficients", "fused_step", "fused_step_reference"]

PREDICTIONS = ("eps", "x0", "v")


def _as_index(t, n: int, device: torch.device, name: str, num_steps: int, allow_minus_one: bool) -> torch.Tensor:
    """``t`` (int or (N,)/(1,) integer tensor) as an int64 (N,) tensor on ``device``; range-checked without a
    host sync for tensors (an asynchronous device assert)."""
    low = -1 if allow_minus_one else 0
    if isinstance(t, int):
        if not low <= t < num_steps:
            raise ValueError(f"fastgan: {name} must be in [{low}, {num_steps}), got {t}")
        return torch.full((n,), t, dtype=torch.int64, device=device)
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"fastgan: {name} must be an int or an integer tensor, got {type(t).__name__}"
                        + (f" of {t.dtype}" if isinstance(t, torch.Tensor) else ""))
    if t.dim() > 1 or t.numel() not in (1, n):
        raise ValueError(f"fastgan: {name} must be a scalar or have shape ({n},) (one per sample), got {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.int64).reshape(-1).expand(n)
    torch._assert_async(((t >= low) & (t < num_steps)).all(), f"fastgan: {name} out of range [{low}, {num_steps})")
    return t


def step_coefficients(kind: str, schedule: NoiseSchedule, t: torch.Tensor, t_prev: torch.Tensor, *,
                      prediction: str = "eps", variance: str = "fixed_small", eta: float = 0.0) -> torch.Tensor:
    """Per-sample coefficients ``(N, 7)`` float64 of the fused step (see the module docstring).

    Args:
        kind: ``"ddpm"`` or ``"ddim"``.
        schedule: the noise schedule.
        t, t_prev: ``(N,)`` int64 current and previous timesteps (``t_prev = -1``: the step to the clean sample).
        prediction: what the model predicts: ``"eps"`` (noise), ``"x0"`` (clean sample) or ``"v"`` (velocity).
        variance: DDPM only: ``"fixed_small"`` (posterior variance) or ``"fixed_large"`` (beta).
        eta: DDIM only: 0 is deterministic DDIM, 1 matches DDPM's posterior variance.
    """
    if prediction == "eps" and schedule.zero_terminal_snr and t.device.type == "cpu" \
            and not torch.compiler.is_compiling() and bool((t == schedule.num_steps - 1).any()):
        # x0 = (x - eps) / 0 (NaN where diffusers gives inf/NaN silently). Device t: not checked (a host sync).
        raise ValueError(f"fastgan: prediction='eps' cannot step from t = {schedule.num_steps - 1} of a "
                         "zero-terminal-SNR schedule (alphas_cumprod is 0 there, x_t is pure noise and "
                         "x0 = (x_t - eps) / 0); use a 'v' (or 'x0') model, or start below the last timestep")
    tab = schedule.tables(t.device)
    abar = tab[0].index_select(0, t + 1)
    abar_prev = tab[0].index_select(0, t_prev + 1)
    sa, s1a = abar.sqrt(), (1 - abar).sqrt()
    one, zero = torch.ones_like(abar), torch.zeros_like(abar)
    if prediction == "eps":  # x0 = (x - s1a m) / sa
        a_x, e_x, e_m = 1 / sa, zero, one
        g = _round32(s1a)
        r = ((g - 1) + abar / (1 + s1a)) / sa  # (g - s1a) / sa, with 1 - s1a = abar / (1 + s1a): no cancellation
    elif prediction == "x0":  # x0 = m
        a_x, e_x, e_m = zero, 1 / s1a, -sa / s1a
        g, r = zero, one
    elif prediction == "v":  # x0 = sa x - s1a m: no large factor, g only keeps the form
        a_x, e_x, e_m = sa, s1a, sa
        g = _round32((s1a / sa).clamp(max=1.0))
        r = g * sa - s1a
    else:
        raise ValueError(f"fastgan: prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if kind == "ddpm":
        alpha_t = abar / abar_prev  # the step's alpha (equals alphas[t] when t_prev = t - 1)
        beta_t = 1 - alpha_t
        c_0 = abar_prev.sqrt() * beta_t / (1 - abar)
        c_x = alpha_t.sqrt() * (1 - abar_prev) / (1 - abar)
        if variance == "fixed_small":
            var = ((1 - abar_prev) / (1 - abar) * beta_t).clamp_min(1e-20)
        elif variance == "fixed_large":
            var = beta_t
        else:
            raise ValueError(f"fastgan: variance must be 'fixed_small' or 'fixed_large', got {variance!r}")
        c_z = torch.where(t > 0, var.sqrt(), zero)  # the last step (t = 0) adds no noise
        c_e = zero
    elif kind == "ddim":
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).clamp_min(0).sqrt()
        c_0, c_x = abar_prev.sqrt(), zero
        c_e = (1 - abar_prev - sigma**2).clamp_min(0).sqrt()
        c_z = sigma
    else:
        raise ValueError(f"fastgan: kind must be 'ddpm' or 'ddim', got {kind!r}")
    return torch.stack([a_x, g, r, c_0, c_x + c_e * e_x, c_e * e_m, c_z], dim=1)


def _round32(v: torch.Tensor) -> torch.Tensor:
    """``v`` rounded to float32 (kept float64): every kernel computes ``x - g m`` in float32 or float64, and with
    ``g`` exact in both, ``r`` makes up the difference exactly."""
    return v.to(torch.float32).to(torch.float64)


def fused_step_reference(x, m, u, z, coef, guidance: float, clip: float, seed=None) -> torch.Tensor:
    """The fused step in plain PyTorch (``impl="ref"``): float32 arithmetic for float32/float16/bfloat16 inputs
    (as the kernels), float64 for float64. One output buffer updated in place, so besides it only the guided
    model output (under guidance), dtype conversions and the Philox noise (``seed`` given, ``z`` None) allocate."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if z is None and seed is not None:
        z = philox.normal(seed, x.shape, acc, x.device)
    k = coef.to(acc)
    view = (k.shape[0],) + (1,) * (x.dim() - 1)
    a_x, g, r, c_0, b_x, b_m, c_z = (k[:, i].reshape(view) for i in range(NUM_COEF))
    xf, mf = x.to(acc), m.to(acc)
    if u is not None:
        uf = u.to(acc)
        mf = torch.lerp(uf, mf, guidance) if guidance != 1.0 else mf  # u + w (m - u)
    out = torch.empty_like(xf).copy_(mf).mul_(g).neg_().add_(xf)  # x - g m, the same bits, in x's layout
    out.mul_(a_x).addcmul_(mf, r)  # x0
    if clip > 0:
        out.clamp_(-clip, clip)
    out.mul_(c_0)
    out.addcmul_(xf, b_x)  # c_x x + c_e eps, eps = e_x x + e_m m
    out.addcmul_(mf, b_m)
    if z is not None:
        out.addcmul_(z.to(acc), c_z)
    return out.to(x.dtype)


def fused_step(x, m, u, z, coef, guidance: float = 1.0, clip: float = 0.0, *, seed=None, impl: str | None = None):
    """Run the fused step with the selected implementation (C++ on CPU, Triton on GPU, else the reference).
    ``seed`` (a one-element int64 tensor on x's device) with ``z=None`` draws the noise in the kernel."""
    which = _backend.select("diffusion_step", x.device, impl)
    if which != "ref" and not torch.compiler.is_compiling() and not _records_grad(x, m, u, z):
        # The ops' autograd formula is Python (step_kernels): entering it costs ~11 us a call even when nothing
        # requires grad, as much as the whole step on a small sample (a 1000-step loop pays it 1000 times), so
        # calls autograd will not record go below it. Under torch.compile the graph has no such cost.
        with torch._C._AutoDispatchBelowAutograd():
            return _run_kernel(which, x, m, u, z, coef, guidance, clip, seed)
    return _run_kernel(which, x, m, u, z, coef, guidance, clip, seed)


def _records_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _run_kernel(which: str, x, m, u, z, coef, guidance: float, clip: float, seed) -> torch.Tensor:
    philox_noise = z is None and seed is not None
    if which == "triton":
        if philox_noise:
            return step_kernels.triton_step_philox(x, m, u, seed, coef, float(guidance), float(clip))
        return step_kernels.triton_step(x, m, u, z, coef, float(guidance), float(clip))
    if which in ("cpp", "cuda"):
        if not philox_noise:
            return step_kernels.compiled_step(x, m, u, z, coef, float(guidance), float(clip))
        if step_kernels.has_compiled_philox(x.device):
            return step_kernels.compiled_step_philox(x, m, u, seed, coef, float(guidance), float(clip))
        _backend.warn_once("diffusion_step_philox", "the compiled extension predates diffusion_step_philox "
                           "(rebuild it); drawing the step noise with the reference")
    return fused_step_reference(x, m, u, z, coef, guidance, clip, seed=seed)


def _coef_key(kind, t: int, t_prev: int, device, options) -> tuple:
    return (kind, t, t_prev, torch.device(device), tuple(sorted(options.items())))


def _coef_cache(schedule: NoiseSchedule, room: int) -> dict:
    """The schedule's coefficient cache, emptied first if ``room`` more entries would take it past its bound."""
    cache = schedule.__dict__.setdefault("_coef_cache", {})
    if len(cache) + room > 16384:
        cache.clear()
    return cache


def _prime_coefficients(kind, schedule, ts, t_prevs, device, **options) -> None:
    """Cache the (1, 7) coefficients of many int steps from one computation and one host-to-device copy, so that
    a sampling loop does no copy (a host sync on CUDA) per step, even on its first run. The values are those
    :func:`_coefficients` computes one step at a time: the formulas are only +, -, *, / and sqrt, which round
    the same in a vectorised loop."""
    missing = [(t, p) for t, p in zip(ts, t_prevs) if _coef_key(kind, t, p, device, options)
               not in schedule.__dict__.get("_coef_cache", {})]
    if not missing:
        return
    cache = _coef_cache(schedule, len(missing))
    rows = step_coefficients(kind, schedule, torch.tensor([t for t, _ in missing]),
                             torch.tensor([p for _, p in missing]), **options).to(device)
    for i, (t, p) in enumerate(missing):
        cache[_coef_key(kind, t, p, device, options)] = rows[i:i + 1]


def _coefficients(kind, schedule, t, t_prev, x, **options) -> torch.Tensor:
    """``(1, 7)`` coefficients for int timesteps (cached on the schedule per device and options: a sampling loop
    computes each step's once), else ``(N, 7)`` gathered on x's device without a host sync."""
    if isinstance(t, int) and isinstance(t_prev, int) and not torch.compiler.is_compiling():
        T = schedule.num_steps
        if not 0 <= t < T:
            raise ValueError(f"fastgan: t must be in [0, {T}), got {t}")
        if not -1 <= t_prev < T:
            raise ValueError(f"fastgan: t_prev must be in [-1, {T}), got {t_prev}")
        cache = _coef_cache(schedule, 1)
        key = _coef_key(kind, t, t_prev, x.device, options)
        if key not in cache:
            one = torch.tensor([t]), torch.tensor([t_prev])
            cache[key] = step_coefficients(kind, schedule, *one, **options).to(x.device)
        return cache[key]
    n, T = x.shape[0], schedule.num_steps
    tt = _as_index(t, n, x.device, "t", T, allow_minus_one=False)
    tp = tt - 1 if t_prev is None else _as_index(t_prev, n, x.device, "t_prev", T, allow_minus_one=True)
    return step_coefficients(kind, schedule, tt, tp, **options)


def _check(x, model_out, model_out_uncond, noise, guidance):
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.dim() < 1 or x.numel() == 0:
        raise ValueError("fastgan: x_t must be a non-empty floating tensor of shape (N, ...)")
    for name, tensor in (("model_out", model_out), ("model_out_uncond", model_out_uncond), ("noise", noise)):
        if tensor is None:
            continue
        if tensor.shape != x.shape:
            raise ValueError(f"fastgan: {name} must have x_t's shape {tuple(x.shape)}, got {tuple(tensor.shape)}")
        if tensor.device != x.device:
            raise ValueError(f"fastgan: {name} is on {tensor.device} but x_t is on {x.device}")
        if not tensor.dtype.is_floating_point:
            raise TypeError(f"fastgan: {name} must be floating, got {tensor.dtype}")
    if (guidance is None) != (model_out_uncond is None):
        raise ValueError("fastgan: classifier-free guidance needs both model_out_uncond and guidance")


def _guidance(guidance) -> float:
    return 1.0 if guidance is None else float(guidance)


def _clip(clip_x0) -> float:
    if clip_x0 is None:
        return 0.0
    if not clip_x0 > 0:
        raise ValueError(f"fastgan: clip_x0 must be > 0 (or None for no clamp), got {clip_x0}")
    return float(clip_x0)


def ddpm_plan(x_t, t, t_prev, schedule: NoiseSchedule, *, prediction: str = "eps",
              variance: str = "fixed_small") -> tuple[torch.Tensor, bool]:
    """A DDPM step's fused-step coefficients and whether it draws noise (all but int ``t = 0``): what
    :func:`ddpm_step` uses, exposed for the samplers (the CUDA-graph loop replays the step with them in a static
    buffer)."""
    if t_prev is None and isinstance(t, int):
        t_prev = t - 1
    if isinstance(t, int) and isinstance(t_prev, int) and t_prev >= t:
        # The posterior q(x_{t_prev} | x_t, x0) needs t_prev < t: fixed_large gave NaN, fixed_small a meaningless
        # finite value. (DDIM allows it: a step with t_prev > t is its inversion.)
        raise ValueError(f"fastgan: a DDPM step needs t_prev < t, got t={t}, t_prev={t_prev}")
    coef = _coefficients("ddpm", schedule, t, t_prev, x_t, prediction=prediction, variance=variance)
    return coef, not (isinstance(t, int) and t == 0)


def ddim_plan(x_t, t, t_prev, schedule: NoiseSchedule, *, prediction: str = "eps",
              eta: float = 0.0) -> tuple[torch.Tensor, bool]:
    """A DDIM step's coefficients and whether it draws noise (``eta > 0``); see :func:`ddpm_plan`."""
    if not eta >= 0:
        raise ValueError(f"fastgan: eta must be >= 0, got {eta}")
    coef = _coefficients("ddim", schedule, t, t_prev, x_t, prediction=prediction, eta=float(eta))
    return coef, eta > 0


def ddpm_plans(x_t, ts: list[int], t_prevs: list[int], schedule: NoiseSchedule, *, prediction: str = "eps",
               variance: str = "fixed_small") -> list[tuple[torch.Tensor, bool]]:
    """:func:`ddpm_plan` for every step of a loop, the coefficients computed and copied to x_t's device at once."""
    _prime_coefficients("ddpm", schedule, ts, t_prevs, x_t.device, prediction=prediction, variance=variance)
    return [ddpm_plan(x_t, t, p, schedule, prediction=prediction, variance=variance) for t, p in zip(ts, t_prevs)]


def ddim_plans(x_t, ts: list[int], t_prevs: list[int], schedule: NoiseSchedule, *, prediction: str = "eps",
               eta: float = 0.0) -> list[tuple[torch.Tensor, bool]]:
    """:func:`ddim_plan` for every step of a loop (see :func:`ddpm_plans`)."""
    if not eta >= 0:
        raise ValueError(f"fastgan: eta must be >= 0, got {eta}")
    _prime_coefficients("ddim", schedule, ts, t_prevs, x_t.device, prediction=prediction, eta=float(eta))
    return [ddim_plan(x_t, t, p, schedule, prediction=prediction, eta=eta) for t, p in zip(ts, t_prevs)]


def _seed(x, noise, generator, needed: bool):
    """The step's Philox seed (one int64 draw from ``generator`` on x's device), or None when ``noise`` is given or
    the step adds no noise (then the generator does not advance)."""
    if noise is not None or not needed:
        return None
    return philox.draw_seed(generator, x.device)


def ddpm_step(x_t, model_out, t, schedule: NoiseSchedule, *, t_prev=None, prediction: str = "eps",
              clip_x0: float | None = None, variance: str = "fixed_small", generator=None, noise=None,
              model_out_uncond=None, guidance: float | None = None, impl: str | None = None) -> torch.Tensor:
    """One DDPM ancestral step ``x_t -> x_{t_prev}`` (Ho et al.), as diffusers' ``DDPMScheduler.step``.

    Args:
        x_t: ``(N, ...)`` current sample.
        model_out: the model's output at ``(x_t, t)``, x_t's shape (the conditional one under guidance).
        t: int or ``(N,)`` integer tensor of current timesteps (per-sample allowed, no host sync).
        schedule: the :class:`NoiseSchedule`.
        t_prev: previous timestep(s), default ``t - 1`` (pass it when sampling with skipped timesteps).
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_x0: clamp the predicted x0 to ``[-clip_x0, clip_x0]`` (None: no clamp).
        variance: ``"fixed_small"`` (posterior) or ``"fixed_large"`` (beta_t).
        generator: ``torch.Generator`` (on x_t's device; default: the device's default generator) that the in-kernel
            noise's seed is drawn from, one draw per step; ``noise``: the noise itself (x_t's shape), used as given.
        model_out_uncond, guidance: classifier-free guidance ``u + guidance * (model_out - u)``.
        impl: pin ``"ref"``, ``"cpp"`` or ``"triton"`` (None: C++ on CPU, Triton on CUDA).

    Returns:
        ``x_{t_prev}`` in x_t's dtype and shape. At ``t = 0`` no noise is added. Differentiable in x_t, the model
        outputs and ``noise`` with every impl (the kernels' backward is the reference's). Model outputs and noise
        of another dtype than a 16-bit x_t are read in float32, not rounded to x_t's dtype first.
    """
    _check(x_t, model_out, model_out_uncond, noise, guidance)
    coef, noisy = ddpm_plan(x_t, t, t_prev, schedule, prediction=prediction, variance=variance)
    seed = _seed(x_t, noise, generator, needed=noisy)
    return fused_step(x_t, model_out, model_out_uncond, noise, coef, _guidance(guidance), _clip(clip_x0), seed=seed,
                      impl=impl)


def ddim_step(x_t, model_out, t, t_prev, schedule: NoiseSchedule, *, eta: float = 0.0, prediction: str = "eps",
              clip_x0: float | None = None, generator=None, noise=None, model_out_uncond=None,
              guidance: float | None = None, impl: str | None = None) -> torch.Tensor:
    """One DDIM step ``x_t -> x_{t_prev}`` (Song et al.), as diffusers' ``DDIMScheduler.step`` with
    ``use_clipped_model_output=False``: ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps +
    sigma z``, ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``.

    Args: as :func:`ddpm_step`, plus ``t_prev`` (int or ``(N,)``; ``-1`` steps to the clean sample, where
    ``abar`` is taken as 1) and ``eta`` (0: deterministic, no noise drawn). ``t_prev > t`` is accepted on purpose:
    it is DDIM inversion (image -> noise), deterministic whatever ``eta`` (sigma's ``1 - abar_t / abar_prev`` is
    negative there and clamped to 0). A DDPM step refuses it.
    """
    _check(x_t, model_out, model_out_uncond, noise, guidance)
    coef, noisy = ddim_plan(x_t, t, t_prev, schedule, prediction=prediction, eta=eta)
    seed = _seed(x_t, noise, generator, needed=noisy)
    return fused_step(x_t, model_out, model_out_uncond, noise, coef, _guidance(guidance), _clip(clip_x0), seed=seed,
                      impl=impl)
