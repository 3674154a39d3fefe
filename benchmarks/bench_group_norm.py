"""pytest-benchmark: ``fastgan.ops.group_norm(act="silu")`` backends vs eager ``F.silu(F.group_norm(...))`` vs
``torch.compile``.

Cases: :mod:`fastgan.bench.group_norm_suite` (the same ones ``fastgan bench`` runs); the test body:
:mod:`fastgan.bench.pytest_bench`.

    pytest benchmarks/bench_group_norm.py --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/bench_group_norm.py --benchmark-columns=median,ops   # timings (CPU: the quick preset)
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "group_norm"
pytest_generate_tests, test_group_norm = suite_benchmark(SUITE)
