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
