"""Measurements for a lent GPU that the benchmark report does not make (tools/gpu_session.sh runs both).

``host``: where the host time of one call goes. Small tensors (GPU time a few µs), so back-to-back calls are
bound by the host: the median µs per call over rounds of ``--iters`` calls (one synchronisation per round), layer by
layer, from an empty Triton launch up to the public op with autograd, for bias_act, grad_penalty, instance norm
and the DDPM step; then cProfile's top functions of a few public calls.

``sampling``: the sampling suite's DDPM loops (eager diffusers-style, fastgan, fastgan in a CUDA graph), one timed
loop each, and a host-sync check of the fastgan loop.

``stargan``: one StarGAN v2 training iteration (the benchmark's official configuration, 8x3x256x256) of the torch.nn
build and the fastgan build, each under torch.profiler: wall time, peak memory, and the CUDA kernels that take the
most device time, so a slow kernel on the fastgan path can be named.

    python tools/gpu_profile.py host [--iters 200]
    python tools/gpu_profile.py stargan [--dtype bf16] [--top 15]
    python tools/gpu_profile.py sampling [--steps 1000]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's fastgan

try:  # module globals: @triton.jit resolves `tl` in the kernel function's globals
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def per_call_us(fn, iters: int, rounds: int = 5) -> float:
    for _ in range(3):
        fn()
    _sync()
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync()
        per.append((time.perf_counter() - t0) / iters * 1e6)
    return statistics.median(per)


def _empty_kernels():
    @triton.jit
    def noop(X, N, BLOCK: tl.constexpr):
        pass

    @triton.jit
    def noop_wide(X, B, G, H, OUT, numel, C, inner, a0, a1, a2, b0, b1, b2, c0, c1, c2, d0, d1, d2, e0, e1, e2,
                  MODE: tl.constexpr, ACT: tl.constexpr, BLOCK: tl.constexpr):
        pass

    return noop, noop_wide


def host(args) -> None:
    import fastgan.ops as fops
    from fastgan.diffusion import NoiseSchedule, ddpm_step
    from fastgan.ops import bias_act_kernels as bak
    from fastgan.ops import grad_penalty_kernels as gpk

    dev = args.device
    x = torch.randn(8, 512, 16, 16, device=dev)
    b = torch.randn(512, device=dev)
    gy = torch.randn_like(x)
    xg, bg = x.clone().requires_grad_(), b.clone().requires_grad_()
    rows: list[tuple[str, float]] = []

    def row(name, fn):
        try:
            rows.append((name, per_call_us(fn, args.iters)))
        except Exception as exc:  # one broken variant must not hide the others
            rows.append((f"{name} FAILED {type(exc).__name__}: {exc}"[:150], float("nan")))

    if dev == "cuda":
        noop, wide = _empty_kernels()
        row("triton empty kernel, 2 args", lambda: noop[(1,)](x, 1, BLOCK=128))
        row("triton empty kernel, 23 args (bias_act's)", lambda: wide[(1,)](
            x, b, x, x, x, 1, 2, 3, *([0.5] * 15), MODE=0, ACT=2, BLOCK=1024, enable_fp_fusion=False))
    lrelu = (2, 0.2, 1.0, -1.0, 1)
    routed = bak.FAMILY.ops("triton", dev)
    row("bias_act eager fwd (no grad)", lambda: F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2))
    row("bias_act launcher (kernels wrapper + launch)", lambda: bak._launch_fwd(x, b, *lrelu))
    row("bias_act custom op, no grad", lambda: bak.FAMILY.triton.fwd(x, b, *lrelu))
    row("bias_act routed op, no grad", lambda: routed.fwd(x, b, *lrelu))
    row("bias_act public, no grad", lambda: fops.bias_act(x, b))
    row("bias_act custom op, recording", lambda: bak.FAMILY.triton.fwd(xg, bg, *lrelu))
    row("bias_act routed op, recording", lambda: routed.fwd(xg, bg, *lrelu))
    row("bias_act public, recording", lambda: fops.bias_act(xg, bg))

    def fb(f):
        return lambda: torch.autograd.grad(f(), (xg, bg), gy)

    row("bias_act eager fwd+bwd", fb(lambda: F.leaky_relu(xg + bg.view(1, -1, 1, 1), 0.2)))
    row("bias_act custom op fwd+bwd", fb(lambda: bak.FAMILY.triton.fwd(xg, bg, *lrelu)))
    row("bias_act public (routed) fwd+bwd", fb(lambda: fops.bias_act(xg, bg)))

    g = torch.randn(64, 3, 64, 64, device=dev, requires_grad=True)
    row("grad_penalty eager fwd+bwd", lambda: torch.autograd.grad(
        ((g.flatten(1).norm(dim=1) - 1) ** 2).sum(), g))
    row("grad_penalty custom op fwd+bwd", lambda: torch.autograd.grad(gpk.FAMILY.triton.fwd(g, 0, 1.0)[0].sum(), g))
    row("grad_penalty public (routed) fwd+bwd", lambda: torch.autograd.grad(fops.grad_penalty(g).sum(), g))

    w = torch.randn(512, device=dev, requires_grad=True)
    bb = torch.randn(512, device=dev, requires_grad=True)
    row("instance_norm eager fwd", lambda: F.instance_norm(x, weight=w, bias=bb))
    impls = ("cuda", "triton") if dev == "cuda" else ("cpp",)
    for impl in impls:
        row(f"instance_norm {impl} fwd (no grad)", lambda i=impl: fops.instance_norm(x, w.detach(), bb.detach(), impl=i))
        row(f"instance_norm {impl} fwd, recording", lambda i=impl: fops.instance_norm(xg, w, bb, impl=i))
    s, t = torch.randn(8, 512, device=dev), torch.randn(8, 512, device=dev)
    row("instance_norm raw compiled op (scale/shift per plane)",
        lambda: torch.ops.fastgan.instance_norm_fwd.default(x, s, t, 1e-5))
    row("instance_norm eager fwd+bwd", lambda: torch.autograd.grad(F.instance_norm(xg, weight=w, bias=bb),
                                                                  (xg, w, bb), gy))
    for impl in impls:
        row(f"instance_norm {impl} fwd+bwd", lambda i=impl: torch.autograd.grad(
            fops.instance_norm(xg, w, bb, impl=i), (xg, w, bb), gy))

    sched = NoiseSchedule.linear(1000)
    xt = torch.randn(64, 3, 64, 64, device=dev)
    eps = torch.randn_like(xt)
    gen = torch.Generator(device=dev).manual_seed(0)
    row("ddpm_step public (t=500, generator)", lambda: ddpm_step(xt, eps, 500, sched, generator=gen))
    row("ddpm_step public (t=500, noise given)", lambda: ddpm_step(xt, eps, 500, sched, noise=eps))

    width = max(len(n) for n, _ in rows)
    where = torch.cuda.get_device_name() if dev == "cuda" else dev
    print(f"host µs per call ({where}, {args.iters} calls a round, median of 5 rounds)")
    for name, us in rows:
        print(f"  {name:<{width}}  {us:8.1f}")

    for name, fn in (("bias_act public (routed) fwd+bwd", fb(lambda: fops.bias_act(xg, bg))),
                     ("instance_norm fwd, recording", lambda: fops.instance_norm(xg, w, bb, impl=impls[-1])),
                     ("ddpm_step public", lambda: ddpm_step(xt, eps, 500, sched, generator=gen))):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(100):
            fn()
        prof.disable()
        _sync()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
        rows_ = [ln.split() for ln in out.getvalue().splitlines()]
        rows_ = [p for p in rows_ if len(p) >= 6 and p[0][0].isdigit() and p[1][0].isdigit()]
        print(f"cProfile, 100 calls of {name}: top {args.top} by own time (tottime s, cumtime s, function)")
        for p in rows_[: args.top]:
            print(f"  {p[1]:>7} {p[3]:>7}  {' '.join(p[5:])[-90:]}")

    # cProfile sees the calling thread only; a backward's kernels run on autograd's device thread. torch.profiler
    # records every thread's ops: where the routed bias_act's backward (~520 µs of host time on the H200 host
    # against ~60 µs for its forward) spends it.
    step = fb(lambda: fops.bias_act(xg, bg))
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            step()
        _sync()
    print(f"torch.profiler, 20 calls of bias_act public (routed) fwd+bwd: top {args.top} CPU ops by self time "
          "(µs per call: self, total; calls per call)")
    for e in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]:
        print(f"  {e.self_cpu_time_total / 20:8.1f} {e.cpu_time_total / 20:8.1f} {e.count / 20:4.1f}x  {e.key[:90]}")


def stargan(args) -> None:
    from fastgan.bench.stargan_v2_suite import GPU_BATCH, OFFICIAL, _make_inputs, _Pair

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    pair = _Pair(dict(OFFICIAL), "cuda")
    inputs = _make_inputs(OFFICIAL, GPU_BATCH, "cuda")(0)
    for impl in ("torch", "fastgan", "fastgan-cl"):  # fastgan-cl: the fastgan build with channels_last=True
        trainer = pair.get(impl)
        trainer.iteration(dtype, *inputs)  # warm-up: autotuning, cuDNN's algorithm choice, Triton compiles
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(2):
            trainer.iteration(dtype, *inputs)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 2
        peak = torch.cuda.max_memory_allocated() / 2**30
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            trainer.iteration(dtype, *inputs)
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if _device_us(e) > 0]
        total = sum(_device_us(e) for e in events)
        print(f"stargan-v2 {impl} {args.dtype} 8x3x256x256: {wall * 1e3:.1f} ms/iteration wall, "
              f"{total / 1e3:.1f} ms of kernels, peak memory {peak:.2f} GiB; top kernels by device time:")
        for e in sorted(events, key=_device_us, reverse=True)[: args.top]:
            print(f"  {_device_us(e) / 1e3:8.2f} ms {e.count:6d}x  {e.key[:100]}")


def sampling(args) -> None:
    """The sampling suite's loops (fastgan's UNet, 32x32, batch 64) timed directly: per variant one short warm-up
    loop (Triton compiles, cuDNN's choices), then one timed loop of ``--steps`` DDPM steps. The benchmark harness
    would run each 1000-step loop five times or more (first call, warm-up, repetitions): minutes per variant when
    the eager loop is host-bound. The ratio is the goal's; ``--steps 1000`` is the goal's loop itself."""
    from fastgan.bench import sampling_suite as ss

    dev = args.device
    model = ss._Model(dict(ss.GPU_MODEL), dev)
    x_T = ss._make_inputs((ss.GPU_BATCH, 3, ss.GPU_MODEL["img_size"], ss.GPU_MODEL["img_size"]), dev)(0)[0]
    variants = {"eager": lambda n: ss._eager_loop(model, "ddpm", n),
                "fastgan-auto": lambda n: ss._fastgan_loop(model, "ddpm", n, graph=False),
                "fastgan-graph": lambda n: ss._fastgan_loop(model, "ddpm", n, graph=True)}
    if dev != "cuda":
        del variants["fastgan-graph"]
    times = {}
    for name, loop in variants.items():
        loop(min(10, args.steps))(x_T)
        _sync()
        t0 = time.perf_counter()
        loop(args.steps)(x_T)
        _sync()
        times[name] = time.perf_counter() - t0
        print(f"ddpm {args.steps} steps, UNet 32x32 batch {ss.GPU_BATCH}, {name}: {times[name] * 1e3:.0f} ms "
              f"({times[name] / args.steps * 1e3:.2f} ms/step), {times['eager'] / times[name]:.2f}x eager", flush=True)
    if dev != "cuda":
        return
    torch.cuda.set_sync_debug_mode("error")  # a host sync inside the loop raises
    try:
        variants["fastgan-auto"](20)(x_T)
        print("fastgan-auto 20-step loop under set_sync_debug_mode('error'): no host sync")
    except RuntimeError as exc:
        print(f"fastgan-auto loop synchronised with the host: {str(exc).splitlines()[0][:150]}")
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _device_us(e) -> float:
    return getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("host", "stargan", "sampling"))
    ap.add_argument("--steps", type=int, default=1000, help="sampling: DDPM steps of the timed loop")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cuda", help="host, sampling: cpu for a dry run of the script")
    args = ap.parse_args(argv)
    torch.backends.cudnn.benchmark = False
    {"host": host, "stargan": stargan, "sampling": sampling}[args.what](args)


if __name__ == "__main__":
    main()
