"""A static-shape step captured in a CUDA graph, for the benchmark cases that time a step with and without graphs
(the critic steps of issue 4: "with and without CUDA graphs, if it pays").

``Graphed(fn, example_inputs)`` warms ``fn`` up on a side stream (cuBLAS/cuDNN handles, Triton compilation and
autotuning, the allocator: what a capture must not do), captures one call on static copies of the inputs, and
then each call copies its inputs into those buffers and replays. Random draws inside ``fn`` must come from
generators passed as ``generators`` (registered with the graph, so each replay advances them as an eager call
would) or from the default CUDA generator.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


class Graphed:
    """``fn(*inputs)`` replayed from a CUDA graph.

    Args:
        fn: the step; takes tensors shaped like ``example_inputs`` and returns a tensor or a tuple/list of them.
        example_inputs: CUDA tensors; their shapes, dtypes and strides are fixed for the graph's life.
        generators: ``torch.Generator`` objects ``fn`` draws from (besides the default one).
        warmup: eager calls before the capture (they run ``fn`` for real).

    Calls return clones of the graph's outputs: the graph overwrites its own on every replay.
    """

    def __init__(self, fn: Callable[..., Any], example_inputs: Sequence[torch.Tensor],
                 generators: Sequence[torch.Generator] = (), warmup: int = 3):
        if not example_inputs or any(not isinstance(t, torch.Tensor) or t.device.type != "cuda"
                                     for t in example_inputs):
            raise ValueError("fastgan: Graphed needs CUDA tensors as example inputs")
        self.device = example_inputs[0].device
        with torch.cuda.device(self.device):  # Triton and the capture work on the current device
            self.static = [t.detach().clone() for t in example_inputs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn(*self.static)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            for gen in generators:
                self.graph.register_generator_state(gen)
            # stream=side: torch's default capture stream is one per process, made on whichever device came first
            with torch.cuda.graph(self.graph, stream=side):
                out = fn(*self.static)
        self.tuple_out = isinstance(out, (tuple, list))
        self.out = list(out) if self.tuple_out else [out]

    def __call__(self, *inputs: torch.Tensor):
        with torch.cuda.device(self.device):
            for buf, t in zip(self.static, inputs, strict=True):
                buf.copy_(t)
            self.graph.replay()
            out = [None if t is None else t.clone() for t in self.out]
        return tuple(out) if self.tuple_out else out[0]
