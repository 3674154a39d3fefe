"""pytest-benchmark: ``fastgan.ops.grad_penalty`` backends vs the eager ``(grad.flatten(1).norm(2, dim=1) - 1) ** 2`` vs
``torch.compile``, and DCGAN critic steps with WGAN-GP / R1 on fastgan kernels vs a torch.nn critic.

Cases: :mod:`fastgan.bench.grad_penalty_suite` (the same ones ``fastgan bench --suite grad_penalty`` runs); the test
body: :mod:`fastgan.bench.pytest_bench`.

    pytest benchmarks/bench_gradient_penalty.py --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/bench_gradient_penalty.py --benchmark-columns=median,ops   # timings (CPU: the quick preset)
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "grad_penalty"
pytest_generate_tests, test_grad_penalty = suite_benchmark(SUITE)
