"""``fastgan train <family> ...`` and ``fastgan sample <family> ...``: dispatch to a model family's module.

A family module (see :data:`FAMILIES`) exposes ``add_train_arguments(parser)``, ``train(args) -> int``,
``add_sample_arguments(parser)`` and ``sample(args) -> int``. Only the chosen family is imported, so one family's
missing (or not yet written) module never breaks another's commands or ``--help``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

FAMILIES = {
    "stargan-v2": "fastgan.train.stargan_v2",
    "ddpm": "fastgan.diffusion.train_cli",
}


def _import_family(family: str):
    """The family's module, or the reason it cannot be imported (a string)."""
    module = FAMILIES[family]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        # Only a missing family module itself is "not available"; a missing dependency inside it is reported as is.
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            return f"the {family!r} family's module {module} is not available in this fastgan"
        return f"the {family!r} family cannot be loaded: {e}"


def _add(parser: argparse.ArgumentParser, argv: list[str] | None, verb: str) -> None:
    parser.description = f"{verb.capitalize()} a model family: {', '.join(FAMILIES)}."
    sub = parser.add_subparsers(dest="family", metavar="FAMILY")
    chosen = argv[0] if argv and argv[0] in FAMILIES else None
    for family in FAMILIES:
        p = sub.add_parser(family, help=f"{verb} {family}")
        if family != chosen:
            continue
        mod = _import_family(family)
        if isinstance(mod, str) or not hasattr(mod, f"add_{verb}_arguments"):
            # Accept whatever options follow, so run() can say what is missing instead of argparse rejecting the
            # family's options (REMAINDER does not take "--option" strings). The sub-parser action calls
            # parse_known_args on this parser and merges the namespace it returns.
            error = mod if isinstance(mod, str) else f"the {family!r} family does not support `fastgan {verb}`"
            p.parse_known_args = lambda args=None, namespace=None, _e=error: (argparse.Namespace(family_error=_e), [])
        else:
            getattr(mod, f"add_{verb}_arguments")(p)


def _run(args: argparse.Namespace, verb: str) -> int:
    if not getattr(args, "family", None):
        print(f"fastgan {verb}: name a model family: {', '.join(FAMILIES)} "
              f"(e.g. fastgan {verb} stargan-v2 --help)", file=sys.stderr)
        return 2
    if getattr(args, "family_error", None):
        print(f"fastgan {verb} {args.family}: {args.family_error}", file=sys.stderr)
        return 2
    return int(getattr(importlib.import_module(FAMILIES[args.family]), verb)(args) or 0)


def add_train_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Register ``fastgan train``: a sub-parser per family; ``argv`` (after ``train``) picks the one to fill."""
    _add(parser, argv, "train")


def run_train(args: argparse.Namespace) -> int:
    """Run ``fastgan train <family>``."""
    return _run(args, "train")


def add_sample_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Register ``fastgan sample``: a sub-parser per family."""
    _add(parser, argv, "sample")


def run_sample(args: argparse.Namespace) -> int:
    """Run ``fastgan sample <family>``."""
    return _run(args, "sample")
