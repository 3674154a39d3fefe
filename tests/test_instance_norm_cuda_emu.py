"""The CUDA C++ instance-norm kernels (instance norm and AdaIN on CUDA) on the CPU, through the host emulation in tests/cuda_emu: CI has no GPU, so
this is where their indexing, reductions, launch geometry and numerics are checked on every commit. The emulated
kernels stand in for the extension's CPU kernels, and the ordinary instance-norm tests run over them (public API,
autograd to second order, the tolerance rule against eager PyTorch). The GPU itself still decides timing, races
and the host wrappers in csrc/instance_norm_cuda.cu (tests/test_instance_norm.py with device=cuda)."""
import pytest
import torch

import test_adain as tadain
import test_instance_norm as tin
from fastgan import _backend
from tolerance import grad_floor_ulps

import cuda_emu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def dll():
    if _backend.extension_error() is not None:
        pytest.skip(f"needs the compiled extension: {_backend.extension_error()}")
    try:
        return cuda_emu.build()
    except cuda_emu.BuildError as exc:
        pytest.skip(str(exc))


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


def test_scalar_path_equals_vector_path(dll):
    """Vectorised and scalar loads must give the same numbers up to summation order: the same shapes twice."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 12) * 2 + 0.5
    scale, shift = torch.randn(2, 8), torch.randn(2, 8)
    outs = []
    for force in (False, True):
        k = cuda_emu.Kernels(dll, "small", force_scalar=force)
        for xl in (x, x.contiguous(memory_format=torch.channels_last)):
            outs.append(k.fwd(xl, scale, shift, 1e-5))
    for a, b in zip(outs[:2], outs[2:]):
        for ta, tb in zip(a, b):
            torch.testing.assert_close(ta, tb, rtol=1e-5, atol=1e-5)


def test_gradcheck_and_gradgradcheck_float64(emulated):
    for shape, layout in tin.GRADCHECK_SHAPES:
        tin.test_gradcheck_and_gradgradcheck_float64("cpu", "cpp", shape, layout)
