"""Per-call overhead of fastgan's small-tensor ops against eager PyTorch (CPU by default).

For each case it times, interleaved round by round so machine noise hits every variant alike:

* ``public``: the user-facing call (``fastgan.ops.bias_act``, ``fastgan.nn.InstanceNorm2d``, ``fastgan.nn.AdaIN``...)
* ``raw``:    the registered op itself (``torch.ops.fastgan.*.default``) with its arguments prepared beforehand:
              the floor the Python wrapper can reach (dispatch + autograd node + kernel)
* ``eager``:  the plain PyTorch equivalent

and prints the median µs per call over the rounds with the spread (min-max of the round medians' per-call time).

    python tools/overhead.py                        # everything, 1 thread
    python tools/overhead.py -k bias_act -k fwd+bwd # cases whose name contains every -k
    python tools/overhead.py --profile "bias_act lrelu nobias 2x16x32x32 fwd+bwd public"   # cProfile one variant
    python tools/overhead.py --json /tmp/o.json     # also write the numbers
    python tools/overhead.py --large --iters 5 --threads 2   # bias_act at 8x64x128x128 instead

To compare two trees (before/after), run it alternately with ``PYTHONPATH=<tree>`` from outside both checkouts.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fastgan
import fastgan.nn as fnn
import fastgan.ops as fops

SIZES = ((2, 16, 32, 32), (2, 64, 16, 16))
LARGE = (8, 64, 128, 128)  # --large: 8M elements (32 MB fp32), out of cache: memory-bound, threads matter
LRELU = 2  # ACT_CODES["lrelu"]


def _grad(outs, ins, gout):
    return torch.autograd.grad(outs, ins, gout)


def bias_act_cases(shape, with_bias: bool, dbl: bool = True):
    torch.manual_seed(0)
    x = torch.randn(shape)
    c = shape[1]
    b = torch.randn(c) if with_bias else None
    gy = torch.randn(shape)
    xg = x.clone().requires_grad_(True)
    bg = b.clone().requires_grad_(True) if with_bias else None
    raw = torch.ops.fastgan.bias_act_fwd.default
    ins = (xg, bg) if with_bias else (xg,)

    def eager(xx, bb):
        return F.leaky_relu(xx if bb is None else xx + bb.view(1, -1, 1, 1), 0.2)

    fwd = {
        "public": lambda: fops.bias_act(x, b, "lrelu", alpha=0.2, gain=1.0),
        "raw": lambda: raw(x, b, LRELU, 0.2, 1.0, -1.0, 1),
        "eager": lambda: eager(x, b),
    }
    fwdbwd = {
        "public": lambda: _grad(fops.bias_act(xg, bg, "lrelu", alpha=0.2, gain=1.0), ins, gy),
        "raw": lambda: _grad(raw(xg, bg, LRELU, 0.2, 1.0, -1.0, 1), ins, gy),
        "eager": lambda: _grad(eager(xg, bg), ins, gy),
    }
    tag = f"bias_act lrelu {'bias' if with_bias else 'nobias'} {'x'.join(map(str, shape))}"
    out = {f"{tag} fwd": fwd, f"{tag} fwd+bwd": fwdbwd}
    if dbl and not with_bias:
        # R1-style: gradient with create_graph, then the gradient of its squared norm (double backward).
        def dbl(f):
            def run():
                (g,) = torch.autograd.grad(f(xg), xg, gy, create_graph=True)
                return torch.autograd.grad(g.square().sum(), xg)
            return run

        out[f"{tag} dbl-bwd"] = {
            "public": dbl(lambda t: fops.bias_act(t, None, "lrelu", alpha=0.2, gain=1.0)),
            "raw": dbl(lambda t: raw(t, None, LRELU, 0.2, 1.0, -1.0, 1)),
            "eager": dbl(lambda t: F.leaky_relu(t, 0.2)),
        }
    return out


def critic_lrelu_cases(shape):
    """The critics' parameter-free LeakyReLU module (what the StarGAN v2 discriminator runs)."""
    from fastgan.models.critics import LeakyReLU

    torch.manual_seed(0)
    xg = torch.randn(shape).requires_grad_(True)
    gy = torch.randn(shape)
    m, e = LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)
    tag = f"critics.LeakyReLU {'x'.join(map(str, shape))} fwd+bwd"
    return {tag: {"public": lambda: _grad(m(xg), xg, gy), "eager": lambda: _grad(e(xg), xg, gy)}}


def instance_norm_cases(shape):
    torch.manual_seed(0)
    n, c = shape[:2]
    x = torch.randn(shape)
    gy = torch.randn(shape)
    fm = fnn.InstanceNorm2d(c, affine=True)
    tm = torch.nn.InstanceNorm2d(c, affine=True)
    with torch.no_grad():
        for m in (fm, tm):
            m.weight.copy_(torch.rand(c) + 0.5)
            m.bias.copy_(torch.randn(c))
    w, b = fm.weight.detach(), fm.bias.detach()
    raw = torch.ops.fastgan.instance_norm_fwd.default
    scale, shift = w.expand(n, c).contiguous(), b.expand(n, c).contiguous()
    xg = x.clone().requires_grad_(True)
    sg, hg = scale.clone().requires_grad_(True), shift.clone().requires_grad_(True)
    tag = f"instance_norm affine {'x'.join(map(str, shape))}"
    fwd = {
        "public": lambda: fops.instance_norm(x, w, b),
        "module": lambda: fm(x),
        "raw": lambda: raw(x, scale, shift, 1e-5)[0],
        "eager": lambda: F.instance_norm(x, weight=w, bias=b, eps=1e-5),
        "eager-module": lambda: tm(x),
    }
    fp, tp = (xg, fm.weight, fm.bias), (xg, tm.weight, tm.bias)
    fwdbwd = {
        "module": lambda: _grad(fm(xg), fp, gy),
        "raw": lambda: _grad(raw(xg, sg, hg, 1e-5)[0], (xg, sg, hg), gy),
        "eager-module": lambda: _grad(tm(xg), tp, gy),
    }
    return {f"{tag} fwd": fwd, f"{tag} fwd+bwd": fwdbwd}


def adain_cases(shape, style_dim: int = 16):
    from fastgan.models.stargan_v2_blocks import TorchAdaIN

    torch.manual_seed(0)
    n, c = shape[:2]
    x = torch.randn(shape)
    s = torch.randn(n, style_dim)
    gy = torch.randn(shape)
    fm, tm = fnn.AdaIN(style_dim, c), TorchAdaIN(style_dim, c)
    tm.load_state_dict(fm.state_dict())
    raw = torch.ops.fastgan.instance_norm_fwd.default
    with torch.no_grad():
        gamma, beta = fm.fc(s).chunk(2, dim=1)
        scale, shift = (1 + gamma).contiguous(), beta.contiguous()
    xg = x.clone().requires_grad_(True)
    sg, hg = scale.clone().requires_grad_(True), shift.clone().requires_grad_(True)
    tag = f"AdaIN {'x'.join(map(str, shape))}"
    fwd = {
        "module": lambda: fm(x, s),
        "ops.adain": lambda: fops.adain(x, scale, shift),
        "raw": lambda: raw(x, scale, shift, 1e-5)[0],
        "eager-module": lambda: tm(x, s),
    }
    fwdbwd = {
        "module": lambda: _grad(fm(xg, s), (xg, fm.fc.weight), gy),
        "raw": lambda: _grad(raw(xg, sg, hg, 1e-5)[0], (xg, sg, hg), gy),
        "eager-module": lambda: _grad(tm(xg, s), (xg, tm.fc.weight), gy),
    }
    return {f"{tag} fwd": fwd, f"{tag} fwd+bwd": fwdbwd}


def large_cases():
    """bias_act lrelu fwd and fwd+bwd at LARGE, with and without bias (use fewer --iters)."""
    cases = {}
    for with_bias in (False, True):
        cases.update(bias_act_cases(LARGE, with_bias, dbl=False))
    return cases


def all_cases():
    cases = {}
    for shape in SIZES:
        cases.update(bias_act_cases(shape, False))
        cases.update(bias_act_cases(shape, True))
    for shape in SIZES:
        cases.update(critic_lrelu_cases(shape))
    for shape in SIZES:
        cases.update(instance_norm_cases(shape))
    for shape in SIZES:
        cases.update(adain_cases(shape))
    return cases


def time_case(variants: dict, rounds: int, iters: int) -> dict:
    """Median (and min, max) over ``rounds`` of the mean µs per call of ``iters`` calls; variants interleaved."""
    for fn in variants.values():  # warm up (first-call registration, allocator)
        for _ in range(20):
            fn()
    per = {k: [] for k in variants}
    for r in range(rounds):
        order = list(variants.items())
        if r % 2:
            order.reverse()  # no variant always runs right after the same neighbour
        for name, fn in order:
            t0 = time.perf_counter_ns()
            for _ in range(iters):
                fn()
            per[name].append((time.perf_counter_ns() - t0) / iters / 1e3)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in per.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-k", action="append", default=[], help="only cases whose name contains this (repeatable)")
    ap.add_argument("--profile", metavar="CASE VARIANT", help="cProfile one variant ('<case name> <variant>')")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--large", action="store_true", help=f"bias_act cases at {LARGE} instead of the small ones")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = large_cases() if args.large else all_cases()
    if args.profile:
        case, _, variant = args.profile.rpartition(" ")
        fn = cases[case][variant]
        for _ in range(50):
            fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            fn()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    print(f"fastgan {fastgan.__file__}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"rounds {args.rounds} x {args.iters} calls; µs/call median [min-max of rounds]")
    results = {}
    for name, variants in cases.items():
        if not all(k in name for k in args.k):
            continue
        res = time_case(variants, args.rounds, args.iters)
        results[name] = res
        eager = res.get("eager", res.get("eager-module"))
        cols = "  ".join(f"{k} {m:7.1f} [{lo:.1f}-{hi:.1f}]" for k, (m, lo, hi) in res.items())
        first = next(iter(res.values()))[0]
        print(f"{name:46s} {cols}  | first/eager {first / eager[0]:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: {v: list(t) for v, t in r.items()} for k, r in results.items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
