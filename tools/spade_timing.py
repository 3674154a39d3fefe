"""CPU timing of ``fastgan.ops.spatial_adaptive_norm`` (SPADE modulation) against eager PyTorch.

Per case it times, interleaved round by round so that the noise of a shared machine hits every variant alike:

* ``eager``:     ``F.instance_norm(x) * (1 + gamma) + beta`` (the usual PyTorch SPADE block's arithmetic)
* ``composite``: ``fastgan.ops.instance_norm(x, impl="cpp")`` then one ``addcmul`` (SPADE before the fused kernel;
                 still the path of the CUDA C++ backend)
* ``ours``:      ``fastgan.ops.spatial_adaptive_norm(x, gamma, beta, impl="cpp")`` (one fused group-norm pass)

fwd+bwd is one forward plus ``torch.autograd.grad(y, (x, gamma, beta), gy)``. Each round runs every variant
``--calls`` times back to back and records the mean per call; the table shows the median over ``--rounds`` rounds.

    python tools/spade_timing.py                 # 2 shapes x fwd, fwd+bwd, fp32, 2 threads
    python tools/spade_timing.py --threads 1 -k 64x128
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import fastgan
from group_norm_timing import _time  # the same interleaved rounds (this folder is on sys.path)

EPS = 1e-5
SHAPES = ((2, 64, 128, 128), (2, 256, 64, 64), (8, 128, 32, 32))


def _eager(x, g, b):
    return F.instance_norm(x, eps=EPS) * (1 + g) + b


def _composite(x, g, b):
    xhat = fastgan.ops.instance_norm(x, None, None, EPS, impl="cpp")
    return torch.addcmul(xhat + b, xhat, g)


def _ours(x, g, b):
    return fastgan.ops.spatial_adaptive_norm(x, g, b, EPS, impl="cpp")


def _case(shape, dtype, mode: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    x, g, b, gy = (torch.randn(shape, generator=gen).to(dtype) for _ in range(4))
    variants = {"eager": _eager, "composite": _composite, "ours": _ours}
    if mode == "fwd":
        return {k: (lambda f=f: f(x, g, b)) for k, f in variants.items()}
    ins = [t.clone().requires_grad_() for t in (x, g, b)]
    return {k: (lambda f=f: torch.autograd.grad(f(*ins), ins, gy)) for k, f in variants.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--budget", type=float, default=0.1, help="seconds per variant per round (sets --calls)")
    ap.add_argument("-k", action="append", default=[], help="only cases whose name contains every -k")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [(s, torch.float32, m) for m in ("fwd", "fwd+bwd") for s in SHAPES]
    cases += [(SHAPES[0], torch.bfloat16, m) for m in ("fwd", "fwd+bwd")]
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.rounds} interleaved rounds, ms/call")
    print(f"{'case':<30}{'eager':>9}{'composite':>11}{'ours':>9}{'ours/eager':>12}{'ours/comp':>11}")
    for shape, dtype, mode in cases:
        name = f"{'x'.join(map(str, shape))} {str(dtype)[6:]} {mode}"
        if not all(k in name for k in args.k):
            continue
        fns = _case(shape, dtype, mode)
        t0 = time.perf_counter()
        fns["eager"]()
        calls = max(1, min(100, int(args.budget / max(time.perf_counter() - t0, 1e-6))))
        m = {k: v / 1e3 for k, v in _time(fns, args.rounds, calls).items()}  # µs -> ms
        print(f"{name:<30}{m['eager']:>9.2f}{m['composite']:>11.2f}{m['ours']:>9.2f}"
              f"{m['ours'] / m['eager']:>12.2f}{m['ours'] / m['composite']:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
