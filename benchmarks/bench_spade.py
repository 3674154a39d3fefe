"""pytest-benchmark: ``fastgan.ops.spatial_adaptive_norm`` (SPADE) vs eager vs ``torch.compile``.

Cases: :mod:`fastgan.bench.spade_suite` (the same ones ``fastgan bench`` runs); the test body:
:mod:`fastgan.bench.pytest_bench`.

    pytest benchmarks/bench_spade.py --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/bench_spade.py --benchmark-columns=median,ops   # timings (CPU: the quick preset)
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "spade"
pytest_generate_tests, test_spade = suite_benchmark(SUITE)
