"""The norm kernels' ISA clones (csrc/cpu_isa.h) give the same bits.

The group-norm family's C++ inner loops (group norm, SPADE maps, channels-last, the double backwards, and instance
norm's contiguous forward, which runs on them) and instance norm's own loops (channels-last forward, backward, double backward) are
compiled for the baseline ISA, AVX2 and AVX-512 and picked by CPU, capped by
ATEN_CPU_CAPABILITY. None lets the compiler contract to FMA or reorders a sum, so every clone must give the same
bits; the one exception is chosen in source: SiLU's float exp has FMA in the AVX2 and AVX-512 clones (vec_math.h),
which then agree bit for bit with each other and with the baseline to a few ulps. The kernel ops are called
directly: the Python glue and the composite double backward run ATen ops, whose reductions do differ by ISA.
"""
from __future__ import annotations

import pytest
import torch

from fastgan import _backend
from isa_clones import assert_fma_clones, assert_same_bits, outputs_per_isa

_SCRIPT = r"""
import sys, torch, fastgan
torch.set_num_threads(2)  # the split-group path needs more threads than groups
ops = torch.ops.fastgan
x0, gy0, m0, b0, s0, t0 = torch.load(sys.argv[1])
out = {"exact": [], "fma_exp": []}
for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    for cl in (False, True):
        x, gy, gm, bm = (t.to(dt) for t in (x0, gy0, m0, b0))
        if cl:
            x, gy = x.to(memory_format=torch.channels_last), gy.to(memory_format=torch.channels_last)
        for groups in (1, 4, 64):
            for act, alpha in ((0, 0.0), (2, 0.2), (5, 0.0)):
                kind = "fma_exp" if act == 5 and dt != torch.float64 else "exact"
                for maps in ((None, None), (gm, bm)):
                    y, mean, rstd = ops.group_norm_fwd(x, s0, t0, *maps, groups, 1e-5, act, alpha)
                    out[kind] += [y, mean, rstd]
                    out[kind] += list(ops.group_norm_bwd(gy, x, mean, rstd, s0, t0, *maps, groups, 1e-5, act,
                                                         alpha))
                    if maps[0] is None:
                        out[kind] += list(ops.group_norm_dbwd(gm, t0, s0, gy, x, mean, rstd, s0, t0, groups, 1e-5,
                                                              act, alpha))
                    else:
                        out[kind] += list(ops.group_norm_dbwd_maps(gm, t0, s0, bm, bm if act else None, gy, x, mean,
                                                                   rstd, s0, t0, *maps, groups, 1e-5, act, alpha))
        acc = torch.float64 if dt == torch.float64 else torch.float32
        s1, t1 = s0.to(acc), t0.to(acc)
        y, mean, rstd = ops.instance_norm_fwd(x, s1, t1, 1e-5)
        out["exact"] += [y, mean, rstd] + list(ops.instance_norm_bwd(gy, x, mean, rstd, s1, 1e-5))
        out["exact"] += list(ops.instance_norm_dbwd(gm, t1, s1, gy, x, mean, rstd, s1, 1e-5))
torch.save(out, sys.argv[2])
"""


@pytest.mark.skipif(not _backend.available("group_norm_fwd", "cpp", "cpu"), reason="compiled extension not loaded")
def test_norm_isa_clones_bitwise_equal(tmp_path):
    """Capabilities the CPU lacks fall back to a lower clone: vacuous only on a CPU without AVX2."""
    gen = torch.Generator().manual_seed(11)
    # 1x64x33x17: N*G < threads for groups=1 (the split path); odd plane, vector bodies and scalar tails. A mean
    # offset keeps the centred sums honest; scale/shift are (N, C) float64, as the kernels take them.
    x = 2 * torch.randn(1, 64, 33, 17, generator=gen) + 3
    gy, gm, bm = (torch.randn(1, 64, 33, 17, generator=gen) for _ in range(3))
    scale = 1 + 0.5 * torch.randn(1, 64, generator=gen, dtype=torch.float64)
    shift = torch.randn(1, 64, generator=gen, dtype=torch.float64)
    res = outputs_per_isa(tmp_path, _SCRIPT, (x, gy, gm, bm, scale, shift))
    assert_same_bits({cap: r["exact"] for cap, r in res.items()}, min_outputs=100)
    assert_fma_clones({cap: r["fma_exp"] for cap, r in res.items()}, min_outputs=100)
