"""The CUDA C++ instance-norm kernels (instance norm and AdaIN on CUDA) on the CPU, through the host emulation in
tests/cuda_emu: CI has no GPU, so this is where their indexing, reductions, launch geometry, memory bounds and
numerics are checked on every commit. The emulated kernels stand in for the extension's CPU kernels, and the
ordinary instance-norm tests run over them (public API, autograd to second order, the tolerance rule against eager
PyTorch); a kernel-level test compares them with the CPU C++ kernels to 1 ulp. The GPU itself still decides
timing, races, FMA rounding and the host wrappers in csrc/instance_norm_cuda.cu (tests/test_instance_norm.py with
device=cuda)."""
import pytest
import torch

import test_adain as tadain
import test_instance_norm as tin
from fastgan import _backend
from tolerance import grad_floor_ulps

import cuda_emu
from conftest import to_layout

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def dll():
    if _backend.extension_error() is not None:
        pytest.skip(f"needs the compiled extension: {_backend.extension_error()}")
    try:
        return cuda_emu.build()
    except cuda_emu.NoCompiler as exc:
        pytest.skip(str(exc))
    except cuda_emu.BuildError as exc:  # the device code no longer builds: that is a failure, not a skip
        pytest.fail(str(exc))


def _emulate(dll, monkeypatch, device: str):
    """The emulated kernels as the extension's CPU kernels on an emulated device. Gradients get the floor
    tolerance.py documents for float32-computing GPU kernels checked against CPU eager (which sums in float64);
    forwards keep the plain rule."""
    for module in (tin, tadain):
        monkeypatch.setattr(module, "grad_floor_ulps", lambda dev, impl: grad_floor_ulps(dev, "cuda-emu"))
    return cuda_emu.cpu_kernels(cuda_emu.Kernels(dll, device))


@pytest.fixture
def emulated(dll, monkeypatch):
    """On the H100's geometry: the small test shapes take the same paths on any device."""
    with _emulate(dll, monkeypatch, "h100") as k:
        yield k


@pytest.fixture(params=["small", "h100"])
def emulated_both(request, dll, monkeypatch):
    """A small device (8 KiB of shared memory: large planes cached in part; 2 SMs: few channels-last chunks) and
    the H100's geometry."""
    with _emulate(dll, monkeypatch, request.param) as k:
        yield k


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_forward(emulated, dtype):
    tin.test_forward_matches_reference("cpu", "cpp", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward(emulated, dtype):
    tin.test_backward_matches_reference("cpu", "cpp", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_double_backward(emulated, dtype):
    tin.test_double_backward_matches_reference("cpu", "cpp", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plane_strategies(emulated_both, dtype):
    """Warp- and block-per-plane, partly cached planes, scalar and vector paths, channels-last chunking."""
    tin.check_plane_strategies("cpu", "cpp", dtype, grad_floor_ulps("cpu", "cuda-emu"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adain(emulated, dtype):
    """AdaIN's CUDA path is these kernels with per-sample scale and shift."""
    tadain.test_forward_matches_reference("cpu", "cpp", dtype)
    tadain.test_backward_matches_reference("cpu", "cpp", dtype)
    if dtype != torch.float16:
        tadain.test_double_backward_matches_reference("cpu", "cpp", dtype)


@pytest.mark.parametrize("grid_cap", [1, 3])
def test_grid_stride_over_planes(dll, grid_cap):
    """The contiguous kernels loop over planes when the grid is smaller than the plane count (a tensor with more
    planes than the grid has blocks): one and three blocks give the uncapped launch's outputs bit for bit, for the
    warp-per-plane and the block-per-plane (partly cached, on the small device) kernels."""
    torch.manual_seed(2)
    for shape in [(3, 7, 9, 11), (2, 3, 48, 40)]:
        x = torch.randn(shape) * 2 + 0.5
        gy, ggx = torch.randn(shape), torch.randn(shape)
        scale, shift, ggscale, ggshift = (torch.randn(shape[:2]) for _ in range(4))
        runs = []
        for cap in (0, grid_cap):
            k = cuda_emu.Kernels(dll, "small", grid_cap=cap)
            y, mean, rstd = k.fwd(x, scale, shift, 1e-5)
            runs.append((y, mean, rstd) + k.bwd(gy, x, mean, rstd, scale, 1e-5)
                        + k.dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, 1e-5))
        for a, b in zip(*runs):
            assert torch.equal(a, b), shape


@pytest.mark.parametrize("how", ["force_scalar", "misalign"])
def test_scalar_path_equals_vector_path(dll, how):
    """Vectorised and scalar loads give the same numbers up to summation order; the scalar path taken by fiat, and
    by run()'s own alignment test on tensors one element off their 16-byte alignment."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 12) * 2 + 0.5
    scale, shift = torch.randn(2, 8), torch.randn(2, 8)
    outs = []
    for scalar in (False, True):
        k = cuda_emu.Kernels(dll, "small", **({how: True} if scalar else {}))
        for xl in (x, x.contiguous(memory_format=torch.channels_last)):
            outs.append(k.fwd(xl, scale, shift, 1e-5))
    for a, b in zip(outs[:2], outs[2:]):
        for ta, tb in zip(a, b):
            torch.testing.assert_close(ta, tb, rtol=1e-5, atol=1e-5)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in units of the dtype's epsilon times max(1, max|b|)."""
    scale = max(1.0, b.double().abs().max().item())
    return ((a.double() - b.double()).abs().max() / (torch.finfo(a.dtype).eps * scale)).item()


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradient_sums_match_the_cpu_kernels(dll, dtype, layout):
    """Kernel level, same inputs (x, gy, ggx and the forward's mean/rstd): the backward and double backward give
    the CPU C++ kernels' outputs to 1 ulp (both sum in float64), and the channels-last forward's statistics too.
    Float sums (before abb9f94) were off by several ulps here, which the tolerance rule's floor would not show.
    float64 (both in double, summed in different orders, c cancelling) gets 1000 ulps: 2e-13 relative."""
    torch.manual_seed(1)
    bound = 1000.0 if dtype == torch.float64 else 1.0
    cpu_ops = torch.ops.fastgan
    for shape in [(2, 3, 7, 13), (2, 3, 3, 5, 7), (2, 20, 9, 11), (1, 2, 65, 65), (2, 5, 33, 31)]:
        x = to_layout(torch.randn(shape, dtype=dtype) * 2 + 0.5, layout)
        gy, ggx = (to_layout(torch.randn(shape, dtype=dtype), layout) for _ in range(2))
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        scale, shift, ggscale, ggshift = (torch.randn(shape[:2], dtype=acc) for _ in range(4))
        for device in ("small", "h100"):
            emu = cuda_emu.Kernels(dll, device)
            _, mean, rstd = cpu_ops.instance_norm_fwd.default(x, scale, shift, 1e-5)
            if layout == "channels_last":
                got = emu.fwd(x, scale, shift, 1e-5)
                for g, w, what in zip(got[1:], (mean, rstd), ("mean", "rstd")):
                    assert _ulps(g, w) <= bound, f"{shape} {dtype} {device} fwd {what}: {_ulps(g, w):.1f} ulp"
            want = cpu_ops.instance_norm_bwd.default(gy, x, mean, rstd, scale, 1e-5)
            got = emu.bwd(gy, x, mean, rstd, scale, 1e-5)
            for g, w, what in zip(got, want, ("gx", "gscale", "gshift")):
                assert _ulps(g, w) <= bound, f"{shape} {dtype} {layout} {device} bwd {what}: {_ulps(g, w):.1f} ulp"
            want = cpu_ops.instance_norm_dbwd.default(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, 1e-5)
            got = emu.dbwd(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, 1e-5)
            for g, w, what in zip(got, want, ("gx2", "ggy", "gscale2")):
                assert _ulps(g, w) <= bound, f"{shape} {dtype} {layout} {device} dbwd {what}: {_ulps(g, w):.1f} ulp"


def test_gradcheck_and_gradgradcheck_float64(emulated):
    for shape, layout in tin.GRADCHECK_SHAPES:
        tin.test_gradcheck_and_gradgradcheck_float64("cpu", "cpp", shape, layout)
