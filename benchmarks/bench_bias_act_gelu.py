"""pytest-benchmark: ``fastgan.ops.bias_act(act="gelu")`` backends vs eager ``F.gelu(x + b)`` vs ``torch.compile``.

Cases: the ``bias_act_gelu`` suite of :mod:`fastgan.bench.bias_act_suite` (the same ones ``fastgan bench`` runs).

    pytest benchmarks/bench_bias_act_gelu.py --benchmark-disable   # smoke check: every case runs once
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "bias_act_gelu"
pytest_generate_tests, test_bias_act_gelu = suite_benchmark(SUITE)
