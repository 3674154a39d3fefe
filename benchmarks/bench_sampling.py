"""pytest-benchmark: whole DDPM/DDIM sampling loops with fastgan's UNet, fused-step samplers (eager and CUDA-graph)
vs a diffusers-style eager step loop.

Cases: :mod:`fastgan.bench.sampling_suite` (the same ones ``fastgan bench`` runs); the test body:
:mod:`fastgan.bench.pytest_bench`. The bytes floor does not apply to a whole loop (it is 0), so read the median
time per loop; the GB/s in ``extra_info`` is meaningless here.

    pytest benchmarks/bench_sampling.py --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/bench_sampling.py --benchmark-columns=median,ops   # timings (CPU: the toy preset)
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "sampling"
pytest_generate_tests, test_sampling = suite_benchmark(SUITE)
