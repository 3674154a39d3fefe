"""pytest-benchmark: ``fastgan.ops.bias_act(act="tanh")`` backends vs eager ``torch.tanh(x + b)`` vs ``torch.compile``.

Cases: the ``bias_act_tanh`` suite of :mod:`fastgan.bench.bias_act_suite` (the same ones ``fastgan bench`` runs).

    pytest benchmarks/bench_bias_act_tanh.py --benchmark-disable   # smoke check: every case runs once
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "bias_act_tanh"
pytest_generate_tests, test_bias_act_tanh = suite_benchmark(SUITE)
