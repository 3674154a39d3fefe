"""pytest-benchmark: one StarGAN v2 training iteration, fastgan build vs the ``torch.nn`` build.

Cases: :mod:`fastgan.bench.stargan_v2_suite` (the same ones ``fastgan bench`` runs); the test body:
:mod:`fastgan.bench.pytest_bench`. The bytes floor does not apply to a whole iteration (it is 0), so read the
median time per iteration; the GB/s in ``extra_info`` is meaningless here.

    pytest benchmarks/bench_stargan_v2.py --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/bench_stargan_v2.py --benchmark-columns=median,ops   # timings (CPU: the quick preset)
"""
from fastgan.bench.pytest_bench import suite_benchmark

SUITE = "stargan_v2"
pytest_generate_tests, test_stargan_v2 = suite_benchmark(SUITE)
