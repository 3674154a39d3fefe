"""pytest-benchmark: ``fastgan.ops.spatial_adaptive_norm`` (SPADE) vs eager vs ``torch.compile``.

The cases come from :mod:`fastgan.bench.spade_suite` (forward and forward+backward, fp32 and bf16, >= 8M elements,
contiguous and channels_last); each test is one case x one impl. CUDA cases are collected
everywhere and skipped without a GPU. Each result's ``extra_info`` holds the bytes floor, achieved GB/s and % of
the copy ceiling measured in the same session.

    pytest benchmarks/ --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/ --benchmark-columns=median,ops   # timings (CPU: the quick preset; see conftest.py)
    pytest benchmarks/ --fastgan-preset default -k "cpu and fwd-"

``python -m fastgan bench`` is the main way to benchmark (interleaved timing, GPU device time, report with
goals); this file exists to put the same cases into pytest-benchmark's tooling (``--benchmark-compare``).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from fastgan.bench.suites import SuiteOptions, build_cases
from fastgan.bench.timing import cache_bytes, rotation_sets, synchronize

SUITE = "spade"


def _cases(config):
    preset = config.getoption("--fastgan-preset")
    compile_ = not config.getoption("--fastgan-no-compile")
    params = []
    for device in ("cpu", "cuda"):
        opts = SuiteOptions(device=device, preset=preset or ("quick" if device == "cpu" else "default"),
                            compile=compile_)
        for case in build_cases([SUITE], opts):
            for label in case.fns:
                params.append(pytest.param(case, label, id=f"{case.id}-{label}"))
    return params


def pytest_generate_tests(metafunc):
    if {"case", "label"} <= set(metafunc.fixturenames):
        metafunc.parametrize(("case", "label"), _cases(metafunc.config))


def test_spade(benchmark, case, label, copy_ceilings):
    """Time one impl of one case; the first call (compilation included) happens before timing."""
    if case.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA case; no CUDA device")
    device = torch.device(case.device)
    first = case.make_inputs(0)
    input_bytes = sum(t.numel() * t.element_size() for t in first if isinstance(t, torch.Tensor))
    n = rotation_sets(case.bytes_floor, cache_bytes(device), input_bytes, 2**30)
    sets = itertools.cycle([first] + [case.make_inputs(s) for s in range(1, n)])
    fn = case.fns[label]

    def call():
        out = fn(*next(sets))
        synchronize(device)  # pytest-benchmark reads a wall clock: wait for the GPU
        return out

    call()  # compile / first-call costs stay out of the timing
    benchmark.group = f"{case.device} {SUITE} {case.name}"
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
