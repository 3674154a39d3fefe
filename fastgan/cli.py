"""``python -m fastgan`` / ``fastgan``: the command line.

Subcommands live in their own modules, each exposing ``add_arguments(parser)`` and ``run(args) -> int`` (or, for
``"module:name"`` entries, ``add_<name>_arguments`` and ``run_<name>``); they are imported only when chosen, so
``fastgan info`` works even where a subcommand's optional dependencies are missing. An ``add_*arguments`` function
that takes a second parameter receives the rest of the command line, so it can add options lazily (``fastgan train
<family>`` imports only that family).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys

SUBCOMMANDS = {
    "info": ("fastgan.info", "show versions and which backends are live per op"),
    "bench": ("fastgan.bench.cli", "run the benchmark suites on this device and write a report"),
    "eval": ("fastgan.metrics.cli", "compute FID and KID between two image sets (or a model checkpoint)"),
    "train": ("fastgan.train.cli:train", "train a model family (stargan-v2, ddpm) on a folder or named dataset"),
    "sample": ("fastgan.train.cli:sample", "generate images from a trained checkpoint"),
}


def _entry(name: str, what: str):
    """The ``add_arguments``/``run`` function of subcommand ``name`` (``what`` is "add" or "run")."""
    module, _, suffix = SUBCOMMANDS[name][0].partition(":")
    mod = importlib.import_module(module)
    if what == "add":
        return getattr(mod, f"add_{suffix}_arguments" if suffix else "add_arguments")
    return getattr(mod, f"run_{suffix}" if suffix else "run")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fastgan", description="fastgan: fused ops for GANs and diffusion")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            add = _entry(name, "add")
            if len(inspect.signature(add).parameters) >= 2:
                add(p, argv[1:])
            else:
                add(p)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    return int(_entry(args.command, "run")(args) or 0)
