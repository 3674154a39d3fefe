"""CPU timing of group norm's double backward with SPADE maps: the fused op ``fastgan::group_norm_dbwd_maps``
against the composite formula it replaced (``reference_dbwd_maps``: autograd of the backward's formula in eager
torch ops, what the extension ran before and Triton still runs).

Both get the same inputs (cotangents of all five backward outputs; x, grad_y, maps and (N, C) affine as a SPADE
layer inside a gradient penalty has them). Rounds interleave the two so a shared machine's noise hits both; the
table shows the median over rounds of the mean per call (ms).

    python tools/spade_dbwd_timing.py                # 4 cases, fp32, 2 threads
    python tools/spade_dbwd_timing.py --threads 1 --dtype bfloat16
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastgan  # noqa: F401  (loads the extension)
from fastgan.ops.group_norm_kernels import ACTS, reference_dbwd_maps

# (shape, groups, act): instance norm (G = C) with linear act is SPADE's own; G = 32 with SiLU/lrelu the AdaGN-like
# variants of the same kernels.
CASES = [((4, 128, 32, 32), 128, "linear"), ((4, 128, 32, 32), 32, "silu"), ((8, 256, 16, 16), 256, "linear"),
         ((8, 256, 16, 16), 32, "lrelu")]


def _inputs(shape, groups, act, dtype):
    gen = torch.Generator().manual_seed(0)
    n, c = shape[:2]
    x, gy, ggx, gggamma, ggbeta, beta = (torch.randn(shape, generator=gen).to(dtype) for _ in range(6))
    gamma = (0.3 * torch.randn(shape, generator=gen)).to(dtype)
    scale, shift, ggscale, ggshift = (torch.randn(n, c, generator=gen, dtype=torch.float64) for _ in range(4))
    a = ACTS[act]
    _, mean, rstd = torch.ops.fastgan.group_norm_fwd(x, scale, shift, gamma, beta, groups, 1e-5, a, 0.2)
    cgb = ggbeta if a else None
    fused = lambda: torch.ops.fastgan.group_norm_dbwd_maps(  # noqa: E731
        ggx, ggscale, ggshift, gggamma, cgb, gy, x, mean, rstd, scale, shift, gamma, beta, groups, 1e-5, a, 0.2)
    composite = lambda: reference_dbwd_maps(  # noqa: E731
        ggx, ggscale, ggshift, gggamma, cgb, gy, x, scale, shift, gamma, beta, groups, 1e-5, a, 0.2)
    return {"fused": fused, "composite": composite}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.dtype}; median over {args.rounds} rounds (ms)")
    print(f"{'case':32s} {'fused':>8s} {'composite':>10s} {'speed-up':>9s}")
    for shape, groups, act in CASES:
        fns = _inputs(shape, groups, act, dtype)
        times = {k: [] for k in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                times[k].append((time.perf_counter() - t0) / args.calls * 1e3)
        f, c = (statistics.median(times[k]) for k in ("fused", "composite"))
        name = "x".join(map(str, shape)) + f" G{groups} {act}"
        print(f"{name:32s} {f:8.2f} {c:10.2f} {c / f:8.2f}x")


if __name__ == "__main__":
    main()
