"""The C++ CPU kernels on tensors of more than 2^31 elements (64-bit offsets; a 32-bit index would wrap).

Each test builds one bfloat16 tensor of 2^31 + 66 elements (4 GiB), constant except short random tails, so the
exact float64 result of every reduction follows from counts, and checks the outputs' last elements (the ones a
wrapped index would get wrong or never write). About 9 GiB at a time; skipped where less memory is free.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastgan import _backend

ops = torch.ops.fastgan
BIG = 2**30 + 33  # per channel / per sample: two of them are 2^31 + 66 elements
TAIL = 40
FILL = 0.5  # exact in bfloat16


def _mem_available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


pytestmark = [
    pytest.mark.skipif(not _backend.available("group_norm_fwd", "cpp", "cpu"), reason="compiled extension not loaded"),
    pytest.mark.skipif(_mem_available_gib() < 14, reason="needs ~9 GiB free for two 4 GiB tensors"),
]


@pytest.fixture
def big():
    """(2, BIG) bfloat16: FILL everywhere but each row's last TAIL values (random); and those tails in float64."""
    gen = torch.Generator().manual_seed(31)
    tails = torch.randn(2, TAIL, generator=gen).to(torch.bfloat16)
    x = torch.empty(2, BIG, dtype=torch.bfloat16).fill_(FILL)
    x[:, -TAIL:] = tails
    assert x.numel() > 2**31
    yield x, tails.double()
    del x


def _row_sums(tails):
    """Per row: sum and sum of squares of the (2, BIG) tensor, exact in float64 (FILL and counts are exact)."""
    rest = BIG - TAIL
    return FILL * rest + tails.sum(1), FILL**2 * rest + tails.square().sum(1)


def test_group_norm_over_2_31_elements(big):
    x, tails = big
    # One group of both channels (2^31 + 66 elements): N * G = 1 takes the split path of the kernel.
    xin = x.view(1, 2, BIG)
    scale = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    shift = torch.tensor([[0.25, 2.0]], dtype=torch.float64)
    y, mean, rstd = ops.group_norm_fwd(xin, scale, shift, None, None, 1, 1e-5, 0, 0.0)
    s1, s2 = (t.sum() for t in _row_sums(tails))
    n = 2 * BIG
    mu = s1 / n
    var = s2 / n - mu * mu
    assert mean.double().item() == pytest.approx(mu.item(), rel=1e-6)
    assert rstd.double().item() == pytest.approx(1 / math.sqrt(var.item() + 1e-5), rel=1e-5)
    expect = (tails - mu) / math.sqrt(var.item() + 1e-5) * scale.view(2, 1) + shift.view(2, 1)
    torch.testing.assert_close(y[0, :, -TAIL:].double(), expect, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(y[0, :, :3].double(), ((FILL - mu) / math.sqrt(var.item() + 1e-5)
                                                      * scale.view(2, 1) + shift.view(2, 1)).expand(2, 3),
                               rtol=1e-2, atol=1e-2)


def test_instance_norm_over_2_31_elements(big):
    """Two planes of 2^30 + 33 elements: forward (on the group-norm loops) and backward (its own loops), with
    grad_y = x so that no third 4 GiB tensor is needed."""
    x, tails = big
    xin = x.view(1, 2, BIG)
    scale = torch.tensor([[1.5, -0.5]])
    shift = torch.tensor([[0.25, 2.0]])
    y, mean, rstd = ops.instance_norm_fwd(xin, scale, shift, 1e-5)
    s1, s2 = _row_sums(tails)
    mu = s1 / BIG
    var = s2 / BIG - mu * mu
    r = 1 / (var + 1e-5).sqrt()
    torch.testing.assert_close(mean.double().view(2), mu, rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd.double().view(2), r, rtol=1e-5, atol=0)
    expect = (tails - mu.view(2, 1)) * r.view(2, 1) * scale.double().view(2, 1) + shift.double().view(2, 1)
    torch.testing.assert_close(y[0, :, -TAIL:].double(), expect, rtol=1e-2, atol=1e-2)
    del y
    gx, gscale, gshift = ops.instance_norm_bwd(xin, xin, mean, rstd, scale, 1e-5)
    # grad_y = x: mean(gy) = mu and mean(gy * xhat) = r var, so gx = r a (x - mu) (1 - r^2 var).
    k = (r * scale.double().view(2) * (1 - r * r * var)).view(2, 1)
    torch.testing.assert_close(gx[0, :, -TAIL:].double(), k * (tails - mu.view(2, 1)), rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(gshift.double().view(2), s1, rtol=1e-5, atol=0)  # sum of grad_y over each plane
    # sum gy * (x - mean) * rstd with the saved float32 statistics, as the kernel (and eager) take it; with the
    # exact mean the difference s1 (mu - mean_f) is most of this cancelling sum.
    m32, r32 = mean.double().view(2), rstd.double().view(2)
    torch.testing.assert_close(gscale.double().view(2), r32 * (s2 - s1 * m32), rtol=1e-5, atol=0)


def test_grad_penalty_over_2_31_elements(big):
    x, tails = big
    p, norm = ops.grad_penalty_fwd(x, 0, 1.0)
    _, s2 = _row_sums(tails)
    torch.testing.assert_close(norm, s2.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(p.double(), (s2.sqrt() - 1).square(), rtol=1e-2, atol=0)
    gp = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    gx = ops.grad_penalty_bwd(gp, x, norm, 0, 1.0)
    c = gp.double() * 2 * (norm - 1) / norm
    torch.testing.assert_close(gx[:, -TAIL:].double(), c.view(2, 1) * tails, rtol=1e-2, atol=0)
    torch.testing.assert_close(gx[:, :2].double(), (c * FILL).view(2, 1).expand(2, 2), rtol=1e-2, atol=0)


def test_bias_act_and_diffusion_step_over_2_31_elements(big):
    x, tails = big
    bias = torch.tensor([0.25, -1.0], dtype=torch.bfloat16)
    y = ops.bias_act_fwd(x, bias, 2, 0.2, 1.5, -1.0, 0)  # lrelu along dim 0 (one bias per row)
    z = tails + bias.double().view(2, 1)
    expect = torch.where(z > 0, z, 0.2 * z) * 1.5
    torch.testing.assert_close(y[:, -TAIL:].double(), expect, rtol=1e-2, atol=1e-2)
    del y
    # The sampler step with model_out = x: out = c_0 clamp(a_x (x - g x) + r x) + b_x x + b_m x.
    coef = torch.tensor([[0.5, 0.25, 1.0, 0.75, 0.5, 0.25, 0.0]], dtype=torch.float64)
    out = ops.diffusion_step(x, x, None, None, coef, 1.0, 0.0)
    a_x, g, r, c_0, b_x, b_m, _ = coef[0].tolist()
    factor = c_0 * (a_x * (1 - g) + r) + b_x + b_m
    torch.testing.assert_close(out[:, -TAIL:].double(), factor * tails, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out[1, :2].double(), torch.full((2,), factor * FILL, dtype=torch.float64),
                               rtol=1e-2, atol=0)
