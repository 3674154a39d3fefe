"""The Triton norm kernels' 64-bit-index variants (chosen for inputs of 2**31 elements or more) on small inputs.

An input that large cannot run here, so the variant is forced (IDX64=True) on small shapes under TRITON_INTERPRET=1
(or on CUDA with TRITON_INTERPRET=0): it must give the same bits as the int32 variant, whose arithmetic it shares
but for the index types. The index arithmetic itself is checked past 2**32 through a probe kernel, with no large
tensor. tools/triton_compile_check.py compiles the same variants for sm_90.
"""
import os

import pytest
import torch

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fastgan._backend import import_kernels  # noqa: E402

# conftest.py sets TRITON_INTERPRET=1 unless the run asks for the GPU (TRITON_INTERPRET=0).
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)


_group = import_kernels("group_norm")._group


@triton.jit
def _group_probe(OUT, Cg, L, IDX64: tl.constexpr):
    """Stores rc * L for the group's last two channels and M = Cg * L, as the group-norm kernels index with them."""
    p, M, base, cg, length = _group(Cg, L, IDX64)
    rc = tl.arange(0, 2) + (cg - 2)
    tl.store(OUT + tl.arange(0, 2), (rc * length).to(tl.int64))
    tl.store(OUT + 2, M.to(tl.int64))


@pytest.mark.parametrize("idx64", [False, True])
def test_group_offsets_past_int32(idx64):
    """One group of 65536 x 65537 elements (no tensor that large is allocated: only the index arithmetic runs).
    The 64-bit variant must get the offsets and M right; the 32-bit one wraps, which is why inputs of 2**31
    elements or more take the 64-bit variant (this case also shows the check can fail)."""
    cg, length = 65536, 65537
    out = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    _group_probe[(1,)](out, cg, length, IDX64=idx64)
    want = [(cg - 2) * length, (cg - 1) * length, cg * length]
    assert max(want) >= 2**32
    if idx64:
        assert out.tolist() == want
    else:
        assert out.tolist() != want


def _same_bits(a, b):
    for i, (u, v) in enumerate(zip(a, b)):
        if u is None or v is None:
            assert u is None and v is None, f"output {i}: one is None"
            continue
        assert u.dtype == v.dtype and u.shape == v.shape, f"output {i}"
        assert torch.equal(u.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), f"output {i} differs"


def _rand(*shape, dtype=torch.float32, gen):
    return torch.randn(*shape, generator=gen, dtype=dtype).to(DEVICE)


@pytest.mark.parametrize("act", [0, 5])
@pytest.mark.parametrize("groups", [1, 4])
def test_group_norm_idx64_variant_matches(monkeypatch, act, groups):
    g = import_kernels("group_norm")
    gen = torch.Generator().manual_seed(11 + act + groups)
    n, c, h, w = 2, 8, 7, 13
    x, gy, v = (_rand(n, c, h, w, gen=gen) for _ in range(3))
    scale, shift = (_rand(n, c, dtype=torch.float64, gen=gen) for _ in range(2))

    def run():
        y, mean, rstd = g.forward(x, scale, shift, None, None, groups, 1e-5, act, 0.2)[:3]
        bwd = g.backward(gy, x, mean, rstd, scale, shift, None, None, act, 0.2)
        dbwd = g.double_backward(v, scale, shift, gy, x, mean, rstd, scale, shift, 1e-5, act, 0.2)
        return [y, mean, rstd, *bwd, *dbwd]

    plain = run()
    meta = g._meta

    def meta64(x, groups):
        cg, length, m = meta(x, groups)
        assert m["IDX64"] is False  # small input: the int32 variant by default
        return cg, length, {**m, "IDX64": True}

    monkeypatch.setattr(g, "_meta", meta64)
    _same_bits(plain, run())


@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_idx64_variant_matches(monkeypatch, channels_last):
    k = import_kernels("instance_norm")
    gen = torch.Generator().manual_seed(5 + channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, gy, v = (_rand(2, 3, 7, 13, gen=gen).contiguous(memory_format=fmt) for _ in range(3))
    w, b = (_rand(2, 3, gen=gen) for _ in range(2))

    def run():
        y, mean, rstd = k.forward(x, w, b, 1e-5)[:3]
        bwd = k.backward(gy, x, mean, rstd, w)
        dbwd = k.double_backward(v, w, b, gy, x, mean, rstd, w)
        return [y, mean, rstd, *bwd, *dbwd]

    plain = run()
    plan = k._plan
    monkeypatch.setattr(k, "_plan", lambda x, n_in: plan(x, n_in)._replace(idx64=True))
    _same_bits(plain, run())
