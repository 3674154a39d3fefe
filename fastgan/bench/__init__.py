"""Benchmarks of fastgan's ops against eager PyTorch and ``torch.compile`` (``python -m fastgan bench``).

- :mod:`fastgan.bench.suites`: the :class:`Case` model and the registry of suites (one per op).
- :mod:`fastgan.bench.timing`: how one callable and the copy-bandwidth ceiling are timed on CPU and CUDA.
- :mod:`fastgan.bench.harness`: runs cases, records the environment, derives GB/s, % of ceiling and speed-ups.
- :mod:`fastgan.bench.report`: writes report.md, report.json and report.png.
- :mod:`fastgan.bench.cli`: the ``bench`` subcommand.

Nothing here is imported by ``import fastgan``; torch.compile and matplotlib are imported only when used.
"""
from .suites import Case, SuiteOptions, Target, all_suites, build_cases, register_suite

__all__ = ["Case", "SuiteOptions", "Target", "all_suites", "build_cases", "register_suite"]
