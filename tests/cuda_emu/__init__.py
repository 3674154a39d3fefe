"""The CUDA C++ instance-norm kernels run on the CPU through a host emulation (emu.h), for CI machines without a
GPU: :func:`build` compiles ``instance_norm_emu.cpp`` (the real device code of csrc/instance_norm_cuda.cuh, with
std::threads for CUDA threads) into a shared library once per source version, and :func:`cpu_kernels` registers
Python twins of csrc/instance_norm_cuda.cu's host wrappers as the extension ops' CPU kernels, so the ordinary
instance-norm tests drive the CUDA kernels through the public API, autograd and the tolerance rule.
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
    pass


def build() -> ctypes.CDLL:
    """The emulation library, compiled with g++ into a cache directory keyed by the sources' hash."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise BuildError("no C++ compiler (g++) on PATH")
    digest = hashlib.sha256(b"".join(open(p, "rb").read() for p in SOURCES)).hexdigest()[:16]
    out_dir = os.path.join(tempfile.gettempdir(), f"fastgan-cuda-emu-{digest}")
    lib = os.path.join(out_dir, "libinstance_norm_emu.so")
    if not os.path.exists(lib):
        from torch.utils.cpp_extension import include_paths

        os.makedirs(out_dir, exist_ok=True)
        tmp = f"{lib}.{os.getpid()}.tmp"
        cmd = [compiler, "-O1", "-std=c++20", "-shared", "-fPIC", "-pthread", "-ffp-contract=off",
               *[f"-I{p}" for p in include_paths()], SOURCES[1], "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        os.replace(tmp, lib)  # atomic: parallel test workers may race to build the same file
    dll = ctypes.CDLL(lib)
    dll.fastgan_emu_instance_norm.restype = ctypes.c_int
    return dll


class Kernels:
    """Python twins of the CUDA host wrappers (canonical layout, outputs, like_x), calling the emulated kernels."""

    def __init__(self, dll: ctypes.CDLL, device: str = "small", force_scalar: bool = False):
        self.dll, self.force_scalar = dll, force_scalar
        self.sms, self.smem = DEVICES[device]

    def _run(self, op: int, x: torch.Tensor, ins, outs, planes, eps: float) -> None:
        cl = is_channels_last(x)
        n, c = x.shape[:2]
        length = math.prod(x.shape[2:])
        ptrs = lambda ts: (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])  # noqa: E731
        err = ctypes.create_string_buffer(512)
        rc = self.dll.fastgan_emu_instance_norm(
            op, DTYPE_CODES[x.dtype], int(cl), ctypes.c_int64(n), ctypes.c_int64(c), ctypes.c_int64(length),
            ptrs(ins), ptrs(outs), ptrs(planes), ctypes.c_double(eps), self.sms, self.smem, int(self.force_scalar),
            err, len(err))
        if rc != 0:
            raise RuntimeError(f"emulated CUDA instance norm: {err.value.decode()}")

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
        self._run(0, x, [x], [y], [scale.contiguous(), shift.contiguous(), mean, rstd], eps)
        return y, mean, rstd

    def bwd(self, gy_in, x_in, mean, rstd, scale, eps):
        x = self._canonical(x_in)
        gy = self._like_x(gy_in, x)
        gx = self._empty(x)
        gscale, gshift = torch.empty_like(mean), torch.empty_like(mean)
        self._run(1, x, [x, gy], [gx], [mean.contiguous(), rstd.contiguous(), scale.contiguous(), gscale, gshift],
                  eps)
        return gx, gscale, gshift

    def dbwd(self, ggx_in, ggscale, ggshift, gy_in, x_in, mean, rstd, scale, eps):
        x = self._canonical(x_in)
        gy, ggx = self._like_x(gy_in, x), self._like_x(ggx_in, x)
        gx2, ggy = self._empty(x), self._empty(x)
        gscale2 = torch.empty_like(mean)
        planes = [t.contiguous() for t in (mean, rstd, scale, ggscale, ggshift)] + [gscale2]
        self._run(2, x, [x, gy, ggx], [gx2, ggy], planes, eps)
        return gx2, (ggy if gy_in.dtype == x.dtype else ggy.to(gy_in.dtype)), gscale2


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
