"""pytest-benchmark: ``fastgan.ops.adain`` backends vs eager ``F.instance_norm(x) * scale + shift`` vs ``torch.compile``.

Cases: :mod:`fastgan.bench.adain_suite` (the same ones ``fastgan bench`` runs); the test body:
:mod:`fastgan.bench.pytest_bench`.

    pytest benchmarks/bench_adain.py --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/bench_adain.py --benchmark-columns=median,ops   # timings (CPU: the quick preset)
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "adain"
pytest_generate_tests, test_adain = suite_benchmark(SUITE)
