"""The CUDA C++ instance-norm kernels run on the CPU through a host emulation (emu.h), for CI machines without a
GPU: :func:`build` compiles ``instance_norm_emu.cpp`` (the real device code of csrc/instance_norm_cuda.cuh, with
fibers for CUDA threads) into a shared library once per source and compiler version, and :func:`cpu_kernels`
registers Python twins of csrc/instance_norm_cuda.cu's host wrappers (layouts, outputs; not its argument checks) as
the extension ops' CPU kernels, so the ordinary instance-norm tests drive the CUDA kernels through the public API,
autograd and the tolerance rule. Every tensor the kernels see is guarded (:func:`_guarded`).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import warnings

import torch

from fastgan.ops._layout import is_channels_last, layout_strides

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, "emu.h"), os.path.join(HERE, "instance_norm_emu.cpp"),
           os.path.join(HERE, "..", "..", "csrc", "instance_norm_cuda.cuh")]
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
# Emulated devices: (SM count, opt-in shared memory per block). "small" caches only part of a large plane in
# shared memory and splits channels-last samples into few chunks; "h100" is the lent GPU's geometry.
DEVICES = {"small": (2, 8 * 1024), "h100": (132, 227 * 1024)}


class BuildError(RuntimeError):
    """The emulation did not compile: a test failure (a header change broke the device code's host build)."""


class NoCompiler(BuildError):
    """No C++ compiler: the only reason the emulation tests skip."""


def build() -> ctypes.CDLL:
    """The emulation library, compiled with g++ into a per-user cache directory keyed by the hash of the sources,
    the compiler's version, torch's version and the command (a stale build is never reused)."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise NoCompiler("no C++ compiler (g++, or $CXX) on PATH")
    from torch.utils.cpp_extension import include_paths

    flags = ["-O1", "-std=c++20", "-shared", "-fPIC", "-pthread", "-ffp-contract=off",
             *[f"-I{p}" for p in include_paths()]]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = b"".join(open(p, "rb").read() for p in SOURCES) + "\0".join(
        [compiler, version, torch.__version__, *flags]).encode()
    root = os.path.join(tempfile.gettempdir(), f"fastgan-cuda-emu-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    out_dir = os.path.join(root, hashlib.sha256(key).hexdigest()[:16])
    lib = os.path.join(out_dir, "libinstance_norm_emu.so")
    if not os.path.exists(lib):
        os.makedirs(out_dir, exist_ok=True)
        tmp = f"{lib}.{os.getpid()}.tmp"
        cmd = [compiler, *flags, SOURCES[1], "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        os.replace(tmp, lib)  # atomic: parallel test workers may race to build the same file
    dll = ctypes.CDLL(lib)
    dll.fastgan_emu_instance_norm.restype = ctypes.c_int
    return dll


class Kernels:
    """Python twins of the CUDA host wrappers (canonical layout, outputs, like_x), calling the emulated kernels."""

    def __init__(self, dll: ctypes.CDLL, device: str = "small", force_scalar: bool = False, misalign: bool = False,
                 grid_cap: int = 0):
        """``force_scalar`` takes the unvectorised path by fiat; ``misalign`` by offsetting every tensor one
        element from its 16-byte alignment, as a sliced input would be (run()'s own alignment test decides);
        ``grid_cap`` > 0 launches the contiguous kernels with at most that many blocks, so each grid-strides over
        several planes (with shared memory reused from plane to plane)."""
        self.dll, self.force_scalar, self.misalign, self.grid_cap = dll, force_scalar, misalign, grid_cap
        self.sms, self.smem = DEVICES[device]

    def _run(self, op: int, x: torch.Tensor, ins, outs, planes, eps: float) -> None:
        """Launch the emulated op on guarded copies of every tensor (see :func:`_guarded`), then check the guards,
        check that no input changed, and copy the outputs back. ``planes``: (tensor, written) pairs."""
        cl = is_channels_last(x)
        n, c = x.shape[:2]
        length = math.prod(x.shape[2:])
        shift = 1 if self.misalign else 0
        g_ins = [_guarded(t, shift) for t in ins]
        g_outs = [_guarded(t, shift, nan=True) for t in outs]
        g_planes = [_guarded(t, shift, nan=w) for t, w in planes]
        ptrs = lambda gs: (ctypes.c_void_p * len(gs))(*[v.data_ptr() for _, v in gs])  # noqa: E731
        err = ctypes.create_string_buffer(512)
        rc = self.dll.fastgan_emu_instance_norm(
            op, DTYPE_CODES[x.dtype], int(cl), ctypes.c_int64(n), ctypes.c_int64(c), ctypes.c_int64(length),
            ptrs(g_ins), ptrs(g_outs), ptrs(g_planes), ctypes.c_double(eps), self.sms, self.smem,
            int(self.force_scalar), ctypes.c_int64(self.grid_cap), err, len(err))
        if rc != 0:
            raise RuntimeError(f"emulated CUDA instance norm: {err.value.decode()}")
        written = [(t, g) for t, g in zip(outs, g_outs)] + [(t, g) for (t, w), g in zip(planes, g_planes) if w]
        read = [(t, g) for t, g in zip(ins, g_ins)] + [(t, g) for (t, w), g in zip(planes, g_planes) if not w]
        for k, (buf, _) in enumerate(g_ins + g_outs + g_planes):
            _check_guards(buf, f"op {op}, tensor {k}")
        for k, (t, (_, v)) in enumerate(read):
            if not torch.equal(_bits(v), _bits(t)):
                raise RuntimeError(f"emulated CUDA instance norm op {op} wrote into input {k}")
        for t, (_, v) in written:
            t.copy_(v)

    @staticmethod
    def _canonical(x):
        return x if x.is_contiguous() or is_channels_last(x) else x.contiguous()

    @staticmethod
    def _like_x(t, x):
        t = t if t.dtype == x.dtype else t.to(x.dtype)
        return t.contiguous() if not is_channels_last(x) else torch.empty_strided(
            x.shape, x.stride(), dtype=x.dtype).copy_(t)

    @staticmethod
    def _empty(x):
        return torch.empty_strided(x.shape, layout_strides(x.shape, is_channels_last(x)), dtype=x.dtype)

    @staticmethod
    def _planes(x, like):
        return torch.empty(x.shape[:2], dtype=like.dtype)

    def fwd(self, x_in, scale, shift, eps):
        x = self._canonical(x_in)
        y = self._empty(x)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        mean = torch.empty(x.shape[:2], dtype=acc)
        rstd = torch.empty_like(mean)
        self._run(0, x, [x], [y], [(scale.contiguous(), False), (shift.contiguous(), False), (mean, True),
                                   (rstd, True)], eps)
        return y, mean, rstd

    def bwd(self, gy_in, x_in, mean, rstd, scale, eps):
        x = self._canonical(x_in)
        gy = self._like_x(gy_in, x)
        gx = self._empty(x)
        gscale, gshift = torch.empty_like(mean), torch.empty_like(mean)
        self._run(1, x, [x, gy], [gx], [(mean.contiguous(), False), (rstd.contiguous(), False),
                                        (scale.contiguous(), False), (gscale, True), (gshift, True)], eps)
        return gx, gscale, gshift

    def dbwd(self, ggx_in, ggscale, ggshift, gy_in, x_in, mean, rstd, scale, eps):
        x = self._canonical(x_in)
        gy, ggx = self._like_x(gy_in, x), self._like_x(ggx_in, x)
        gx2, ggy = self._empty(x), self._empty(x)
        gscale2 = torch.empty_like(mean)
        planes = [(t.contiguous(), False) for t in (mean, rstd, scale, ggscale, ggshift)] + [(gscale2, True)]
        self._run(2, x, [x, gy, ggx], [gx2, ggy], planes, eps)
        return gx2, (ggy if gy_in.dtype == x.dtype else ggy.to(gy_in.dtype)), gscale2


GUARD_BYTES = 1024  # on each side of every tensor the emulated kernels see; a multiple of their 16-byte vectors


def _guarded(t: torch.Tensor, shift: int = 0, nan: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(buffer, view)``: a copy of the dense tensor ``t`` with ``t``'s strides in the middle of a buffer whose
    GUARD_BYTES on each side are all-ones bytes (NaN in every float dtype). A kernel reading past a tensor reads NaN
    (the tests then fail on the result); one writing past it changes a guard, which :func:`_check_guards` reports.
    A "memcheck" for global memory, as compute-sanitizer's is on the GPU. ``shift`` elements more on the left
    misalign the view; ``nan`` (outputs) fills the view with NaN instead of ``t``, so an element the kernel never
    writes shows as NaN."""
    pad = GUARD_BYTES // t.element_size()
    buf = torch.empty(t.numel() + 2 * pad + shift, dtype=t.dtype)
    buf.view(torch.uint8).fill_(0xFF)
    view = buf.as_strided(t.shape, t.stride(), pad + shift)
    if not nan:
        view.copy_(t)
    return buf, view


def _check_guards(buf: torch.Tensor, what: str) -> None:
    raw = buf.view(torch.uint8)  # the left guard is GUARD_BYTES long (a misaligning shift only lengthens it)
    if not (bool((raw[:GUARD_BYTES] == 0xFF).all()) and bool((raw[-GUARD_BYTES:] == 0xFF).all())):
        raise RuntimeError(f"emulated CUDA kernel wrote outside its tensor ({what})")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bits as integers (NaN == NaN), for an exact comparison."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@contextlib.contextmanager
def cpu_kernels(kernels: Kernels):
    """The extension's instance_norm_fwd/bwd/dbwd CPU kernels replaced by the emulated CUDA kernels, inside."""
    lib = torch.library.Library("fastgan", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        lib.impl("instance_norm_fwd", kernels.fwd, "CPU")
        lib.impl("instance_norm_bwd", kernels.bwd, "CPU")
        lib.impl("instance_norm_dbwd", kernels.dbwd, "CPU")
    try:
        yield kernels
    finally:
        lib._destroy()
