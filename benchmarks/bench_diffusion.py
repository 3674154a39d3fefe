"""pytest-benchmark: the fused DDPM and DDIM steps (``fastgan.diffusion.ddpm_step`` / ``ddim_step``) backends vs a
diffusers-style eager step vs ``torch.compile``.

Cases: the ``ddpm_step`` and ``ddim_step`` suites of :mod:`fastgan.bench.diffusion_suite` (the same ones
``fastgan bench`` runs); whole sampling loops are in ``bench_sampling.py``.

    pytest benchmarks/bench_diffusion.py --benchmark-disable              # smoke check: every case runs once
    pytest benchmarks/bench_diffusion.py --benchmark-columns=median,ops   # timings (CPU: the quick preset)
"""
from fastgan.bench.pytest_bench import suite_benchmark

_generate_ddpm, test_ddpm_step = suite_benchmark("ddpm_step")
_generate_ddim, test_ddim_step = suite_benchmark("ddim_step")


def pytest_generate_tests(metafunc):
    # one module, two suites: each test gets its own suite's cases
    (_generate_ddpm if metafunc.function is test_ddpm_step else _generate_ddim)(metafunc)
