"""pytest-benchmark: ``fastgan.ops.instance_norm`` backends vs eager ``F.instance_norm`` vs ``torch.compile``.

Cases: :mod:`fastgan.bench.instance_norm_suite` (the same ones ``fastgan bench`` runs); the test body:
:mod:`fastgan.bench.pytest_bench`.

    pytest benchmarks/bench_instance_norm.py --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/bench_instance_norm.py --benchmark-columns=median,ops   # timings (CPU: the quick preset)
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "instance_norm"
pytest_generate_tests, test_instance_norm = suite_benchmark(SUITE)
