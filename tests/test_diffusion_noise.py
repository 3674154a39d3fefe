"""In-kernel step noise (fastgan.diffusion.philox): Philox4x32-10 known answers, every backend equal to the reference,
seeding and generator behaviour, the distribution (moments, Kolmogorov–Smirnov, neighbour correlation), layouts."""
import math

import pytest
import torch

from fastgan import _backend
from fastgan.diffusion import NoiseSchedule, ddim_step, ddpm_step
from fastgan.diffusion import philox as P
from fastgan.diffusion.steps import fused_step

from conftest import devices

SCHED = NoiseSchedule.linear(1000)
M32 = 0xFFFFFFFF


def kernel_impls():
    return [pytest.param(d, i, id=f"{d}-{i}") for d in devices() for i in _backend.live_impls("diffusion_step", d)
            if i != "ref"]


def all_impls():
    return [pytest.param(d, i, id=f"{d}-{i}") for d in devices() for i in _backend.live_impls("diffusion_step", d)]


def python_philox(counter, key):
    """Philox4x32-10 on Python ints, written from the Random123 definition (independent of the torch reference)."""
    c, k = list(counter), list(key)
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & M32, (p0 >> 32) ^ c[3] ^ k[1], p0 & M32]
        k = [(k[0] + 0x9E3779B9) & M32, (k[1] + 0xBB67AE85) & M32]
    return c


# Random123's kat_vectors for philox4x32_10: (counter, key, expected output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32,) * 4, (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,want", KAT)
def test_philox_known_answers(counter, key, want):
    assert tuple(python_philox(counter, key)) == want
    got = P.philox4x32([torch.tensor([c]) for c in counter], key)
    assert tuple(int(w) for w in got) == want


def test_reference_philox_equals_the_definition_on_random_words():
    g = torch.Generator().manual_seed(0)
    words = torch.randint(0, 2**32, (64, 6), generator=g, dtype=torch.int64)
    got = P.philox4x32([words[:, i] for i in range(4)], (words[:, 4], words[:, 5]))
    for row in range(64):
        w = words[row].tolist()
        assert [int(t[row]) for t in got] == python_philox(w[:4], w[4:])


def _noise_only(n):
    """Coefficients making the step's output exactly c_z z = z."""
    coef = torch.zeros(n, 7, dtype=torch.float64)
    coef[:, 6] = 1.0
    return coef


@pytest.mark.parametrize("device,impl", kernel_impls())
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 5), (1, 4, 3, 3, 2)])
def test_kernel_noise_equals_the_reference(device, impl, shape):
    """Same Philox words, same uniforms; only log/sqrt/cos/sin may round differently (measured <= 4e-7 in float32)."""
    seed = torch.tensor([0x1234_5678_9ABC_DEF], device=device)
    for dtype, tol in ((torch.float32, 2e-6), (torch.float64, 1e-13)):
        x = torch.randn(shape, device=device, dtype=dtype)
        for coef in (_noise_only(shape[0]), _noise_only(1)):
            got = fused_step(x, x, None, None, coef.to(device), seed=seed, impl=impl)
            want = P.normal(seed, shape, dtype, device)
            assert got.dtype == dtype and (got - want).abs().max().item() <= tol * 6


@pytest.mark.parametrize("device,impl", kernel_impls())
def test_noise_follows_logical_index_in_any_layout(device, impl):
    """Documented: element noise depends on the logical index, so channels-last gives the same output."""
    x = torch.randn(2, 5, 3, 7, device=device)
    m = torch.randn_like(x)
    xc = x.contiguous(memory_format=torch.channels_last)
    a = ddpm_step(x, m, 400, SCHED, generator=torch.Generator(device).manual_seed(4), impl=impl)
    b = ddpm_step(xc, m, 400, SCHED, generator=torch.Generator(device).manual_seed(4), impl=impl)
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)
    r = ddpm_step(x, m, 400, SCHED, generator=torch.Generator(device).manual_seed(4), impl="ref")
    assert (a - r).abs().max().item() < 1e-5  # the whole step, kernel vs reference, elementwise


@pytest.mark.skipif(not _backend.has_kernel("diffusion_step_philox", "CPU"), reason="no compiled CPU op")
def test_cpu_noise_does_not_depend_on_thread_count_or_chunking():
    x = torch.randn(3, 5, 61, 67)  # 61305 elements: several parallel chunks, runs crossing sample edges
    seed = torch.tensor([77])
    outs = []
    n = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(fused_step(x, x, None, None, _noise_only(3), seed=seed, impl="cpp"))
            outs.append(fused_step(x.contiguous(memory_format=torch.channels_last), x, None, None, _noise_only(3),
                                   seed=seed, impl="cpp"))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(outs[0], o) for o in outs)
    assert (outs[0] - P.normal(seed, x.shape)).abs().max().item() < 2e-6


def _float32_box_muller_in_float64(seed, numel):
    """The float32 definition (float32 uniforms, theta = fl32(fl32(2 pi) u)) with log/sqrt/cos/sin in float64: what a
    correctly rounding float32 implementation approximates (P.normal in float64 differs by theta's rounding)."""
    j = torch.arange(numel // 4, dtype=torch.int64)
    seed = int(seed)
    words = P.philox4x32((j & M32, j >> 32, torch.zeros_like(j), torch.zeros_like(j)), (seed & M32, seed >> 32))
    out = []
    for ra, rb in ((words[0], words[1]), (words[2], words[3])):
        rho = (-2.0 * P.uniforms(ra).double().log()).sqrt()
        theta = (torch.tensor(2 * math.pi, dtype=torch.float32) * P.uniforms(rb)).double()
        out += [rho * theta.cos(), rho * theta.sin()]
    return torch.stack(out, dim=1).reshape(-1)


@pytest.mark.skipif(not _backend.has_kernel("diffusion_step_philox", "CPU"), reason="no compiled CPU op")
def test_cpu_float32_noise_accuracy_on_a_dense_sample():
    """The CPU float32 path computes log and sincos with its own polynomials (csrc/diffusion_step_cpu.cpp), not
    libm. On 2^21 normals (2^20 log and 2^20 sincos arguments, 1/8 of the 2^23-point uniform grid) it must be as
    accurate as float32 libm: within 1.5 float32 ulp of |z| <= 5.77 of the exact value for the float32 uniforms and
    float32 theta (log/sqrt/cos/sin in float64; measured 6.2e-7 worst case over 2^25 normals in a C++ sweep, the
    same as with libm logf/cosf/sinf), and within the reference's float32 rounding of torch.log/cos/sin."""
    shape = (8, 4, 256, 256)
    seed = torch.tensor([0x0DEC_AF_C0FFEE])
    x = torch.zeros(shape)
    got = fused_step(x, x, None, None, _noise_only(1), seed=seed, impl="cpp").double()
    exact = _float32_box_muller_in_float64(seed, got.numel()).reshape(shape)
    assert (got - exact).abs().max().item() <= 1.5 * 2.0**-21  # 1.5 ulp of float32 values in [4, 8)
    assert (got - P.normal(seed, shape, torch.float32).double()).abs().max().item() < 2e-6
    # The sample reaches both ends of the uniform grid's log domain and every sincos quadrant.
    assert got.abs().max().item() > 4.5 and (got > 0).any() and (got < 0).any()


@pytest.mark.parametrize("device,impl", all_impls())
def test_seeding_reproduces_and_the_generator_advances(device, impl):
    x, m = torch.randn(2, 3, 4, 4, device=device), torch.randn(2, 3, 4, 4, device=device)
    g = torch.Generator(device).manual_seed(11)
    a = ddpm_step(x, m, 500, SCHED, generator=g, impl=impl)
    b = ddpm_step(x, m, 500, SCHED, generator=g, impl=impl)  # the generator moved: new noise
    g2 = torch.Generator(device).manual_seed(11)
    assert torch.equal(a, ddpm_step(x, m, 500, SCHED, generator=g2, impl=impl))
    assert torch.equal(b, ddpm_step(x, m, 500, SCHED, generator=g2, impl=impl))
    assert not torch.equal(a, b)
    assert not torch.equal(a, ddpm_step(x, m, 500, SCHED, generator=torch.Generator(device).manual_seed(12),
                                        impl=impl))
    # One draw per step, whatever the size: the generator ends where one seed draw leaves it.
    g3, g4 = torch.Generator(device).manual_seed(5), torch.Generator(device).manual_seed(5)
    ddim_step(torch.randn(4, 3, 8, 8, device=device), torch.randn(4, 3, 8, 8, device=device), 500, 480, SCHED,
              eta=0.5, generator=g3, impl=impl)
    P.draw_seed(g4, torch.device(device))
    assert torch.equal(g3.get_state(), g4.get_state())
    # The default generator is used without one, and torch.manual_seed makes that reproducible too.
    torch.manual_seed(3)
    c = ddpm_step(x, m, 500, SCHED, impl=impl)
    torch.manual_seed(3)
    assert torch.equal(c, ddpm_step(x, m, 500, SCHED, impl=impl))


@pytest.mark.parametrize("device,impl", all_impls())
def test_noiseless_steps_draw_nothing_and_noise_is_used_as_given(device, impl):
    x, m, z = (torch.randn(2, 3, 4, 4, device=device, dtype=torch.float64) for _ in range(3))
    g = torch.Generator(device).manual_seed(9)
    state = g.get_state()
    zero = ddpm_step(x, m, 0, SCHED, generator=g, impl=impl)  # t = 0: no noise, no draw
    assert torch.equal(zero, ddpm_step(x, m, 0, SCHED, noise=torch.zeros_like(x), impl=impl))
    ddim_step(x, m, 500, 480, SCHED, eta=0.0, generator=g, impl=impl)  # deterministic DDIM: no draw
    given = ddpm_step(x, m, 500, SCHED, noise=z, generator=g, impl=impl)  # noise given: used, no draw
    assert torch.equal(g.get_state(), state)
    assert (given - fused_step(x, m, None, z, ddpm_coef(500, x), impl="ref")).abs().max().item() < 1e-12
    # Per-sample t with a 0 in it: that sample gets no noise (its c_z is 0), the others do.
    ts = torch.tensor([0, 700], device=device)
    noisy = ddpm_step(x, m, ts, SCHED, generator=g, impl=impl)
    clean = ddpm_step(x, m, ts, SCHED, noise=torch.zeros_like(x), impl="ref")
    assert (noisy[0] - clean[0]).abs().max().item() < 1e-12 and (noisy[1] - clean[1]).abs().max().item() > 1e-3


def ddpm_coef(t, x):
    from fastgan.diffusion.steps import step_coefficients

    return step_coefficients("ddpm", SCHED, torch.tensor([t]), torch.tensor([t - 1])).to(x.device)


# ------------------------------------------------------------------------------------------ distribution
def _normal_cdf(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(v / math.sqrt(2)))


def normality_failures(z: torch.Tensor) -> list[str]:
    """What a flat sample of n i.i.d. standard normals fails, at thresholds a correct generator passes with
    probability > 1 - 1e-5 each: mean and variance within 5 standard errors, the KS statistic below the
    alpha = 1e-6 critical value sqrt(ln(2 / alpha) / 2) / sqrt(n), and the correlation of elements 1..4 and one
    sample apart (the layout's neighbours) within 5 / sqrt(n)."""
    z = z.double().reshape(-1)
    n = z.numel()
    bad = []
    if abs(z.mean().item()) > 5 / math.sqrt(n):
        bad.append(f"mean {z.mean().item():.4f}")
    if abs(z.var().item() - 1) > 5 * math.sqrt(2 / n):
        bad.append(f"variance {z.var().item():.4f}")
    s = z.sort().values
    cdf = _normal_cdf(s)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(ranks / n - cdf, cdf - (ranks - 1) / n).max().item()
    if ks > math.sqrt(math.log(2 / 1e-6) / 2) / math.sqrt(n):
        bad.append(f"KS {ks:.4f}")
    for lag in (1, 2, 3, 4, 1024):
        r = torch.corrcoef(torch.stack([z[:-lag], z[lag:]]))[0, 1].item()
        if abs(r) > 5 / math.sqrt(n):
            bad.append(f"lag-{lag} correlation {r:.4f}")
    return bad


N_STAT = 4 * 1024 * 25  # 102400 samples: 100 samples of 1024 elements


@pytest.mark.parametrize("device,impl", all_impls())
def test_noise_is_standard_normal_and_independent(device, impl):
    shape = (100, 4, 16, 16)
    seed = torch.tensor([20240601], device=device)
    x = torch.zeros(shape, device=device)
    z = fused_step(x, x, None, None, _noise_only(1).to(device), seed=seed, impl=impl)
    assert normality_failures(z.cpu()) == []
    assert normality_failures(P.normal(12345, (N_STAT,))) == []


def test_the_statistical_check_catches_broken_generators():
    z = P.normal(777, (N_STAT,))
    uniform = (P.uniforms(torch.randint(0, 2**32, (N_STAT,), generator=torch.Generator().manual_seed(1))) - 0.5)
    assert any("KS" in f for f in normality_failures(uniform * math.sqrt(12)))  # right moments, wrong shape
    pairs = z.reshape(-1, 2)[:, :1].expand(-1, 2).reshape(-1)  # each Box-Muller pair's halves equal
    assert any("lag-1" in f for f in normality_failures(pairs))
    cos_only = z.reshape(-1, 4)[:, [0, 0, 2, 2]].reshape(-1)
    assert normality_failures(cos_only) != []
    assert normality_failures(z * 1.05) != [] and normality_failures(z + 0.05) != []


# ------------------------------------------------------------------------------------------ ops and compile
@pytest.mark.parametrize("device", [d for d in devices() if _backend.has_kernel("diffusion_step_philox", d.upper())])
def test_opcheck_of_the_compiled_philox_op(device):
    x, m, u = (torch.randn(2, 3, 4, 5, device=device) for _ in range(3))
    seed = torch.tensor([42], device=device)
    op = torch.ops.fastgan.diffusion_step_philox.default
    for coef in (torch.randn(2, 7, device=device), torch.randn(1, 7, device=device)):
        for args in ((x, m, u, seed, coef, 2.0, 1.0),
                     (x.contiguous(memory_format=torch.channels_last), m, None, seed, coef, 1.0, 0.0)):
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    with pytest.raises(RuntimeError, match="seed must be a one-element int64 tensor"):
        op(x, m, None, torch.tensor([1.0], device=device), torch.randn(2, 7, device=device), 1.0, 0.0)


@pytest.mark.parametrize("device", [d for d in devices() if "triton" in _backend.live_impls("diffusion_step", d)])
def test_opcheck_triton_philox_op(device):
    x, m, u = (torch.randn(2, 3, 4, 5, device=device) for _ in range(3))
    seed = torch.tensor([42], device=device)
    op = torch.ops.fastgan.diffusion_step_philox_triton.default
    for args in ((x, m, u, seed, torch.randn(2, 7, device=device), 2.0, 1.0),
                 (x, m, None, seed, torch.randn(1, 7, device=device), 1.0, 0.0)):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("device,impl", all_impls())
def test_compiles_with_fullgraph_drawing_from_the_default_generator(device, impl):
    x, out = (torch.randn(2, 3, 4, 4, device=device) for _ in range(2))
    t = torch.tensor([10, 900], device=device)

    def f(x, out, t):
        return ddpm_step(x, out, t, SCHED, impl=impl)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.manual_seed(8)
    got = compiled(x, out, t)
    torch.manual_seed(8)
    torch.testing.assert_close(got, f(x, out, t), rtol=0, atol=0)
