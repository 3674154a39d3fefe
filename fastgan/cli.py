"""``python -m fastgan`` / ``fastgan``: the command line.

Subcommands live in their own modules, each exposing ``add_arguments(parser)`` and ``run(args) -> int``; they are
imported only when chosen, so ``fastgan info`` works even where a subcommand's optional dependencies are missing.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "info": ("fastgan.info", "show versions and which backends are live per op"),
    "bench": ("fastgan.bench.cli", "run the benchmark suites on this device and write a report"),
    "eval": ("fastgan.metrics.cli", "compute FID and KID between two image sets"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fastgan", description="fastgan: fused ops for GANs and diffusion")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)
