"""pytest-benchmark: ``fastgan.ops.bias_act(act="sigmoid")`` backends vs eager ``torch.sigmoid(x + b)`` vs ``torch.compile``.

Cases: the ``bias_act_sigmoid`` suite of :mod:`fastgan.bench.bias_act_suite` (the same ones ``fastgan bench`` runs).

    pytest benchmarks/bench_bias_act_sigmoid.py --benchmark-disable   # smoke check: every case runs once
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "bias_act_sigmoid"
pytest_generate_tests, test_bias_act_sigmoid = suite_benchmark(SUITE)
