"""The gradient-penalty and diffusion-step kernels' ISA clones (csrc/cpu_isa.h) give the same bits.

Their loops (the penalty's per-sample sums of squares and dot products and its scaling sweeps; the sampler step's
sweep and its float32 Philox/Box-Muller noise) are compiled for the baseline ISA, AVX2 and AVX-512. None uses FMA or
reorders a sum, so every clone must give the same bits in every dtype. The ops are called directly.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastgan import _backend
from isa_clones import assert_same_bits, outputs_per_isa

_SCRIPT = r"""
import sys, torch, fastgan
ops = torch.ops.fastgan
g0, v0, m0, u0, z0, coef = torch.load(sys.argv[1])
seed = torch.tensor([20261202], dtype=torch.long)
out = []
for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    g, v = g0.to(dt), v0.to(dt)
    gp = torch.linspace(0.5, 2.0, g.shape[0], dtype=dt)
    for kind, target in ((0, 1.0), (0, 0.0), (1, 0.0)):
        p, norm = ops.grad_penalty_fwd(g, kind, target)
        out += [p, norm, ops.grad_penalty_bwd(gp, g, norm, kind, target)]
        out += list(ops.grad_penalty_dbwd(v, gp, g, norm, kind, target))
    for cl in (False, True):
        x, m, u, z = (t.to(dt) for t in (g0[:, :5, :33, :17], m0, u0, z0))
        if cl:
            x, m, u, z = (t.contiguous(memory_format=torch.channels_last) for t in (x, m, u, z))
        for c in (coef, coef[:1]):
            for clip in (0.0, 1.0):
                out.append(ops.diffusion_step(x, m, None, None, c, 1.0, clip))
                out.append(ops.diffusion_step(x, m, u, z, c, 3.0, clip))
                out.append(ops.diffusion_step_philox(x, m, None, seed, c, 1.0, clip))
                out.append(ops.diffusion_step_philox(x, m, u, seed, c, 2.5, clip))
torch.save(out, sys.argv[2])
"""


@pytest.mark.skipif(not _backend.available("grad_penalty_fwd", "cpp", "cpu"), reason="compiled extension not loaded")
def test_penalty_and_step_isa_clones_bitwise_equal(tmp_path):
    gen = torch.Generator().manual_seed(5)
    # 3x6x97x71: 41322 elements a sample, so two reduction chunks of 32768 and odd tails; the step's 3x5x33x17
    # slice is non-contiguous in g, so the op's own copy runs too. Coefficients are per sample, then shared.
    g, v = (1.5 * torch.randn(3, 6, 97, 71, generator=gen) for _ in range(2))
    m, u, z = (torch.randn(3, 5, 33, 17, generator=gen) for _ in range(3))
    coef = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    assert_same_bits(outputs_per_isa(tmp_path, _SCRIPT, (g, v, m, u, z, coef)), min_outputs=180)


@pytest.mark.skipif(not _backend.available("grad_penalty_fwd", "cpp", "cpu"), reason="compiled extension not loaded")
def test_reported_cpu_isa_follows_the_capability_cap(tmp_path):
    """fastgan._C.CPU_ISA (shown by `fastgan info` and in benchmark reports) names the clones that run."""
    def isa(cap):
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap) if cap else {k: v for k, v in os.environ.items()
                                                                     if k != "ATEN_CPU_CAPABILITY"}
        code = "from fastgan import _backend; print(_backend.cpu_kernel_isa())"
        # cwd away from the checkout: `python -c` puts the cwd first on sys.path, and the source tree's fastgan/
        # has no compiled module after a plain `pip install .` (CI), so it would shadow the installed package.
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), check=True,
                              capture_output=True, text=True).stdout.split()[-1]

    free = isa(None)
    assert free in ("baseline", "avx2", "avx512")
    assert isa("default") == "baseline"
    assert isa("avx2") == ("baseline" if free == "baseline" else "avx2")
    assert isa("avx512") == free
