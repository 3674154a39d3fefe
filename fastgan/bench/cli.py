"""``python -m fastgan bench``: run the benchmark suites on this machine's device and write a report.

Dispatched from :mod:`fastgan.cli`, which calls :func:`add_arguments` on the subcommand's parser and then
:func:`run` with the parsed arguments.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys

from .. import _backend

DEFAULT_BUDGET_S = {("cpu", "quick"): 0.1, ("cpu", "default"): 0.25, ("cpu", "full"): 0.25,
                    ("cuda", "quick"): 0.1, ("cuda", "default"): 0.1, ("cuda", "full"): 0.1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``.

    Args:
        parser: the ``bench`` subcommand's parser.
    """
    parser.description = (
        "Time fastgan's ops against eager PyTorch and torch.compile on this machine's device and write "
        "report.md, report.json and report.png. Defaults: on CUDA the full matrix of every suite; on CPU a "
        "CPU-sized matrix (instance_norm: batch 2, fp32) that finishes in a few minutes on 2 cores."
    )
    parser.add_argument("--suite", action="append", metavar="NAME",
                        help="suite to run (repeatable; default: all registered). See --list.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device to benchmark (default: cuda when available, else cpu)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="cases with performance goals only, shorter timing: on CUDA every issue goal (a few "
                           "minutes), on CPU a few (about a minute)")
    size.add_argument("--full", action="store_true",
                      help="the full matrix at full size on any device (slow on CPU: large inputs, bf16, compile)")
    parser.add_argument("--impl", metavar="LIST",
                        help=f"comma-separated fastgan impls to time (from {', '.join(_backend.IMPLS)}); "
                             "default: every live one (Triton never on CPU). eager is always timed.")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--filter", "-k", action="append", default=[], metavar="TEXT",
                        help="run only cases whose name contains TEXT (repeatable; all must match), "
                             "e.g. -k fwd+bwd -k channels_last")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="measuring time per impl per case (default: 0.1 on CUDA, 0.25 on CPU, 0.1 --quick)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch intra-op threads on CPU (default: torch's, usually one per core)")
    parser.add_argument("--out", metavar="DIR",
                        help="report directory (default: bench-out/<device>-<date>-<time>)")
    parser.add_argument("--list", action="store_true", help="list the cases and impls that would run, then exit")
    parser.add_argument("--no-check", action="store_true", help="skip comparing each impl's output with eager")
    parser.add_argument("--no-png", action="store_true", help="do not draw the chart")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="start no case after this many seconds; the report names the cases left out. The "
                             "report is rewritten after every case either way, so a killed run keeps what it measured")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when an impl fails or its output does not match eager")


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fastgan bench: --device cuda, but torch sees no CUDA device")
    return torch.device(name)


def default_out_dir(device) -> str:
    """``bench-out/<device slug>-<YYYYmmdd-HHMMSS>``, e.g. ``bench-out/nvidia-h100-80gb-hbm3-20250101-120000``."""
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or device.type
    return os.path.join("bench-out", f"{slug}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def _parse_impls(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    impls = tuple(i.strip() for i in text.split(",") if i.strip())
    bad = [i for i in impls if i not in _backend.IMPLS]
    if bad:
        raise SystemExit(f"fastgan bench: unknown impl(s) {bad}; choose from {', '.join(_backend.IMPLS)}")
    return impls


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` and write the report.

    Args:
        args: parsed options (see :func:`add_arguments`).

    Returns:
        The process exit status: 0, or 1 with ``--strict`` when an impl failed or mismatched, 2 when no case
        was selected.
    """
    from . import harness, report
    from .suites import SuiteOptions, all_suites, build_cases
    from .timing import TimingConfig

    device = _device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    preset = "quick" if args.quick else "full" if args.full else "default"
    opts = SuiteOptions(device=device.type, preset=preset, impls=_parse_impls(args.impl), compile=not args.no_compile)
    suites = all_suites()
    chosen = args.suite or list(suites)
    try:
        cases = build_cases(chosen, opts, args.filter)
    except ValueError as exc:
        raise SystemExit(f"fastgan bench: {exc}")
    if args.list:
        for c in cases:
            print(f"{c.suite:16s} {c.name:44s} {', '.join(c.fns)}")
        print(f"{len(cases)} case(s) on {device.type}, preset {preset}")
        return 0
    if not cases:
        print("fastgan bench: no case matches the options (see --list)", file=sys.stderr)
        return 2

    budget = args.budget if args.budget is not None else DEFAULT_BUDGET_S[(device.type, preset)]
    cfg = TimingConfig(budget_s=budget, warmup_s=min(0.05, budget / 2))
    out_dir = args.out or default_out_dir(device)
    print(f"fastgan bench: {len(cases)} case(s) on {device}, preset {preset}; report -> {out_dir}", file=sys.stderr)
    rep = harness.benchmark(
        cases, device, [suites[n] for n in chosen], cfg, preset=preset, check=not args.no_check,
        progress=not args.quiet,
        settings={"threads": args.threads, "compile": not args.no_compile, "impls": args.impl,
                  "filters": args.filter, "suites": chosen},
        time_limit_s=args.time_limit, on_case=lambda partial: report.write_report(partial, out_dir, png=False),
    )
    paths = report.write_report(rep, out_dir, png=not args.no_png)

    failures = [(c["name"], k) for c in rep["cases"] for k, r in c["results"].items()
                if "error" in r or r.get("check_ok") is False]
    for t in rep["targets"]:
        if t["applies"]:
            state = {True: "met", False: "MISSED", None: "not run"}[t["met"]]
            m = t["measured"]
            shown = "—" if m is None else (f"{m:.1f} µs" if t["kind"] == "max_us" else f"{m:.2f}x")
            print(f"goal {state:7s} {t['case']} {t['impl']}: {shown} "
                  f"({'≤' if t['kind'] == 'max_us' else '≥'} {t['value']:g})", file=sys.stderr)
    dev = rep["env"]["device"]
    pressure = [p for p in (dev.get("pressure_at_start"), dev.get("pressure_at_end")) if p is not None]
    if pressure and max(pressure) >= report.NOISY_PRESSURE:
        print(f"warning: other processes competed for the CPU (pressure up to {max(pressure):.0f}%); medians are "
              "noisy: compare min µs, or rerun with --threads 1 when the machine is shared", file=sys.stderr)
    for name, label in failures:
        print(f"failed or mismatched: {name} · {label} (see the report)", file=sys.stderr)
    if rep["skipped_cases"]:
        print(f"fastgan bench: --time-limit left {len(rep['skipped_cases'])} case(s) out (listed in the report)",
              file=sys.stderr)
    print(f"fastgan bench: done in {rep['elapsed_s']:.0f} s; copy ceiling {rep['ceiling']['gbps']:.0f} GB/s",
          file=sys.stderr)
    for kind in ("md", "json", "png"):
        if kind in paths:
            print(paths[kind])
    return 1 if (args.strict and failures) else 0
