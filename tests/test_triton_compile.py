"""Every Triton kernel variant compiles for sm_90 (tools/triton_compile_check.py --quick): the interpreter, which
the other Triton tests use, accepts kernels the GPU compiler rejects (three such kernels reached a commit before
this check existed: loop-carried throwaway variables that changed shape, a module global read in a jit function)."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "triton_compile_check.py"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None
                    or importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="Triton with its NVIDIA backend (bundled ptxas) is not installed")
def test_every_triton_kernel_variant_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile for real, untouched by other processes' caches
    # From tmp_path, so the installed fastgan is the one imported (a plain pip install has no _C in the checkout).
    # Two shards in parallel: compiling is single-threaded, and this is the slowest test of the suite.
    shards = 2
    procs = [subprocess.Popen([sys.executable, str(TOOL), "--quick", "--shard", f"{i}/{shards}"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(shards)]
    compiled = 0
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        report = out[-6000:] + err[-2000:]
        assert proc.returncode == 0, report
        found = re.search(r"(\d+) launches compiled, 0 failed", out)
        assert found, report
        compiled += int(found.group(1))
    assert compiled >= 250, compiled  # 272 variants at the time of writing
