"""CPU cost of the fused diffusion step's in-kernel Philox noise against drawing the noise with ``torch.randn``.

Per shape, dtype and thread count it times, interleaved round by round (so machine noise hits both alike):

* ``philox``: ``ddpm_step(x, m, t, sched, generator=g, impl="cpp")``: one seed draw, noise made inside the kernel
* ``randn``:  ``ddpm_step(x, m, t, sched, noise=torch.randn(x.shape, generator=g, dtype=x.dtype), impl="cpp")``

and prints the median ms per call over the rounds (min-max of the round medians in brackets) and randn / philox.

    python tools/diffusion_noise_timing.py                  # default cases, 1 and 2 threads
    python tools/diffusion_noise_timing.py --rounds 30 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastgan.diffusion import NoiseSchedule, ddpm_step

CASES = (((16, 3, 64, 64), torch.float32), ((4, 3, 512, 512), torch.float32), ((16, 3, 64, 64), torch.bfloat16))


def _per_call(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


def time_case(shape, dtype, threads: int, rounds: int) -> dict[str, list[float]]:
    torch.set_num_threads(threads)
    sched = NoiseSchedule.linear(1000)
    x, m = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    g = torch.Generator().manual_seed(0)
    variants = {
        "philox": lambda: ddpm_step(x, m, 500, sched, generator=g, impl="cpp"),
        "randn": lambda: ddpm_step(x, m, 500, sched, noise=torch.randn(shape, generator=g, dtype=dtype), impl="cpp"),
    }
    probe = time.perf_counter()
    for fn in variants.values():
        fn()
    calls = max(3, min(200, int(0.02 / max(time.perf_counter() - probe, 1e-6))))  # ~10 ms per variant a round
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(_per_call(fn, calls))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print(f"{'case':<34} {'philox ms':>22} {'randn+step ms':>22} {'randn/philox':>12}")
    for threads in args.threads:
        for shape, dtype in CASES:
            t = time_case(shape, dtype, threads, args.rounds)
            med = {k: statistics.median(v) for k, v in t.items()}
            cell = {k: f"{med[k]:.3f} [{min(v):.3f}-{max(v):.3f}]" for k, v in t.items()}
            name = f"{'x'.join(map(str, shape))} {str(dtype).split('.')[-1]} {threads}t"
            print(f"{name:<34} {cell['philox']:>22} {cell['randn']:>22} {med['randn'] / med['philox']:>12.2f}")


if __name__ == "__main__":
    main()
