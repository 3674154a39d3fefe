"""Helpers for the tests that compare the C++ kernels' ISA clones (csrc/cpu_isa.h) bit for bit.

Each clone set (baseline, AVX2, AVX-512) is picked once per process by CPU, capped by ATEN_CPU_CAPABILITY, so every
capability runs `script` in its own subprocess. Inputs come from one file: torch.randn itself differs between ATen's
ISA paths. Capabilities the CPU lacks fall back to a lower clone, so a comparison is vacuous only on a CPU without
AVX2.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch

CAPABILITIES = ("default", "avx2", "avx512")


def outputs_per_isa(tmp_path, script: str, inputs) -> dict:
    """Runs `script` (reads torch.load(argv[1]), saves a list of tensors to argv[2]) under each capability.

    Returns:
        {capability: list of output tensors}
    """
    torch.save(inputs, tmp_path / "in.pt")
    (tmp_path / "run.py").write_text(script)
    results = {}
    for cap in CAPABILITIES:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap)
        subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "in.pt"), str(tmp_path / f"{cap}.pt")],
                       check=True, env=env, cwd=str(tmp_path))
        results[cap] = torch.load(tmp_path / f"{cap}.pt")
    return results


def assert_same_bits(results: dict, min_outputs: int = 1) -> None:
    """Every capability's outputs equal the baseline clone's, bit for bit (dtype and shape included)."""
    base = results["default"]
    assert len(base) >= min_outputs
    for cap in CAPABILITIES[1:]:
        assert len(results[cap]) == len(base)
        for i, (a, b) in enumerate(zip(base, results[cap])):
            assert a.dtype == b.dtype and a.shape == b.shape, f"{cap}: output {i} differs in dtype or shape"
            if a.numel():
                assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), \
                    f"{cap} differs from the baseline clone in output {i} ({a.dtype})"


def assert_fma_clones(results: dict, min_outputs: int = 1) -> None:
    """For outputs whose math has an FMA exp in the AVX2 and AVX-512 clones only (vec_math.h): those two agree bit for
    bit, the baseline is within a few ulps of the output's magnitude (the exp's last bit moves, and what is computed
    from it carries that along), and where the FMA clones ran some last bit did move (a clone that silently lost its
    FMA would otherwise pass). float64 outputs here are sums of float terms: float32's eps applies."""
    from fastgan import _backend

    base_all = results["default"]
    assert len(base_all) >= min_outputs and all(len(results[cap]) == len(base_all) for cap in CAPABILITIES[1:])
    if _backend.cpu_kernel_isa() in ("avx2", "avx512"):
        assert any(not torch.equal(b, v) for b, v in zip(base_all, results["avx512"])), "no FMA in the clones?"
    for i, (base, a2, a5) in enumerate(zip(base_all, results["avx2"], results["avx512"])):
        if not base.numel():
            continue
        assert torch.equal(a2.reshape(-1).view(torch.uint8), a5.reshape(-1).view(torch.uint8)), \
            f"avx2 and avx512 differ in output {i}"
        eps = torch.finfo(torch.float32 if base.dtype == torch.float64 else base.dtype).eps
        torch.testing.assert_close(a5.double(), base.double(), rtol=4 * eps, atol=4 * eps * base.abs().max().item())
