"""The body shared by ``benchmarks/bench_<op>.py``: one pytest-benchmark test per (case, impl) of a suite.

Each ``benchmarks/bench_<op>.py`` is two lines of set-up: ``SUITE = "<op>"`` and
``pytest_generate_tests, test_<op> = suite_benchmark(SUITE)``. The cases are the ones ``fastgan bench`` runs
(:mod:`fastgan.bench.suites`), so the two always measure the same thing; each result's ``extra_info`` holds the
bytes floor, achieved GB/s and % of the copy ceiling measured in the same session (the ``copy_ceilings`` fixture
of ``benchmarks/conftest.py``).
"""
from __future__ import annotations

import itertools

import torch

from .suites import SuiteOptions, build_cases
from .timing import cache_bytes, rotation_sets, steady_cpu_allocator, synchronize


def _params(suite: str, config) -> list:
    import pytest

    preset = config.getoption("--fastgan-preset")
    compile_ = not config.getoption("--fastgan-no-compile")
    params = []
    for device in ("cpu", "cuda"):
        opts = SuiteOptions(device=device, preset=preset or ("quick" if device == "cpu" else "default"),
                            compile=compile_)
        for case in build_cases([suite], opts):
            for label in case.fns:
                params.append(pytest.param(case, label, id=f"{case.id}-{label}"))
    return params


def suite_benchmark(suite: str):
    """``(pytest_generate_tests, test_fn)`` timing every case x impl of ``suite`` with pytest-benchmark.

    CUDA cases are collected everywhere and skipped without a GPU; the first call of each impl (compilation
    included) happens before timing; input sets rotate when one set would stay in the last-level cache.
    """

    def pytest_generate_tests(metafunc):
        if {"case", "label"} <= set(metafunc.fixturenames):
            metafunc.parametrize(("case", "label"), _params(suite, metafunc.config))

    def test_suite(benchmark, case, label, copy_ceilings):
        import pytest

        if case.device == "cuda" and not torch.cuda.is_available():
            pytest.skip("CUDA case; no CUDA device")
        device = torch.device(case.device)
        if device.type == "cpu":
            steady_cpu_allocator()  # as `fastgan bench` does: CPU timings must not depend on malloc's history
        first = case.make_inputs(0)
        input_bytes = sum(t.numel() * t.element_size() for t in first if isinstance(t, torch.Tensor))
        n = rotation_sets(case.bytes_floor, cache_bytes(device), input_bytes, 2**30)
        sets = itertools.cycle([first] + [case.make_inputs(s) for s in range(1, n)])
        fn = case.fns[label]

        def call():
            out = fn(*next(sets))
            synchronize(device)  # pytest-benchmark reads a wall clock: wait for the GPU
            return out

        call()
        benchmark.group = f"{case.device} {suite} {case.name}"
        benchmark.extra_info.update(impl=label, bytes_floor=case.bytes_floor, rotation_sets=n)
        out = benchmark(call)
        assert out is not None

        stats = getattr(benchmark, "stats", None)
        median = getattr(getattr(stats, "stats", None), "median", None)  # None under --benchmark-disable
        if median:
            ceiling = copy_ceilings(device)
            gbps = case.bytes_floor / median / 1e9
            benchmark.extra_info.update(
                median_us=median * 1e6, gbps=gbps, ceiling_gbps=ceiling, pct_ceiling=100.0 * gbps / ceiling,
                floor_us=case.bytes_floor / (ceiling * 1e9) * 1e6,
            )

    test_suite.__name__ = f"test_{suite}"
    return pytest_generate_tests, test_suite
