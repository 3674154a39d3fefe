"""The Triton instance-norm kernels (``fastgan.kernels.instance_norm``) against the plain-PyTorch reference.

Runs on CPU tensors under TRITON_INTERPRET=1 (set below, before anything imports triton), or on CUDA tensors when
run on a GPU with TRITON_INTERPRET=0. Every case draws fresh random inputs and checks forward, backward and double
backward against the reference evaluated in float64 on the same rounded inputs ("truth"), with the project rule
(tests/tolerance.py): our error is at most 2x the error of eager PyTorch in the same dtype, plus a floor of one
epsilon of the output's magnitude. float64 is held to 1e-10 of the magnitude instead.

The kernels pick their strategy (single tile / loop over chunks / split across programs) from the shape; the
module-level knobs of the kernel module are shrunk in some cases so that tiny inputs drive the loop and split
paths, whose chunk tails and range merges are where indexing bugs would hide.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda"

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # tolerance.py, also under --import-mode=importlib
from tolerance import assert_rule, max_err  # noqa: E402

from fastgan.ops._layout import canonical, empty_like_layout  # noqa: E402
from fastgan.ops.instance_norm_ref import acc_dtype, reference_bwd, reference_dbwd, reference_fwd  # noqa: E402


def _load_kernels():
    # Installed, setup.py maps kernels/ to fastgan.kernels; in a source tree that is not installed, _backend loads
    # kernels/ as that package (the kernel modules import each other relatively).
    from fastgan import _backend

    return _backend.import_kernels("instance_norm")


K = _load_kernels()
EPS = 1e-5

# Knob sets (see the kernel module). Tiny budgets force the loop path on small planes; PROGRAMS_PER_SM=0 keeps one
# program per plane group (fused loop), CPU_SMS=2 makes two planes "too few for the GPU" (split path).
DEFAULT = {}
LOOP = {"SINGLE_BUDGET": 0, "LOOP_BUDGET": 1024, "PROGRAMS_PER_SM": 0}
SPLIT = {"SINGLE_BUDGET": 0, "LOOP_BUDGET": 1024, "PROGRAMS_PER_SM": 2, "CPU_SMS": 2}


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":  # (N, *spatial, C) in memory, for 3-, 4- and 5-D
        perm = (0,) + tuple(range(2, x.dim())) + (1,)
        inv = [perm.index(d) for d in range(x.dim())]
        return x.permute(perm).contiguous().permute(inv)
    if layout == "strided":  # every other element of the last dim: neither layout, so copied to contiguous
        return torch.cat([x, torch.randn_like(x)], dim=-1)[..., ::2]
    raise ValueError(layout)


def _rand(shape, dtype, layout="contiguous", offset=0.0):
    """Random normal values (never zeros), plus ``offset``, rounded to ``dtype``, in ``layout``."""
    x = torch.randn(shape, dtype=torch.float64) + offset
    return _layout(x.to(dtype), layout).to(DEVICE)


def _stat(shape, dtype, positive=False):
    t = torch.randn(shape[:2], dtype=acc_dtype(dtype))
    return (t.abs() + 0.5 if positive else t).to(DEVICE)


def _d(*ts):
    return tuple(t.double() for t in ts)


def _check(ours, eager, truth, what, floor=0.0):
    """The project rule; float64 (whose eager error is ~1e-16) at 1e-10 of the magnitude instead."""
    assert ours.dtype == eager.dtype, f"{what}: dtype {ours.dtype} != {eager.dtype}"
    assert ours.shape == truth.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(truth.shape)}"
    if ours.dtype == torch.float64:
        err, mag = max_err(ours, truth), max(1.0, truth.abs().max().item())
        assert err <= 1e-10 * mag, f"{what}: float64 error {err:.2e} > 1e-10 x {mag:.1e}"
    elif floor > 0.0 and max_err(ours, truth) <= floor:
        return
    else:
        assert_rule(ours, eager, truth, what)


def _sum_floor(terms64: torch.Tensor, dtype) -> torch.Tensor:
    """Per-plane error floor (N, C) of a per-plane sum of ``terms64``, from the acc dtype's eps and the root-sum-square
    of the terms.

    A float32 sum of L terms in a tree or blocked order (the GPU's tl.sum, eager's CPU cascade) errs by about
    eps x sqrt(sum terms^2) times a small factor, and the two land anywhere in 0.1-1x of it, so on a few planes
    "2x eager" alone is a coin toss: the floor is 4x that. The interpreter's tl.sum over axis 0 of a 2-D tile is
    numpy's row-by-row (sequential) sum, whose error grows like eps x sqrt(L) x sqrt(sum terms^2): there the
    floor is that. A dropped or doubled chunk errs by ~sqrt(chunk) x |term|, far above either.
    """
    dims = tuple(range(2, terms64.dim()))
    growth = max(4.0, math.sqrt(math.prod(terms64.shape[2:]))) if INTERPRET else 4.0
    return growth * torch.finfo(acc_dtype(dtype)).eps * terms64.square().sum(dims).sqrt()


def _expect_layout(out, x):
    ref = empty_like_layout(canonical(x))
    assert out.shape == ref.shape and out.stride() == ref.stride(), f"layout {out.stride()} != {ref.stride()}"


def _run_case(shape, dtype, layout, offset=0.0, grad_layout=None):
    N, C = shape[:2]
    dims = tuple(range(2, len(shape)))
    x = _rand(shape, dtype, layout, offset)
    scale, shift = _stat(shape, dtype, positive=True), _stat(shape, dtype)

    # forward: eager is F.instance_norm on the (1, N*C) view, which takes per-(n, c) affine parameters
    # (it refuses 1-element planes; there the reference formula run in the input dtype stands in).
    y, mean, rstd = K.forward(x, scale, shift, EPS)
    _expect_layout(y, x)
    truth = reference_fwd(*_d(x, scale, shift), EPS)
    if math.prod(shape[2:]) > 1:
        flat = x.reshape(1, N * C, *shape[2:])
        y_eager = F.instance_norm(flat, weight=scale.flatten(), bias=shift.flatten(), eps=EPS).reshape(shape)
    else:
        y_eager = reference_fwd(x, scale, shift, EPS)[0]
    eager = reference_fwd(x, scale, shift, EPS)  # the statistics as eager PyTorch computes them in x's dtype
    _check(y, y_eager, truth[0], "y")
    # mean and rstd come from sums of the deviations d = x - mean and of d^2 (floors: see _sum_floor);
    # rstd = (M2/L + eps)^-1/2 carries half of M2's relative error.
    d = x.double() - truth[1][(...,) + (None,) * len(dims)]
    m2 = d.square().sum(dims)
    _check(mean, eager[1], truth[1], "mean", (_sum_floor(d, dtype) / d[0, 0].numel()).max().item())
    _check(rstd, eager[2], truth[2], "rstd", (0.5 * truth[2] * _sum_floor(d.square(), dtype) / m2).max().item())

    # backward: eager is the reference formula run by PyTorch in the input dtype (float32 accumulation).
    gy = _rand(shape, dtype, grad_layout or layout)
    gx, gscale, gshift = K.backward(gy, x, mean, rstd, scale)
    _expect_layout(gx, x)
    ins64 = _d(gy, x, mean, rstd, scale)
    truth = reference_bwd(*ins64)
    eager = reference_bwd(gy, x, mean, rstd, scale)
    xhat64 = (ins64[1] - ins64[2][(...,) + (None,) * len(dims)]) * ins64[3][(...,) + (None,) * len(dims)]
    _check(gx, eager[0], truth[0], "gx")
    _check(gscale, eager[1], truth[1], "gscale", _sum_floor(ins64[0] * xhat64, dtype).max().item())
    _check(gshift, eager[2], truth[2], "gshift", _sum_floor(ins64[0], dtype).max().item())

    # double backward
    ggx = _rand(shape, dtype, grad_layout or layout)
    ggscale, ggshift = _stat(shape, dtype), _stat(shape, dtype)
    gx2, ggy, gscale2 = K.double_backward(ggx, ggscale, ggshift, gy, x, mean, rstd, scale)
    _expect_layout(gx2, x)
    _expect_layout(ggy, x)
    truth = reference_dbwd(*_d(ggx, ggscale, ggshift), *ins64)
    eager = reference_dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale)
    # gscale2 = r * sum(gy * P(ggx)): its summands, for the floor.
    v = ggx.double()
    p_v = v - v.mean(dims, keepdim=True) - xhat64 * (v * xhat64).mean(dims, keepdim=True)
    _check(gx2, eager[0], truth[0], "gx2")
    _check(ggy, eager[1], truth[1], "ggy")
    r = ins64[3][(...,) + (None,) * len(dims)]
    _check(gscale2, eager[2], truth[2], "gscale2", _sum_floor(r * ins64[0] * p_v, dtype).max().item())


@pytest.fixture
def knobs(monkeypatch):
    def apply(values):
        for name, value in values.items():
            monkeypatch.setattr(K, name, value)

    return apply


CASES = [
    # (shape, dtype, layout, offset, knobs)
    ((1, 1, 1, 1), torch.float32, "contiguous", 0.0, DEFAULT),  # L = 1: y = shift exactly
    ((1, 1, 5, 3), torch.float32, "contiguous", 0.0, DEFAULT),  # N = C = 1
    ((2, 3, 7, 13), torch.float32, "contiguous", 0.0, DEFAULT),
    ((2, 3, 7, 13), torch.float32, "channels_last", 1e4, DEFAULT),
    ((2, 3, 7, 13), torch.float32, "strided", 0.0, DEFAULT),
    ((3, 5, 17), torch.float32, "channels_last", 0.0, DEFAULT),  # 3-D (N, C, L)
    ((3, 5, 17), torch.float16, "contiguous", 0.0, DEFAULT),
    ((2, 3, 3, 5, 7), torch.float64, "channels_last", 1e4, DEFAULT),  # 5-D
    ((2, 3, 3, 5, 7), torch.bfloat16, "contiguous", 0.0, DEFAULT),
    ((2, 20, 1, 1), torch.float16, "channels_last", 10.0, DEFAULT),  # 1x1 planes, packed many to a program
    ((1, 2, 90, 91), torch.float32, "contiguous", 1e4, DEFAULT),  # the GPU plan: single fwd, split bwd/dbwd
    ((1, 2, 90, 91), torch.float32, "contiguous", 1e4, LOOP),
    ((2, 3, 21, 23), torch.float32, "channels_last", 1e4, LOOP),
    ((1, 2, 45, 91), torch.float32, "contiguous", 0.0, SPLIT),
    ((1, 3, 21, 23), torch.bfloat16, "channels_last", 0.0, SPLIT),
    ((1, 2, 33, 35), torch.float64, "contiguous", 1e4, LOOP),
    ((1, 3, 21, 23), torch.float64, "channels_last", 1e4, SPLIT),
]


def _case_id(case):
    shape, dtype, layout, offset, plan = case
    name = {id(DEFAULT): "default", id(LOOP): "loop", id(SPLIT): "split"}[id(plan)]
    return f"{'x'.join(map(str, shape))}-{str(dtype)[6:]}-{layout}-off{offset:g}-{name}"


@pytest.mark.parametrize("case", range(len(CASES)), ids=[_case_id(c) for c in CASES])
def test_matches_reference(case, knobs):
    shape, dtype, layout, offset, plan = CASES[case]
    knobs(plan)
    torch.manual_seed(1000 + case)
    _run_case(shape, dtype, layout, offset)


def test_gradients_in_another_layout(knobs):
    """gy/ggx in a different layout from x are brought to x's layout; outputs follow x."""
    torch.manual_seed(1)
    _run_case((2, 3, 5, 6), torch.float32, "channels_last", grad_layout="contiguous")
    _run_case((2, 3, 5, 6), torch.float32, "contiguous", grad_layout="channels_last")


@pytest.mark.parametrize("plan", [DEFAULT, LOOP, SPLIT], ids=["default", "loop", "split"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_stays_in_its_plane(plan, layout, knobs):
    knobs(plan)
    torch.manual_seed(2)
    shape = (2, 2, 9, 11)
    x = _rand(shape, torch.float32, layout)
    x[1, 0, 4, 5] = math.nan
    scale, shift = _stat(shape, torch.float32, positive=True), _stat(shape, torch.float32)
    y, mean, rstd = K.forward(x, scale, shift, EPS)
    bad = torch.zeros(2, 2, dtype=torch.bool)
    bad[1, 0] = True
    assert y[1, 0].isnan().all() and mean[1, 0].isnan() and rstd[1, 0].isnan()
    assert not y[~bad].isnan().any() and not mean[~bad].isnan().any() and not rstd[~bad].isnan().any()
    ref = reference_fwd(*_d(x, scale, shift), EPS)
    assert max_err(y[~bad], ref[0][~bad]) < 1e-5

    # NaN in gy: only its plane's gradients are NaN.
    gy = _rand(shape, torch.float32, layout)
    gy[0, 1, 0, 0] = math.nan
    gx, gscale, gshift = K.backward(gy, x, mean, rstd, scale)
    bad_g = torch.zeros(2, 2, dtype=torch.bool)
    bad_g[0, 1] = True
    assert gx[0, 1].isnan().all() and gscale[0, 1].isnan() and gshift[0, 1].isnan()
    ok = ~(bad | bad_g)
    assert not gx[ok].isnan().any() and not gscale[ok].isnan().any()
    ref = reference_bwd(*_d(gy, x, mean, rstd, scale))
    assert max_err(gx[ok], ref[0][ok]) < 1e-5


def test_plans():
    """The plans the GPU will run for the benchmark shapes (no launch): strategy, tiles and warps."""
    def plan(shape, n_in=1, dtype=torch.float32, layout="contiguous"):
        return K._plan(_layout(torch.empty(shape, dtype=dtype), layout), n_in)

    p = plan((8, 64, 256, 256))  # 512 planes of 64K: one program per plane, looping
    assert not p.single and p.splits == 1 and p.block_c == 1 and p.block_l * p.block_c >= 2048
    p = plan((8, 512, 16, 16))  # 4096 planes of 256: whole planes, several per program
    assert p.single and p.block_l == 256 and p.block_c > 1 and p.splits == 1
    p = plan((8, 64, 256, 256), layout="channels_last")  # 16 groups of 32 channels: split L
    assert not p.single and p.splits > 1 and p.block_c == 32 and p.l_split % p.block_l == 0
    p = plan((1, 3, 1024, 1024), n_in=3)  # 3 huge planes: split L
    assert p.splits > 1 and (p.splits - 1) * p.l_split < 1024 * 1024 <= p.splits * p.l_split
