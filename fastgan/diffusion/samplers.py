"""Sampling loops: ``DDPMSampler`` and ``DDIMSampler`` around the fused steps.

Timesteps follow diffusers' default ("leading") spacing: with ``k = T // num_inference_steps`` the loop visits
``t = (n - 1) k, ..., k, 0`` and steps from ``t`` to ``t - k`` (``-1`` after ``t = 0`` for DDIM, where the
cumulative alpha is taken as 1). Classifier-free guidance runs the model once on the doubled batch
``[x, x]`` with ``[cond, null_cond]`` and combines the halves inside the fused step.

The loop has no host synchronisation of its own: timesteps are Python ints, and every step's coefficients are
computed and copied to the device at once before the loop (then cached on the schedule).

``sample(..., cuda_graph=True)`` captures (model call + fused step) once in a CUDA graph and replays it for every
step: the first steps run eagerly on a side stream (they warm up cuBLAS/cuDNN, Triton's compilation and the
allocator, which a capture must not do), then each replay reads the step's timestep and coefficients from static
device buffers (filled by two small device-side copies, no host sync) and draws its noise seed through torch's
graph-safe Philox state, so a seeded graphed run gives the same samples as the eager loop. Steps whose noise
differs from the graphed one (DDPM's last, noiseless step) run eagerly. The model must be capturable: no host
syncs, no data-dependent Python control flow, no CPU tensors; fastgan's UNet is.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable

import torch

from . import philox
from .schedule import NoiseSchedule
from .steps import _clip, _guidance, ddim_plans, ddim_step, ddpm_plans, ddpm_step, fused_step

__all__ = ["DDPMSampler", "DDIMSampler", "leading_timesteps"]


def leading_timesteps(num_steps: int, num_inference_steps: int) -> list[int]:
    """diffusers' "leading" spacing: ``[(n - 1) k, ..., k, 0]`` with ``k = num_steps // n``."""
    if not 1 <= num_inference_steps <= num_steps:
        raise ValueError(f"fastgan: num_inference_steps must be in [1, {num_steps}], got {num_inference_steps}")
    k = num_steps // num_inference_steps
    return [i * k for i in range(num_inference_steps - 1, -1, -1)]


class _Sampler:
    kind = ""

    def __init__(self, model: Callable[..., torch.Tensor], schedule: NoiseSchedule, *, prediction: str = "eps",
                 clip_x0: float | None = None, num_inference_steps: int | None = None):
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.timesteps = leading_timesteps(
            schedule.num_steps, schedule.num_steps if num_inference_steps is None else num_inference_steps
        )
        self.stride = schedule.num_steps // len(self.timesteps)

    def _model_out(self, x, t, cond, null_cond, guidance):
        """The model's prediction(s) at ``t`` (an int, or the graphed loop's static (N,) int64 buffer)."""
        tt = t if isinstance(t, torch.Tensor) else torch.full((x.shape[0],), t, device=x.device, dtype=torch.int64)
        if cond is None:
            return self.model(x, tt), None
        if guidance is None:
            return self.model(x, tt, cond), None
        both = self.model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null_cond]))
        c, u = both.chunk(2)
        return c, u

    def _step(self, x, out, uncond, t, t_prev, guidance, generator, step_kw) -> torch.Tensor:
        raise NotImplementedError

    def _plans(self, x, options) -> list[tuple[torch.Tensor, bool]]:
        """Each step's (1, 7) coefficients on x's device (computed and copied at once, and cached on the schedule,
        so the loop copies nothing per step) and whether it draws noise."""
        raise NotImplementedError

    def _t_prevs(self) -> list[int]:
        return [self._t_prev(i) for i in range(len(self.timesteps))]

    @torch.no_grad()
    def sample(self, x_T: torch.Tensor, *, cond: Any = None, null_cond: Any = None, guidance: float | None = None,
               generator: torch.Generator | None = None, progress: bool = False, cuda_graph: bool = False,
               **step_kw) -> torch.Tensor:
        """Run the loop from ``x_T`` (e.g. ``torch.randn(shape, generator=g)``) to a sample.

        Args:
            x_T: starting noise ``(N, ...)``.
            cond: conditioning passed as the model's third argument (class labels, embeddings).
            null_cond: the unconditional conditioning for classifier-free guidance (same type as ``cond``).
            guidance: CFG weight ``w`` (``u + w (c - u)``); needs ``cond`` and ``null_cond``.
            generator: for the step noise.
            progress: print a progress line to stderr.
            cuda_graph: replay (model call + step) from one CUDA graph (x_T on a CUDA device; see the module
                docstring). Step options are then ``variance=``/``eta=`` and ``impl=`` (no ``noise=``).
            step_kw: extra step options (``variance=`` for DDPM, ``eta=`` for DDIM, ``impl=``, ``noise=``).

        Returns:
            The final sample, x_T's shape and dtype.
        """
        if guidance is not None and (cond is None or null_cond is None):
            raise ValueError("fastgan: classifier-free guidance needs cond and null_cond")
        if cuda_graph:
            if x_T.device.type != "cuda":
                raise ValueError(f"fastgan: cuda_graph=True needs x_T on a CUDA device, got {x_T.device}")
            with torch.cuda.device(x_T.device):  # the capture runs on the current device
                return self._sample_static(x_T, cond, null_cond, guidance, generator, progress, step_kw,
                                           capture=True)
        self._plans(x_T, {k: v for k, v in step_kw.items() if k not in ("impl", "noise")})  # fills the cache
        x = x_T
        for i, t in enumerate(self.timesteps):
            out, uncond = self._model_out(x, t, cond, null_cond, guidance)
            x = self._step(x, out, uncond, t, self._t_prev(i), guidance, generator, step_kw)
            self._report(progress, i)
        return x

    def _t_prev(self, i: int) -> int:
        return self.timesteps[i] - self.stride if i + 1 < len(self.timesteps) else -1

    def _report(self, progress: bool, i: int) -> None:
        n = len(self.timesteps)
        if progress and (i + 1 == n or (i + 1) % max(1, n // 20) == 0):
            print(f"\r{self.kind} {i + 1}/{n}", end="\n" if i + 1 == n else "", file=sys.stderr, flush=True)

    def _sample_static(self, x_T, cond, null_cond, guidance, generator, progress, step_kw, *, capture: bool,
                       warmup: int = 2) -> torch.Tensor:
        """The graphed loop. ``capture=False`` runs the same static-buffer body directly instead of replaying a
        graph (any device): the tests compare that path with the eager loop on CPU."""
        if "noise" in step_kw:
            raise ValueError("fastgan: cuda_graph=True draws the step noise in the kernel; noise= is not supported")
        if guidance is not None:
            guidance = float(guidance)
        impl = step_kw.get("impl")
        options = {k: v for k, v in step_kw.items() if k != "impl"}
        n = len(self.timesteps)
        plans = self._plans(x_T, options)
        flags = [p[1] for p in plans]
        noisy = flags.count(True) >= flags.count(False)  # the graph serves the common kind of step
        body = _StaticStep(self, x_T, plans[0][0], cond, null_cond, guidance, generator if noisy else False,
                           float(_clip(self.clip_x0)), impl)

        def advance(i: int, x: torch.Tensor, run) -> torch.Tensor:
            """Step i from x: through ``run`` (the body or its graph) when it is the graphed kind, else eager."""
            if flags[i] == noisy:
                if x is not body.x:
                    body.x.copy_(x)
                body.load(self.timesteps[i], plans[i][0])
                run()
                x = body.x
            else:  # e.g. DDPM's last step (t = 0), which adds no noise
                out, uncond = self._model_out(x, self.timesteps[i], cond, null_cond, guidance)
                x = self._step(x, out, uncond, self.timesteps[i], self._t_prev(i), guidance, generator, step_kw)
            self._report(progress, i)
            return x

        # Warm-up: real steps, the graphed kind through the body itself, so whatever a capture must not do (Triton
        # compiling the very kernel variant, cuBLAS handles, the allocator) happens here, on a side stream.
        cur = torch.cuda.current_stream(x_T.device) if capture else None
        side = torch.cuda.Stream(x_T.device) if capture else None
        if side is not None:
            side.wait_stream(cur)
        x, i, warmed = x_T, 0, 0
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            while i < n and warmed < max(warmup, 1):
                warmed += flags[i] == noisy
                x = advance(i, x, body)
                i += 1
        run = body
        if side is not None:
            cur.wait_stream(side)
            if x is not body.x:
                x.record_stream(cur)  # made on the side stream, used on this one from here
            if noisy in flags[i:]:
                graph = torch.cuda.CUDAGraph()
                if noisy and generator is not None and hasattr(graph, "register_generator_state"):
                    graph.register_generator_state(generator)  # a non-default generator advances on every replay
                # stream=side: torch's default capture stream is one per process, made on the first device used
                with torch.cuda.graph(graph, stream=side):
                    body()
                run = graph.replay
        for j in range(i, n):
            x = advance(j, x, run)
        return x


class _StaticStep:
    """(model call + fused step) on static buffers, the body a CUDA graph captures: x (updated in place), the
    timestep as an (N,) int64 tensor and the (1, 7) coefficients, all on x's device; ``load`` refills the last two
    before each run with device-side copies. ``generator`` False: the step draws no noise."""

    def __init__(self, sampler, x, coef, cond, null_cond, guidance, generator, clip: float, impl):
        self.sampler, self.cond, self.null_cond, self.guidance = sampler, cond, null_cond, guidance
        self.generator, self.clip, self.impl = generator, clip, impl
        self.x = x.clone()
        self.t = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        self.coef = torch.empty_like(coef)

    def load(self, t: int, coef: torch.Tensor) -> None:
        self.t.fill_(t)
        self.coef.copy_(coef)

    def __call__(self) -> None:
        out, uncond = self.sampler._model_out(self.x, self.t, self.cond, self.null_cond, self.guidance)
        seed = None if self.generator is False else philox.draw_seed(self.generator, self.x.device)
        self.x.copy_(fused_step(self.x, out, uncond, None, self.coef, _guidance(self.guidance), self.clip, seed=seed,
                                impl=self.impl))


class DDPMSampler(_Sampler):
    """Ancestral DDPM sampling (``ddpm_step`` per timestep; fewer inference steps skip timesteps as diffusers'
    ``DDPMScheduler`` does).

    Args:
        model: ``model(x, t)`` or ``model(x, t, cond)`` returning the prediction (x's shape); ``t`` is an (N,)
            int64 tensor.
        schedule: the :class:`NoiseSchedule`.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_x0: clamp the predicted x0 (None: off).
        num_inference_steps: default: every timestep.
    """

    kind = "ddpm"

    def _plans(self, x, options):
        return ddpm_plans(x, self.timesteps, self._t_prevs(), self.schedule, prediction=self.prediction, **options)

    def _step(self, x, out, uncond, t, t_prev, guidance, generator, step_kw):
        return ddpm_step(x, out, t, self.schedule, t_prev=t_prev, prediction=self.prediction,
                         clip_x0=self.clip_x0, generator=generator, model_out_uncond=uncond, guidance=guidance,
                         **step_kw)


class DDIMSampler(_Sampler):
    """DDIM sampling (``ddim_step``; ``eta=0`` deterministic). Arguments as :class:`DDPMSampler`; pass
    ``eta=`` to :meth:`sample`."""

    kind = "ddim"

    def _plans(self, x, options):
        return ddim_plans(x, self.timesteps, self._t_prevs(), self.schedule, prediction=self.prediction, **options)

    def _step(self, x, out, uncond, t, t_prev, guidance, generator, step_kw):
        return ddim_step(x, out, t, t_prev, self.schedule, prediction=self.prediction, clip_x0=self.clip_x0,
                         generator=generator, model_out_uncond=uncond, guidance=guidance, **step_kw)
