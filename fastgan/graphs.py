"""Whole training steps replayed from a CUDA graph: :class:`GraphedStep`.

On a GPU, fastgan's fused kernels run in microseconds, but a small-batch GAN step launches hundreds of them, and
the host's cost per launch (Python, the dispatcher, autograd, Triton's launcher) then sets the pace: the WGAN-GP
critic step of ``benchmarks/`` (DCGAN critic, 64x3x64x64) ran in 26.5 ms of wall time against 5.8 ms of GPU time
on the H200, and in 5.39 ms replayed from a CUDA graph. A graph records the step's kernels once and replays them
with one launch; R1's and WGAN-GP's double backward included, which ``torch.compile`` refuses.

``GraphedStep(fn, example_inputs)`` warms ``fn`` up on a side stream (cuBLAS/cuDNN handles, Triton compilation
and autotuning, the caching allocator: what a capture must not do), captures one call on static copies of the
inputs, and then each call copies its inputs into those buffers and replays. On CPU tensors (or with
``enabled=False``) it calls ``fn`` directly, so one training script runs on any device.

What ``fn`` may do inside a graph (PyTorch's rules for capture; see the CUDA graphs section of its docs):

* fixed shapes, dtypes and strides: the inputs' are checked on every call;
* no host synchronisation: no ``.item()``, ``print`` of a tensor, ``torch.nonzero``, or Python branches on tensor
  values; no CPU tensors created and copied to the GPU inside (make them beforehand);
* optimizers stepped inside must be created with ``capturable=True`` (Adam, AdamW, ...), and gradients should be
  cleared with ``zero_grad(set_to_none=True)`` at the start of ``fn``;
* random draws come from the default CUDA generator or from ``torch.Generator`` objects passed as ``generators``
  (registered with the graph, so each replay advances them as an eager call would);
* learning-rate changes must be written into tensors the graph reads, not Python floats.

The warm-up calls run ``fn`` for real (``warmup`` optimizer steps happen there, as in PyTorch's own recipe).

Example (a WGAN-GP critic step with fastgan's penalty; ``critic``, ``real`` and ``fake`` on a GPU)::

    opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.0, 0.9), capturable=True)
    gen = torch.Generator("cuda").manual_seed(0)

    def critic_step(real, fake):
        opt.zero_grad(set_to_none=True)
        gp = fastgan.losses.gradient_penalty(critic, real, fake, kind="wgan-gp", weight=10.0, generator=gen)
        loss = fastgan.losses.wgan_d_loss(critic(real), critic(fake)) + gp
        loss.backward()
        opt.step()
        return loss.detach()

    step = GraphedStep(critic_step, (real, fake), generators=(gen,))
    for real, fake in batches:          # same shapes as the example inputs
        loss = step(real, fake)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

__all__ = ["GraphedStep"]


class GraphedStep:
    """``fn(*inputs)`` replayed from a CUDA graph (see the module docstring for what ``fn`` may do).

    Args:
        fn: the step; takes tensors shaped like ``example_inputs`` and returns a tensor, None, or a tuple/list of
            them (e.g. the detached loss).
        example_inputs: tensors fixing the shapes, dtypes and strides of every later call; on a CUDA device the
            step is graphed, on CPU it is called directly.
        generators: ``torch.Generator`` objects ``fn`` draws from (besides the default one), CUDA ones.
        warmup: eager calls before the capture (they run ``fn`` for real).
        enabled: False calls ``fn`` directly on any device (same checks and cloned outputs, no graph); None (the
            default) graphs when the example inputs are on a CUDA device.
        clone_outputs: return clones of the graph's outputs (the graph overwrites its own buffers on each replay).
            False returns the buffers themselves: valid until the next call.

    Raises:
        ValueError: no example inputs, an input that is not a tensor, inputs on different devices, or (on a call)
            an input whose shape, dtype or strides differ from the example's.
    """

    def __init__(self, fn: Callable[..., Any], example_inputs: Sequence[torch.Tensor],
                 generators: Sequence[torch.Generator] = (), warmup: int = 3, enabled: bool | None = None,
                 clone_outputs: bool = True):
        if not example_inputs:
            raise ValueError("fastgan: GraphedStep needs at least one example input")
        if any(not isinstance(t, torch.Tensor) for t in example_inputs):
            raise ValueError("fastgan: GraphedStep's example inputs must be tensors, got "
                             + ", ".join(type(t).__name__ for t in example_inputs))
        devices = {t.device for t in example_inputs}
        if len(devices) != 1:
            raise ValueError("fastgan: GraphedStep's example inputs are on several devices: "
                             + ", ".join(sorted(map(str, devices))))
        self.fn = fn
        self.device = example_inputs[0].device
        self.layout = [(tuple(t.shape), t.dtype, t.stride()) for t in example_inputs]
        self.clone_outputs = clone_outputs
        self.graphed = (self.device.type == "cuda") if enabled is None else bool(enabled)
        if self.graphed and self.device.type != "cuda":
            raise ValueError(f"fastgan: GraphedStep(enabled=True) needs CUDA example inputs, got {self.device}")
        self.graph = None
        if self.graphed:
            self._capture(example_inputs, generators, warmup)

    def _capture(self, example_inputs, generators, warmup: int) -> None:
        with torch.cuda.device(self.device):  # Triton and the capture work on the current device
            self.static = [t.detach().clone() for t in example_inputs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self.fn(*self.static)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            for gen in generators:
                self.graph.register_generator_state(gen)
            # stream=side: torch's default capture stream is one per process, made on whichever device came first
            with torch.cuda.graph(self.graph, stream=side):
                out = self.fn(*self.static)
        self.tuple_out = isinstance(out, (tuple, list))
        self.out = list(out) if self.tuple_out else [out]

    def _check(self, inputs) -> None:
        if len(inputs) != len(self.layout):
            raise ValueError(f"fastgan: GraphedStep takes {len(self.layout)} inputs, got {len(inputs)}")
        for k, (t, (shape, dtype, stride)) in enumerate(zip(inputs, self.layout)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"fastgan: GraphedStep input {k} must be a tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape or t.dtype != dtype or t.stride() != stride or t.device != self.device:
                raise ValueError(
                    f"fastgan: GraphedStep input {k} is {tuple(t.shape)} {t.dtype} strides {t.stride()} on "
                    f"{t.device}; the step was built for {shape} {dtype} strides {stride} on {self.device} (build "
                    "another GraphedStep for another shape, e.g. a last smaller batch)")

    def __call__(self, *inputs: torch.Tensor):
        self._check(inputs)
        if not self.graphed:
            out = self.fn(*inputs)
            if not self.clone_outputs:
                return out
            if isinstance(out, (tuple, list)):
                return type(out)(o.clone() if isinstance(o, torch.Tensor) else o for o in out)
            return out.clone() if isinstance(out, torch.Tensor) else out
        with torch.cuda.device(self.device):
            for buf, t in zip(self.static, inputs):
                buf.copy_(t)
            self.graph.replay()
            out = [t.clone() if self.clone_outputs and isinstance(t, torch.Tensor) else t for t in self.out]
        return tuple(out) if self.tuple_out else out[0]
