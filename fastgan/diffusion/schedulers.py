"""diffusers-compatible schedulers on fastgan's fused steps: ``FusedDDPMScheduler`` and ``FusedDDIMScheduler``.

They implement the scheduler interface diffusers' pipelines call (``config``, ``from_config``, ``set_timesteps``,
``timesteps``, ``init_noise_sigma``, ``scale_model_input``, ``add_noise``, ``step``), so a pipeline switches with::

    pipe.scheduler = FusedDDIMScheduler.from_config(pipe.scheduler.config)

``step`` runs :func:`~fastgan.diffusion.ddpm_step` / :func:`~fastgan.diffusion.ddim_step` (one fused element pass).
Numbers follow diffusers' ``DDPMScheduler`` / ``DDIMScheduler``: the schedule is diffusers' float32
``alphas_cumprod`` (held exactly in fastgan's float64 tables, so a model trained with diffusers' ``add_noise`` sees
the same noise levels), the step noise is drawn as diffusers' ``randn_tensor`` draws it (same generator, shape,
dtype and device rules), so a seeded loop gives the same samples up to float rounding of the coefficients (fastgan
evaluates them in float64, diffusers in float32).

diffusers itself is not imported: it is optional. Options the fused step cannot express raise
``NotImplementedError`` naming the option (dynamic thresholding, learned variances, ``use_clipped_model_output``
with clipping).

Saving and loading: ``scheduler.save_pretrained(path)`` writes diffusers' ``scheduler_config.json`` naming
diffusers' own class, so ``diffusers.DDIMScheduler.from_pretrained(path)`` loads it where fastgan is not installed;
``FusedDDIMScheduler.from_pretrained(pipeline_folder, subfolder="scheduler")`` reads a folder saved by diffusers
(local paths; for a Hub id load diffusers' scheduler and convert with ``from_config``). These classes are not
diffusers' ``SchedulerMixin`` (that would make diffusers a dependency), so ``pipe.save_pretrained`` skips them and
a saved pipeline would not reload. Swap diffusers' scheduler back first; the configs convert both ways::

    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(path)
"""
from __future__ import annotations

import inspect
import json
import os

import numpy as np
import torch

from .schedule import NoiseSchedule, _zero_terminal_snr_betas
from .steps import ddim_step, ddpm_step, step_coefficients

__all__ = ["FusedDDPMScheduler", "FusedDDIMScheduler", "SchedulerConfig", "SchedulerStepOutput"]

# diffusers' prediction_type -> fastgan's prediction
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_SPACINGS = ("leading", "trailing", "linspace")


class SchedulerConfig(dict):
    """The constructor arguments as a dict with attribute access (``config.num_train_timesteps``), as diffusers'
    ``FrozenDict``. Treat it as read-only: changing it does not change the scheduler."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no field {name!r}") from None


class SchedulerStepOutput:
    """What ``step`` returns: ``prev_sample`` and ``pred_original_sample``.

    ``pred_original_sample`` (the clamped predicted x0) is computed on first access: the fused step never
    materialises it, and pipelines rarely read it, so it costs one extra element pass only when used. It is
    computed from step()'s ``sample`` and ``model_output``; reading it after either was modified in place (a loop
    that reuses its buffers) raises instead of returning a wrong x0. Inference-mode tensors keep no version
    counter to check, so with them it is computed in step(). Indexing works as for diffusers' outputs:
    ``out[0]`` is ``prev_sample``, ``out["prev_sample"]`` too.
    """

    def __init__(self, prev_sample: torch.Tensor, x0_fn, inputs: tuple = ()):
        self.prev_sample = prev_sample
        self._x0_fn = x0_fn
        self._x0 = None
        self._inputs = inputs
        if any(t.is_inference() for t in inputs):
            self._x0, self._inputs = x0_fn(), ()
        self._versions = tuple(t._version for t in self._inputs)

    @property
    def pred_original_sample(self) -> torch.Tensor:
        if self._x0 is None:
            if tuple(t._version for t in self._inputs) != self._versions:
                raise RuntimeError(
                    "fastgan: pred_original_sample is computed when first read, from step()'s sample and "
                    "model_output, and one of them was modified in place since; read it before modifying them"
                )
            self._x0 = self._x0_fn()
            self._inputs = ()
        return self._x0

    def to_tuple(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prev_sample, self.pred_original_sample

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]


def diffusers_betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
                    trained_betas=None) -> torch.Tensor:
    """The ``(T,)`` float32 betas diffusers builds for a config (same torch calls, so bit-identical).

    Raises:
        NotImplementedError: a schedule other than linear, scaled_linear, squaredcos_cap_v2 or sigmoid.
    """
    T = int(num_train_timesteps)
    if trained_betas is not None:
        return torch.as_tensor(trained_betas, dtype=torch.float32).flatten()
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        # Python-float cosine betas, capped at 0.999, then float32 (as diffusers' betas_for_alpha_bar).
        return NoiseSchedule.cosine(T).betas.to(torch.float32)
    if beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start
    raise NotImplementedError(f"fastgan: beta_schedule {beta_schedule!r} is not supported by the fused schedulers "
                              "(linear, scaled_linear, squaredcos_cap_v2, sigmoid; or pass trained_betas)")


def schedule_from_alphas_cumprod(abar32: torch.Tensor) -> NoiseSchedule:
    """A :class:`NoiseSchedule` whose float64 ``alphas_cumprod`` equals ``abar32`` (to float64 rounding): the betas
    are recovered from the ratios of consecutive float32 products, so the tables reproduce diffusers' float32
    cumulative product rather than a more exact float64 one the model was never trained with."""
    abar = abar32.to(torch.float64)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1.0 - abar / prev
    if not bool((betas > 0).all()):
        # NoiseSchedule would reject them as out of (0, 1) and print the rebuilt betas, not the user's.
        steps = (betas <= 0).nonzero().flatten().tolist()
        raise ValueError(f"fastgan: the betas at steps {steps[:8]}{' ...' if len(steps) > 8 else ''} are below "
                         "float32's resolution of alphas_cumprod (about 3e-8 next to 1, diffusers' float32 table), "
                         "so the step is a no-op the fused step cannot express; use betas of at least 1e-7")
    return NoiseSchedule(betas)


def randn_like_diffusers(shape, generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise drawn as diffusers' ``randn_tensor``: on a CPU generator's device then moved, one
    ``(1, ...)`` draw per sample for a list of generators, so the same seeded generator gives the same noise."""
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    if len(gens) == 1:
        gens = gens[0]
    first = gens[0] if isinstance(gens, list) else gens
    rand_device = device
    if first is not None and first.device.type != device.type:
        if first.device.type != "cpu":
            raise ValueError(f"fastgan: cannot draw {device} noise from a {first.device.type} generator")
        rand_device = torch.device("cpu")
    if isinstance(gens, list):
        if len(gens) != shape[0]:
            raise ValueError(f"fastgan: {len(gens)} generators for a batch of {shape[0]}")
        parts = [torch.randn((1,) + tuple(shape[1:]), generator=g, device=rand_device, dtype=dtype) for g in gens]
        return torch.cat(parts).to(device)
    return torch.randn(tuple(shape), generator=gens, device=rand_device, dtype=dtype).to(device)


class _FusedScheduler:
    """Shared by both schedulers: config, tables, timesteps, ``add_noise``. Subclasses define ``step``."""

    order = 1
    init_noise_sigma = 1.0
    config_name = "scheduler_config.json"  # diffusers' file name for a scheduler's config
    _diffusers_class_name = ""  # the diffusers scheduler whose config fields and numbers this class follows

    def _setup(self, config: dict) -> None:
        self.config = SchedulerConfig(config)
        c = self.config
        if c.prediction_type not in _PREDICTIONS:
            raise ValueError(f"fastgan: prediction_type must be one of {sorted(_PREDICTIONS)}, got "
                             f"{c.prediction_type!r}")
        if c.thresholding:
            raise NotImplementedError("fastgan: thresholding=True (dynamic thresholding needs a per-sample "
                                      "quantile the fused step does not compute); use clip_sample instead")
        if c.timestep_spacing not in _SPACINGS:
            raise ValueError(f"fastgan: timestep_spacing must be one of {_SPACINGS}, got {c.timestep_spacing!r}")
        if c.clip_sample and not c.clip_sample_range > 0:
            raise ValueError(f"fastgan: clip_sample_range must be > 0, got {c.clip_sample_range}")
        self.betas = diffusers_betas(c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule,
                                     c.trained_betas)
        if c.rescale_betas_zero_snr:  # diffusers rescales its float32 betas: the same calls, the same bits
            self.betas = _zero_terminal_snr_betas(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # float32, as diffusers (models trained on these)
        self.schedule = schedule_from_alphas_cumprod(self.alphas_cumprod)
        self.prediction = _PREDICTIONS[c.prediction_type]
        self.clip_x0 = float(c.clip_sample_range) if c.clip_sample else None
        self.num_inference_steps = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(c.num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._prev = {}  # timestep -> previous timestep of the current schedule

    @classmethod
    def from_config(cls, config=None, **kwargs):
        """Build from another scheduler's config (a dict, diffusers' ``FrozenDict`` or an object with ``.config``);
        keys this class does not take (``_class_name``, ``skip_prk_steps``, ...) are ignored, ``kwargs`` win."""
        if config is not None and hasattr(config, "config") and not isinstance(config, dict):
            config = config.config
        merged = dict(config or {})
        merged.update(kwargs)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        return cls(**{k: v for k, v in merged.items() if k in accepted})

    def save_config(self, save_directory, push_to_hub: bool = False, **kwargs) -> str:
        """Write the config as diffusers' ``scheduler_config.json`` into ``save_directory`` (created if needed).

        ``_class_name`` names diffusers' own scheduler (``DDPMScheduler`` / ``DDIMScheduler``), so diffusers loads
        the file without fastgan, and :meth:`from_pretrained` reads it back. ``trained_betas`` is stored as a list.

        Returns:
            The path of the written file.

        Raises:
            NotImplementedError: ``push_to_hub=True`` (fastgan has no network code).
        """
        if push_to_hub:
            raise NotImplementedError("fastgan: push_to_hub is not supported; save locally and upload the folder")
        config = {"_class_name": self._diffusers_class_name}
        for key, value in self.config.items():
            if key == "trained_betas" and value is not None:
                value = torch.as_tensor(value, dtype=torch.float64).flatten().tolist()
            if not key.startswith("_"):
                config[key] = value
        # The whole text first (numpy/torch scalars as Python numbers), then a temporary file renamed over the old
        # one: a value JSON cannot hold fails before anything is written, and a saved config is never left truncated.
        text = json.dumps(config, indent=2, sort_keys=True, default=_json_scalar) + "\n"
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    save_pretrained = save_config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs):
        """Build from a saved scheduler config: a local folder holding ``scheduler_config.json`` (diffusers'
        layout; a pipeline folder with ``subfolder="scheduler"``) or the file itself. As :meth:`from_config`: keys
        this class does not take are ignored and ``kwargs`` override fields (so diffusers' loading options, such as
        ``cache_dir``, are ignored too).

        Raises:
            FileNotFoundError: no config there (a Hugging Face Hub id, say: this reads local files only).
        """
        path = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            path = os.path.join(path, subfolder)
        if os.path.isdir(path):
            path = os.path.join(path, cls.config_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"fastgan: no scheduler config at {path!r}; from_pretrained reads a local folder holding "
                f"{cls.config_name} (or the file). For a Hugging Face Hub id, load diffusers' scheduler and convert: "
                f"{cls.__name__}.from_config(diffusers.{cls._diffusers_class_name}.from_pretrained(id, "
                "subfolder='scheduler').config)")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError(f"fastgan: {path!r} does not hold a JSON object of scheduler config fields")
        return cls.from_config(config, **kwargs)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """DDPM/DDIM inputs need no scaling: returns ``sample``."""
        return sample

    def _spaced(self, n: int) -> list[int]:
        """diffusers' spacings: leading ``[(n-1)k, ..., 0] + steps_offset`` with ``k = T // n``; trailing
        ``round(T, T - T/n, ...) - 1``; linspace ``round(linspace(0, T - 1, n))`` reversed."""
        c, T = self.config, self.config.num_train_timesteps
        if c.timestep_spacing == "leading":
            k = T // n
            return [i * k + int(c.steps_offset) for i in range(n - 1, -1, -1)]
        if c.timestep_spacing == "trailing":
            # numpy's float arange and round-half-to-even, exactly as diffusers computes them
            return (np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1).tolist()
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64).tolist()

    def _set_schedule(self, timesteps: list[int], device) -> None:
        T = self.config.num_train_timesteps
        if not all(0 <= t < T for t in timesteps):
            raise ValueError(f"fastgan: timesteps must lie in [0, {T}); got {timesteps[0]}..{timesteps[-1]} "
                             "(check steps_offset)")
        self.timesteps = torch.tensor(timesteps, dtype=torch.int64, device=device)
        self._prev = {t: (timesteps[i + 1] if i + 1 < len(timesteps) else -1) for i, t in enumerate(timesteps)}

    def _abar(self, device, dtype) -> torch.Tensor:
        """``alphas_cumprod`` on ``device`` in ``dtype`` (as diffusers' ``add_noise`` casts it), cached: training
        loops call ``add_noise`` every step."""
        key = (torch.device(device), dtype)
        cache = self.__dict__.setdefault("_abar_cache", {})
        if key not in cache:
            cache[key] = self.alphas_cumprod.to(device=device, dtype=dtype)
        return cache[key]

    def _sqrt_pair(self, like: torch.Tensor, timesteps: torch.Tensor):
        a = self._abar(like.device, like.dtype)[timesteps.to(like.device)].flatten()
        view = (-1,) + (1,) * (like.dim() - 1)
        return a.sqrt().reshape(view), (1 - a).sqrt().reshape(view)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` per sample (``abar`` in the samples' dtype, as diffusers)."""
        sa, s1a = self._sqrt_pair(original_samples, timesteps)
        return sa * original_samples + s1a * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target ``sqrt(abar_t) noise - sqrt(1 - abar_t) sample``."""
        sa, s1a = self._sqrt_pair(sample, timesteps)
        return sa * noise - s1a * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _x0_fn(self, kind, t, t_prev, sample, model_output, **options):
        """Deferred ``pred_original_sample``: ``a_x (x - g m) + r m`` with the step's own coefficients (the kernels'
        form, see :mod:`fastgan.diffusion.steps`), then clamped."""
        def compute():
            k = step_coefficients(kind, self.schedule, torch.tensor([t]), torch.tensor([t_prev]),
                                  prediction=self.prediction, **options)[0]
            a_x, g, r = k[:3].tolist()
            acc = torch.float64 if sample.dtype == torch.float64 else torch.float32
            x, m = sample.to(acc), model_output.to(acc)
            x0 = (x - m * g) * a_x + m * r
            if self.clip_x0 is not None:
                x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            return x0.to(sample.dtype)
        return compute

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def _json_scalar(value):
    """json.dumps' fallback: numpy and torch scalars (np.int64(1000), torch.tensor(0.02)) as Python numbers."""
    if isinstance(value, (np.generic, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"fastgan: scheduler config value {value!r} of type {type(value).__name__} cannot be saved as JSON")


def _as_int(timestep) -> int:
    # A pipeline passes an element of self.timesteps (0-dim int64 tensor); int() of a CUDA scalar syncs once per
    # step, as diffusers' own `prev_t >= 0` comparisons do.
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1 or timestep.dtype.is_floating_point:
            raise ValueError("fastgan: timestep must be an int or a one-element integer tensor "
                             f"(got shape {tuple(timestep.shape)}, {timestep.dtype})")
        return int(timestep.item())
    return int(timestep)


class FusedDDPMScheduler(_FusedScheduler):
    """diffusers' ``DDPMScheduler`` interface, stepping with :func:`~fastgan.diffusion.ddpm_step`.

    Saved with :meth:`save_pretrained` as a ``DDPMScheduler`` config; :meth:`from_pretrained` reads one.

    Args (diffusers' config fields):
        num_train_timesteps, beta_start, beta_end, beta_schedule (``"linear"``, ``"scaled_linear"``,
            ``"squaredcos_cap_v2"``, ``"sigmoid"``), trained_betas: the noise schedule.
        variance_type: ``"fixed_small"``, ``"fixed_small_log"`` (the same numbers) or ``"fixed_large"``;
            ``"fixed_large_log"``, ``"learned"``, ``"learned_range"`` raise NotImplementedError.
        clip_sample, clip_sample_range: clamp the predicted x0 to ``[-range, range]``.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        timestep_spacing, steps_offset: how :meth:`set_timesteps` spaces the inference timesteps.
        rescale_betas_zero_snr: zero terminal SNR (``alphas_cumprod[-1] = 0``; an ``"epsilon"`` model then
            cannot step from the last timestep, which a ``"trailing"`` spacing visits: ValueError).
        thresholding: must be False (NotImplementedError); dynamic_thresholding_ratio and sample_max_value are
            accepted and unused.
    """

    _diffusers_class_name = "DDPMScheduler"

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if variance_type in ("fixed_large_log", "learned", "learned_range"):
            raise NotImplementedError(f"fastgan: variance_type={variance_type!r} (supported: fixed_small, "
                                      "fixed_small_log, fixed_large)")
        if variance_type not in ("fixed_small", "fixed_small_log", "fixed_large"):
            raise ValueError(f"fastgan: unknown variance_type {variance_type!r}")
        self._setup(config)
        self.variance_type = variance_type
        # fixed_small_log is exp(0.5 log var) = sqrt(var): fixed_small's numbers.
        self._variance = "fixed_large" if variance_type == "fixed_large" else "fixed_small"

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps: list[int] | None = None):
        """Choose the inference timesteps (``num_inference_steps`` spaced per the config, or explicit descending
        ``timesteps``); the step from each goes to the next one, from the last to ``-1``."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("fastgan: pass exactly one of num_inference_steps or timesteps")
        T = self.config.num_train_timesteps
        if timesteps is not None:
            timesteps = [int(t) for t in timesteps]
            if any(b >= a for a, b in zip(timesteps, timesteps[1:])):
                raise ValueError("fastgan: custom timesteps must be in descending order")
            self.custom_timesteps, self.num_inference_steps = True, len(timesteps)
        else:
            if not 1 <= num_inference_steps <= T:
                raise ValueError(f"fastgan: num_inference_steps must be in [1, {T}], got {num_inference_steps}")
            self.custom_timesteps, self.num_inference_steps = False, int(num_inference_steps)
            timesteps = self._spaced(self.num_inference_steps)
        self._set_schedule(timesteps, device)

    def previous_timestep(self, timestep) -> int:
        t = _as_int(timestep)
        if self.num_inference_steps is None:
            return t - 1
        if t not in self._prev:
            raise ValueError(f"fastgan: timestep {t} is not in the scheduler's timesteps")
        return self._prev[t]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """One reverse step ``x_t -> x_{prev}`` with :func:`~fastgan.diffusion.ddpm_step` (noise only for t > 0,
        drawn like diffusers' ``randn_tensor`` from ``generator``).

        Args:
            model_output: ``(N, ...)`` the model's prediction, sample's shape.
            timestep: the current timestep (int or one-element tensor).
            sample: ``(N, ...)`` ``x_t``.
            generator: ``torch.Generator`` or list of them (one per sample).
            return_dict: False returns ``(prev_sample, pred_original_sample)``.
        Returns:
            :class:`SchedulerStepOutput` with ``prev_sample`` (sample's shape and dtype).
        """
        t = _as_int(timestep)
        t_prev = self.previous_timestep(t)
        noise = (randn_like_diffusers(model_output.shape, generator, model_output.device, model_output.dtype)
                 if t > 0 else None)
        prev = ddpm_step(sample, model_output, t, self.schedule, t_prev=t_prev, prediction=self.prediction,
                         clip_x0=self.clip_x0, variance=self._variance, noise=noise)
        out = SchedulerStepOutput(prev, self._x0_fn("ddpm", t, t_prev, sample, model_output,
                                                    variance=self._variance), (sample, model_output))
        return out if return_dict else out.to_tuple()


class FusedDDIMScheduler(_FusedScheduler):
    """diffusers' ``DDIMScheduler`` interface, stepping with :func:`~fastgan.diffusion.ddim_step`.

    Args: as :class:`FusedDDPMScheduler` (no variance_type) plus ``set_alpha_to_one``: the cumulative alpha the
    final step goes to is 1 (True) or ``alphas_cumprod[0]`` (False, as Stable Diffusion's config).

    As diffusers, the previous timestep is always ``t - num_train_timesteps // num_inference_steps`` (whatever
    the spacing), and ``step`` needs :meth:`set_timesteps` first. Saved with :meth:`save_pretrained` as a
    ``DDIMScheduler`` config; :meth:`from_pretrained` reads one.
    """

    _diffusers_class_name = "DDIMScheduler"

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self._setup(config)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Choose ``num_inference_steps`` timesteps spaced per the config (``timestep_spacing``, ``steps_offset``)."""
        T = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"fastgan: num_inference_steps must be in [1, {T}], got {num_inference_steps}")
        self.num_inference_steps = int(num_inference_steps)
        self._set_schedule(self._spaced(self.num_inference_steps), device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True):
        """One DDIM step with :func:`~fastgan.diffusion.ddim_step`.

        Args:
            model_output, timestep, sample, generator, return_dict: as :meth:`FusedDDPMScheduler.step`.
            eta: 0 deterministic DDIM, 1 DDPM-like; noise is drawn only for ``eta > 0``.
            use_clipped_model_output: re-derive eps from the clipped x0; only without clipping (where it changes
                nothing), else NotImplementedError (the fused step derives eps from the unclipped prediction).
            variance_noise: the noise itself, instead of ``generator``.
        Returns:
            :class:`SchedulerStepOutput` with ``prev_sample``.
        """
        if self.num_inference_steps is None:
            raise ValueError("fastgan: call set_timesteps(num_inference_steps) before step()")
        if use_clipped_model_output and self.clip_x0 is not None:
            raise NotImplementedError("fastgan: use_clipped_model_output=True with clip_sample=True")
        if variance_noise is not None and generator is not None:
            raise ValueError("fastgan: pass either generator or variance_noise, not both")
        t = _as_int(timestep)
        t_prev = t - self.config.num_train_timesteps // self.num_inference_steps
        if t_prev < 0:
            # The final step goes to abar = 1 (ddim_step's t_prev = -1) or to alphas_cumprod[0] (t_prev = 0).
            t_prev = -1 if self.config.set_alpha_to_one else 0
        noise = None
        if eta > 0:
            noise = variance_noise if variance_noise is not None else randn_like_diffusers(
                model_output.shape, generator, model_output.device, model_output.dtype)
        prev = ddim_step(sample, model_output, t, t_prev, self.schedule, eta=float(eta), prediction=self.prediction,
                         clip_x0=self.clip_x0, noise=noise)
        out = SchedulerStepOutput(prev, self._x0_fn("ddim", t, t_prev, sample, model_output, eta=float(eta)),
                                  (sample, model_output))
        return out if return_dict else out.to_tuple()
