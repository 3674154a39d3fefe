"""pytest-benchmark: ``fastgan.ops.bias_act`` backends vs eager ``F.leaky_relu(x + b, 0.2) * sqrt(2)`` vs ``torch.compile``.

Cases: :mod:`fastgan.bench.bias_act_suite` (the same ones ``fastgan bench`` runs); the test body:
:mod:`fastgan.bench.pytest_bench`.

    pytest benchmarks/bench_bias_act.py --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/bench_bias_act.py --benchmark-columns=median,ops   # timings (CPU: the quick preset)
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "bias_act"
pytest_generate_tests, test_bias_act = suite_benchmark(SUITE)
