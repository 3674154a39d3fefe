"""CPU timing of ``fastgan.ops.group_norm`` (GroupNorm(32) + SiLU) against eager ``F.silu(F.group_norm(...))``.

Per case it times, interleaved round by round so that the noise of a shared machine hits every variant alike:

* ``eager``: ``F.silu(F.group_norm(x, 32, w, b))``
* ``ours``:  ``fastgan.ops.group_norm(x, 32, w, b, act="silu", impl="cpp")`` (the public call)
* ``raw``:   the registered kernel ops alone (``torch.ops.fastgan.group_norm_fwd`` / ``_bwd``) with A, B folded
             beforehand: the floor the Python glue can reach (``--raw``)

fwd+bwd is one forward plus ``torch.autograd.grad(y, (x, w, b), gy)``. Each round runs every variant ``--calls``
times back to back and records the mean per call; the table shows the median over ``--rounds`` rounds (µs).

    python tools/group_norm_timing.py                         # 3 shapes x fwd, fwd+bwd, fp32 + bf16 for one, 2 threads
    python tools/group_norm_timing.py --threads 1 --raw
    python tools/group_norm_timing.py -k 256x16 --profile ours-fwd+bwd   # cProfile one variant of the first case
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch
import torch.nn.functional as F

import fastgan  # noqa: F401  (loads the extension)
from fastgan.ops.group_norm import fold_affine
from fastgan.ops.group_norm_kernels import ACTS

G, EPS, SILU = 32, 1e-5, ACTS["silu"]
SHAPES = ((2, 128, 32, 32), (2, 256, 16, 16), (2, 512, 64, 64))


def _case(shape, dtype, mode: str, raw: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=gen).to(dtype)
    w = (1 + 0.1 * torch.randn(c, generator=gen)).to(dtype)
    b = (0.1 * torch.randn(c, generator=gen)).to(dtype)
    gy = torch.randn(shape, generator=gen).to(dtype)
    eager = lambda x, w, b: F.silu(F.group_norm(x, G, w, b, EPS))  # noqa: E731
    ours = lambda x, w, b: fastgan.ops.group_norm(x, G, w, b, EPS, act="silu", impl="cpp")  # noqa: E731
    fns = {}
    if mode == "fwd":
        fns["eager"] = lambda: eager(x, w, b)
        fns["ours"] = lambda: ours(x, w, b)
        if raw:
            a_, b_ = fold_affine(x, w, b, None, None)
            fns["raw"] = lambda: torch.ops.fastgan.group_norm_fwd(x, a_, b_, None, None, G, EPS, SILU, 0.0)
    else:
        xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))

        def step(fn):
            return lambda: torch.autograd.grad(fn(xr, wr, br), (xr, wr, br), gy)

        fns["eager"] = step(eager)
        fns["ours"] = step(ours)
        if raw:
            a_, b_ = fold_affine(x, w, b, None, None)

            def raw_fb():
                _, mean, rstd = torch.ops.fastgan.group_norm_fwd(x, a_, b_, None, None, G, EPS, SILU, 0.0)
                return torch.ops.fastgan.group_norm_bwd(gy, x, mean, rstd, a_, b_, None, None, G, EPS, SILU, 0.0)

            fns["raw"] = raw_fb
    return fns


def _time(fns: dict, rounds: int, calls: int) -> dict:
    for fn in fns.values():  # warm-up: allocator, OpenMP pool, first-call registration
        for _ in range(3):
            fn()
    per = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            per[k].append((time.perf_counter() - t0) / calls * 1e6)
    return {k: statistics.median(v) for k, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--budget", type=float, default=0.02, help="seconds per variant per round (sets --calls)")
    ap.add_argument("--raw", action="store_true", help="also time the kernel ops without the Python glue")
    ap.add_argument("-k", action="append", default=[], help="only cases whose name contains every -k")
    ap.add_argument("--profile", help="cProfile VARIANT-MODE (e.g. ours-fwd+bwd) of the first selected case")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [(s, torch.float32, m) for m in ("fwd", "fwd+bwd") for s in SHAPES]
    cases += [(SHAPES[0], torch.bfloat16, m) for m in ("fwd", "fwd+bwd")]
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.rounds} interleaved rounds, µs/call")
    print(f"{'case':<34}{'eager':>10}{'ours':>10}{'raw':>10}{'ours/eager':>12}")
    for shape, dtype, mode in cases:
        name = f"{'x'.join(map(str, shape))} {str(dtype)[6:]} {mode}"
        if not all(k in name for k in args.k):
            continue
        fns = _case(shape, dtype, mode, args.raw)
        if args.profile:
            variant, pmode = args.profile.split("-", 1)
            if pmode != mode:
                continue
            fn = fns[variant]
            fn()
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(200):
                fn()
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(18)
            return
        t0 = time.perf_counter()
        fns["eager"]()
        calls = max(1, min(200, int(args.budget / max(time.perf_counter() - t0, 1e-6))))
        med = _time(fns, args.rounds, calls)
        raw = f"{med['raw']:>10.0f}" if "raw" in med else f"{'':>10}"
        print(f"{name:<34}{med['eager']:>10.0f}{med['ours']:>10.0f}{raw}{med['ours'] / med['eager']:>12.2f}",
              flush=True)


if __name__ == "__main__":
    main()
