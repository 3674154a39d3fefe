"""Benchmark cases for ``fastgan.ops.grad_penalty`` (the per-sample penalty reduction) and for whole critic steps
with a gradient penalty.

Op cases: the WGAN-GP reduction ``(||g_n||_2 - 1)^2`` of a critic's input gradient, against the textbook eager
formula ``(grad.flatten(1).norm(2, dim=1) - 1) ** 2`` and ``torch.compile`` of it; forward, and forward + backward
(the gradient w.r.t. grad, what a penalty's ``.backward()`` sends into the critic's double backward). Shapes are
image batches: 64x3x64x64, 8x3x256x256 and 256x3x32x32, fp32 and bf16.

Critic-step cases: one discriminator step's gradients on ``fastgan.models.DCGANCritic`` (64x64, base 64, instance
norm, batch 64 on GPU; 4x3x32x32 with base 16 on CPU): WGAN-GP (``wgan_d_loss + 10 * GP`` at interpolates) and R1
(``ns_d_loss + 10 * R1``, real logits reused) with every op on fastgan kernels, against the same critic built from
``nn.InstanceNorm2d`` and ``nn.LeakyReLU`` with identical weights and the textbook penalty. fp32; no compile
baseline (torch.compile does not trace the double backward).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math

import torch

from .suites import (Case, HOPPER, SuiteOptions, Target, fastgan_impls, floor_share_target, register_suite,
                     standard_cases, tensor_bytes)

# (64, 3, 256, 256): 12.6M elements, 50 MB in fp32, where the 80% goal is about bandwidth; the H200 ran only the
# first (0.8M elements: 6.3 µs of GPU time against a 0.7 µs floor, launch latency).
SHAPES = ((64, 3, 64, 64), (64, 3, 256, 256), (8, 3, 256, 256), (256, 3, 32, 32))
CPU_SHAPES = ((8, 3, 64, 64), (2, 3, 256, 256), (32, 3, 32, 32))
DTYPES = (torch.float32, torch.bfloat16)
MODES = ("fwd", "fwd+bwd")
STEP_GOALS_US = {"wgan-gp": 7700.0, "r1": 7000.0}  # H100, 64x3x64x64 DCGAN critic step

NOTES = """
Op cases: eager is `(grad.flatten(1).norm(2, dim=1) - 1) ** 2`. Bytes floor with E = N·C·H·W·itemsize and
P = N·itemsize: **fwd** = read grad, write p = E + P; **fwd+bwd** = the forward plus read grad again, read gp and
write the grad-shaped gradient = 3E + 2P. H100 goal: at least 80% of the floor at a 3.0 TB/s copy ceiling; only
the large shapes can reach it (64x3x64x64 is 0.8M elements: the floor is below a launch's latency).
CPU default preset: smaller batches (8x3x64x64, 2x3x256x256, 32x3x32x32), fp32.
Critic-step cases (layout "critic-wgan-gp", "critic-r1"): the gradients of one DCGAN discriminator loss with its
penalty, all fastgan kernels vs torch.nn modules and the textbook penalty with identical weights; the bytes
floor counts the two input batches only (the step is convolution-bound; its % of ceiling is not meaningful).
H100 goals: 7.7 ms WGAN-GP, 7.0 ms R1 at batch 64. CPU: batch 4, 32x32, base 16. On CUDA, `fastgan-<impl>-graph` is
the same step captured once in a CUDA graph and replayed (inputs copied into its static buffers, gradients
cloned out; `fastgan.bench.graphed`): the issue asks for the step with and without graphs.
"""


# ------------------------------------------------------------------------------------------------- op cases
def _eager(grad):
    return (grad.flatten(1).norm(2, dim=1) - 1.0) ** 2


def _fastgan(impl: str):
    from .. import ops

    return functools.partial(ops.grad_penalty, kind="wgan-gp", impl=impl)


def _make_inputs(shape, dtype, layout: str, mode: str, device: str):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def make(seed: int) -> tuple:
        g = torch.Generator(device=device).manual_seed(seed)
        grad = (torch.randn(shape, generator=g, device=device) / (shape[1] * shape[2] * shape[3]) ** 0.5)
        grad = grad.to(dtype).contiguous(memory_format=fmt)
        if mode == "fwd":
            return (grad,)
        return grad.requires_grad_(), torch.randn(shape[0], generator=g, device=device).to(dtype)

    return make


def bytes_floor(shape, dtype, mode: str) -> int:
    """Fewest bytes one call moves (see NOTES)."""
    e, p = tensor_bytes(shape, dtype), tensor_bytes(shape[:1], dtype)
    return e + p if mode == "fwd" else 3 * e + 2 * p


def matrix(device: str, preset: str) -> list[tuple]:
    """``(mode, shape, dtype, layout)`` for a device and preset."""
    shapes = CPU_SHAPES if device == "cpu" and preset != "full" else SHAPES
    combos = [(m, s, d) for m in MODES for s in shapes for d in DTYPES]
    if preset == "quick":  # on CUDA also the large shape, where the floor is about bandwidth
        quick = shapes[:1] if device == "cpu" else shapes[:2]
        combos = [(m, s, torch.float32) for s in quick for m in MODES]
    if device == "cpu" and preset != "full":
        combos = [c for c in combos if c[2] == torch.float32]
    layouts = ("contiguous",) if preset == "quick" or device == "cpu" else ("contiguous", "channels_last")
    return [(m, s, d, lay) for (m, s, d) in combos for lay in layouts]


def _targets(shape, dtype, layout, mode, device) -> tuple[Target, ...]:
    if device == "cuda":
        return floor_share_target(bytes_floor(shape, dtype, mode), math.prod(shape))
    return ()


# -------------------------------------------------------------------------------------------- critic steps
def _torch_twin(critic):
    """``critic`` with fastgan's InstanceNorm2d and LeakyReLU replaced by torch.nn's, same weights."""
    from .. import nn as fnn
    from ..models import critics

    twin = copy.deepcopy(critic)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, fnn.InstanceNorm2d):
                new = torch.nn.InstanceNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                              child.track_running_stats)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new.to(next(child.parameters()).device))
            elif isinstance(child, critics.LeakyReLU):
                setattr(module, name, torch.nn.LeakyReLU(child.negative_slope))
    return twin


def _textbook_step(critic, kind: str, real, fake):
    from ..losses import ns_d_loss, wgan_d_loss

    if kind == "wgan-gp":
        g = torch.Generator(device=real.device).manual_seed(0)
        alpha = torch.rand((real.shape[0], 1, 1, 1), generator=g, dtype=real.dtype, device=real.device)
        x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        gp = 10.0 * ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()
        loss = wgan_d_loss(critic(real), critic(fake)) + gp
    else:
        x = real.clone().requires_grad_(True)
        out = critic(x)
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        loss = ns_d_loss(out, critic(fake)) + 10.0 * (0.5 * grad.flatten(1).pow(2).sum(1)).mean()
    return torch.autograd.grad(loss, [p for p in critic.parameters() if p.requires_grad], allow_unused=True)


def _fastgan_step(critic, kind: str, impl: str, real, fake, generator=None):
    from .. import _backend
    from ..losses import gradient_penalty, ns_d_loss, wgan_d_loss

    with _backend.use_impl(impl):
        if kind == "wgan-gp":
            g = torch.Generator(device=real.device).manual_seed(0) if generator is None else generator
            gp = gradient_penalty(critic, real, fake, kind="wgan-gp", weight=10.0, generator=g)
            loss = wgan_d_loss(critic(real), critic(fake)) + gp
        else:
            r1, out = gradient_penalty(critic, real, kind="r1", weight=10.0, return_outputs=True)
            loss = ns_d_loss(out, critic(fake)) + r1
        return torch.autograd.grad(loss, [p for p in critic.parameters() if p.requires_grad], allow_unused=True)


def _graphed_step(critic_fn, kind: str, impl: str):
    """The fastgan critic step replayed from a CUDA graph (captured on the first call's inputs). WGAN-GP draws its
    interpolation weights from a generator registered with the graph and reseeded before each replay, so every
    call draws what the eager step's fresh seed-0 generator draws. A graph fixes the kernels it captured, so one
    is captured per TF32 setting (the benchmark's check runs under :func:`full_fp32`)."""
    from ..graphs import GraphedStep

    graphs = {}

    def run(real, fake):
        key = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        if key not in graphs:
            gen = torch.Generator(device=real.device).manual_seed(0)
            step = lambda r, f: _fastgan_step(critic_fn(), kind, impl, r, f, generator=gen)  # noqa: E731
            graphs[key] = gen, GraphedStep(step, (real, fake), (gen,) if kind == "wgan-gp" else (), enabled=True)
        gen, graph = graphs[key]
        gen.manual_seed(0)
        return graph(real, fake)

    return run


@contextlib.contextmanager
def full_fp32():
    """TF32 off for cuDNN convolutions and matmuls inside the block (cuDNN's convolutions default to TF32, whose
    rounding makes the fastgan and torch.nn critic steps differ by ~3e-2 relative on the H200; 1.2e-6 without)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _critic_cases(opts: SuiteOptions):
    from ..models import DCGANCritic

    on_cpu = opts.device == "cpu" and opts.preset != "full"
    shape, base = ((4, 3, 32, 32), 16) if on_cpu else ((64, 3, 64, 64), 64)
    impls = [i for i in fastgan_impls("grad_penalty_fwd", opts.device, opts.impls) if i != "ref"]

    @functools.lru_cache(maxsize=None)
    def critics():  # built on first use, not when cases are listed
        torch.manual_seed(0)
        critic = DCGANCritic(img_channels=3, base=base, image_size=shape[-1]).to(opts.device)
        return critic, _torch_twin(critic)

    def make(seed: int) -> tuple:
        g = torch.Generator(device=opts.device).manual_seed(seed)
        return tuple(torch.randn(shape, generator=g, device=opts.device) for _ in range(2))

    for kind in ("wgan-gp", "r1") if opts.preset != "quick" or opts.device == "cuda" else ("wgan-gp",):
        fns = {"eager": lambda r, f, k=kind: _textbook_step(critics()[1], k, r, f)}
        for impl in impls:
            fns[f"fastgan-{impl}"] = lambda r, f, k=kind, i=impl: _fastgan_step(critics()[0], k, i, r, f)
        if opts.device == "cuda" and impls:  # the fastest impl's step again, replayed from a CUDA graph
            fns[f"fastgan-{impls[0]}-graph"] = _graphed_step(lambda: critics()[0], kind, impls[0])
        targets = ()
        if opts.device == "cuda":
            targets = (Target("max_us", STEP_GOALS_US[kind], "fastgan", HOPPER, "issue goal: DCGAN critic step"),)
        yield Case(suite="grad_penalty", shape=shape, dtype=torch.float32, layout=f"critic-{kind}", mode="fwd+bwd",
                   device=opts.device, make_inputs=make, fns=fns, bytes_floor=2 * tensor_bytes(shape, torch.float32),
                   bytes_detail="2E (inputs only; the step is convolution-bound)", targets=targets,
                   check_context=full_fp32)


@register_suite("grad_penalty", ops=("grad_penalty_fwd", "instance_norm_fwd", "bias_act_fwd"), notes=NOTES)
def grad_penalty_cases(opts: SuiteOptions):
    """Yield the grad_penalty op cases, then the critic-step cases, for ``opts``."""
    yield from standard_cases(
        "grad_penalty", opts, matrix(opts.device, opts.preset), op="grad_penalty_fwd", eager=_eager,
        fastgan=_fastgan, make_inputs=_make_inputs, bytes_floor=bytes_floor,
        bytes_detail=lambda m: "E + P" if m == "fwd" else "3E + 2P", targets=_targets,
    )
    yield from _critic_cases(opts)
