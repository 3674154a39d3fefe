"""``python -m fastgan info``: versions, and which implementation of each op is live on each device."""
from __future__ import annotations

import os
import platform

import torch

from . import __version__, _backend

# Kernel op name -> user-facing op it serves.
OPS = {"instance_norm_fwd": "instance_norm", "bias_act_fwd": "bias_act", "grad_penalty_fwd": "grad_penalty",
       "group_norm_fwd": "group_norm", "diffusion_step": "diffusion step"}


def report() -> str:
    lines = [
        f"fastgan {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, CUDA (torch) {torch.version.cuda}",
        f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}",
    ]
    if _backend.triton_available():
        import triton

        lines.append(f"triton {triton.__version__}" + (" (TRITON_INTERPRET=1)" if _backend.triton_interpret() else ""))
    else:
        lines.append("triton: not installed (GPU ops fall back to CUDA C++ or the reference)")
    err = _backend.extension_error()
    lines.append("compiled extension fastgan._C: " + ("loaded" if err is None else f"NOT loaded ({err})"))
    isa = _backend.cpu_kernel_isa()
    if isa is not None:
        cap = os.environ.get("ATEN_CPU_CAPABILITY")
        lines.append(f"CPU kernels: {isa} code" + (f" (ATEN_CPU_CAPABILITY={cap})" if cap else ""))
    archs = _backend.built_cuda_archs()
    lines.append(f"CUDA archs built: {' '.join(archs) if archs else 'none (CPU-only build)'}")
    lines.append("live implementations (first = automatic choice):")
    for kernel_op, name in OPS.items():
        cpu = ", ".join(_backend.live_impls(kernel_op, "cpu"))
        cuda = ", ".join(_backend.live_impls(kernel_op, "cuda")) if torch.cuda.is_available() else "no CUDA device"
        lines.append(f"  {name:<16} cpu: {cpu:<22} cuda: {cuda}")
    routed = [name for kernel_op, name in OPS.items() if kernel_op in _backend._triton_routed]
    if routed:
        lines.append("Triton on CUDA through the extension's ops (no custom-op wrapper): " + ", ".join(routed))
    elif err is None:
        lines.append("Triton on CUDA through the fastgan::*_triton custom ops (FASTGAN_TRITON_ROUTE="
                     f"{os.environ.get('FASTGAN_TRITON_ROUTE', 'dispatcher')})")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    del parser  # no options


def run(args) -> int:
    del args
    print(report())
    return 0
