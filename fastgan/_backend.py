"""Which implementation of an op runs, and what is available.

Four implementations exist per op:

- ``"ref"``: plain PyTorch, differentiable by autograd. Always available; the fallback.
- ``"cpp"``: the CPU C++ kernels of the compiled extension ``fastgan._C``.
- ``"cuda"``: the CUDA C++ kernels of ``fastgan._C`` (built when the installed torch has CUDA and nvcc is found).
- ``"triton"``: Triton kernels (``fastgan.kernels``); on CUDA tensors, or on CPU tensors when the process runs
  with ``TRITON_INTERPRET=1`` (how CI tests them).

Automatic choice by device: CUDA tensors take cuda > triton > ref, CPU tensors take cpp > ref. ``impl=`` on an op,
or the :func:`use_impl` context manager, pins one; pinning one that cannot run on the input raises.
Importing never fails: a missing piece is reported once as a warning and by ``python -m fastgan info``.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import sys
import threading
import warnings

import torch

IMPLS = ("ref", "cpp", "cuda", "triton")

_forced_impl: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastgan_impl", default=None)
_warned: set[str] = set()
_state: dict[str, object] = {}


def warn_once(key: str, message: str) -> None:
    """Issue ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"fastgan: {message}", RuntimeWarning, stacklevel=3)


# The ABI_VERSION that fastgan._C must report (csrc/fastgan.cpp says when it changes). An extension built from older
# source (an editable install not rebuilt after a pull) is refused as a whole: its kernels may read new inputs the old
# way, a silent wrong result, so the ops take the reference until it is rebuilt.
EXTENSION_ABI = 1


def stale_extension_error(module) -> str | None:
    """Why ``module`` (the imported ``fastgan._C``) does not match this source, or None when it does."""
    abi = getattr(module, "ABI_VERSION", None)
    if abi == EXTENSION_ABI:
        return None
    built = "an unversioned build" if abi is None else f"ABI {abi}"
    return (f"fastgan._C does not match this source ({built}; it needs ABI {EXTENSION_ABI}): rebuild it with "
            "`pip install --no-build-isolation .` (`-e .` for an editable install, or `python setup.py build_ext "
            "--inplace` in a checkout)")


def _load_extension() -> bool:
    if "ext" not in _state:
        try:
            stale = stale_extension_error(importlib.import_module("fastgan._C"))
            _state["ext"] = stale is None
            if stale is not None:
                _state["ext_error"] = stale
                warn_once("ext", f"{stale}. Until then the ops use the plain-PyTorch reference.")
        except Exception as exc:  # ImportError, or an undefined symbol from a torch it was not built against
            _state["ext"] = False
            _state["ext_error"] = f"{type(exc).__name__}: {exc}"
            pkg = os.path.dirname(os.path.abspath(__file__))
            if os.path.exists(os.path.join(os.path.dirname(pkg), "setup.py")) and isinstance(exc, ImportError):
                # The usual cause: `python -m fastgan` or `python -c "import fastgan"` run from a source checkout
                # imports its fastgan/ folder (no _C in it after a plain `pip install .`), not the installed one.
                _state["ext_error"] += (
                    f" [this fastgan was imported from the source checkout {pkg}: run from another directory, use "
                    "the `fastgan` command, or install with `pip install --no-build-isolation -e .`]"
                )
            warn_once(
                "ext",
                f"the compiled extension fastgan._C could not be loaded ({_state['ext_error']}); "
                "CPU ops use the plain-PyTorch reference. Reinstall with "
                "`pip install --no-build-isolation .` against the torch you run.",
            )
    return bool(_state["ext"])


def extension_error() -> str | None:
    """Why ``fastgan._C`` did not load, or None when it did."""
    _load_extension()
    return _state.get("ext_error")  # type: ignore[return-value]


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """Whether ``triton`` imports (it need not have a GPU to import)."""
    if "triton" not in _state:
        try:
            importlib.import_module("triton")
            _state["triton"] = True
        except Exception as exc:
            _state["triton"] = False
            _state["triton_error"] = f"{type(exc).__name__}: {exc}"
    return bool(_state["triton"])


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether ``fastgan::<op_name>`` has a kernel for ``dispatch_key`` ("CPU" or "CUDA") in ``fastgan._C``. A CUDA
    kernel registered from Python by :func:`route_cuda_to_triton` is not one: that op has no CUDA C++ kernel."""
    if not _load_extension():
        return False
    if dispatch_key == "CUDA" and op_name in _triton_routed:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{op_name}", dispatch_key)
    except RuntimeError:
        return False


# Ops of the extension whose CUDA dispatch key runs a Triton launcher registered from Python (route_cuda_to_triton),
# and the torch.library handle that keeps those registrations alive.
_triton_routed: set[str] = set()
_triton_route_lib: list = []
_triton_route_lock = threading.Lock()


def route_cuda_to_triton(launchers: dict) -> bool:
    """Register each ``{op name: Triton launcher}`` as the CUDA kernel of the extension's op ``fastgan::<op name>``,
    so a CUDA call of the compiled op runs its autograd formula in C++ (the extension's Autograd kernels) and only
    the launch in Python. The custom ops ``fastgan::<op name>_triton`` run the same launchers behind Python autograd
    (``torch.library.register_autograd``), which cost hundreds of µs per forward+backward on a GPU host.

    Called at import (the op families' ``register_compiled``), never from inside a torch.compile trace; a lock
    keeps two threads from registering one op twice. Returns whether the ops are routed: not when the extension
    lacks one of them, when one already has a CUDA C++ kernel, or when ``FASTGAN_TRITON_ROUTE=custom_op`` (read at
    import) asks for the custom ops (a way back, and a way to compare).
    """
    names = tuple(launchers)
    route = os.environ.get("FASTGAN_TRITON_ROUTE", "dispatcher")
    if route not in ("dispatcher", "custom_op"):
        warn_once("triton-route", f"FASTGAN_TRITON_ROUTE={route!r} is neither 'dispatcher' nor 'custom_op'; "
                  "using 'dispatcher'")
    if route == "custom_op":
        return False
    with _triton_route_lock:
        if all(n in _triton_routed for n in names):
            return True
        if not all(has_kernel(n, "CPU") for n in names) or any(has_kernel(n, "CUDA") for n in names):
            return False
        if not _triton_route_lib:
            _triton_route_lib.append(torch.library.Library("fastgan", "IMPL"))
        for name, fn in launchers.items():
            if name not in _triton_routed:
                _triton_route_lib[0].impl(name, fn, "CUDA")
                _triton_routed.add(name)
        return True


_available_cache: dict[tuple[str, str, str, bool], bool] = {}


def available(op_name: str, impl: str, device_type: str) -> bool:
    """Whether ``impl`` of the kernel op ``op_name`` can run on tensors of ``device_type`` (memoised)."""
    key = (op_name, impl, device_type, triton_interpret())
    if key not in _available_cache:
        _available_cache[key] = _probe(op_name, impl, device_type)
    return _available_cache[key]


def _probe(op_name: str, impl: str, device_type: str) -> bool:
    if impl == "ref":
        return True
    if impl == "cpp":
        return device_type == "cpu" and has_kernel(op_name, "CPU")
    if impl == "cuda":
        return device_type == "cuda" and has_kernel(op_name, "CUDA")
    if impl == "triton":
        if not triton_available():
            return False
        return device_type == "cuda" or (device_type == "cpu" and triton_interpret())
    raise ValueError(f"fastgan: unknown impl {impl!r}; expected one of {IMPLS}")


@torch.compiler.assume_constant_result
def pinned_impl() -> str | None:
    """The impl :func:`use_impl` pinned around this call, or None. A function (not the ContextVar itself) so
    torch.compile(fullgraph=True) reads it at trace time as :func:`select` does: Dynamo cannot trace
    ``ContextVar.get``."""
    return _forced_impl.get()


@torch.compiler.assume_constant_result
def select(op_name: str, device: torch.device, impl: str | None = None) -> str:
    """The implementation to run for ``op_name`` on ``device``: ``impl``, else the pinned one, else automatic.

    Under torch.compile the choice is made once at trace time and baked into the graph (changing
    :func:`use_impl` later does not retrace a compiled function).
    """
    wanted = impl if impl is not None else _forced_impl.get()
    dev = device.type
    if wanted is None and torch._C._are_functorch_transforms_active():
        # Inside torch.func.grad / vjp / vmap: the kernels' autograd (C++ Functions, and the Python formulas
        # torch.library attaches to the Triton ops) does not support functorch's transforms, the reference does.
        return "ref"
    if wanted is None:
        # The automatic choice depends only on (op, device type): memoised, since this runs on every op call and
        # the probe path (TRITON_INTERPRET lookup, availability keys) cost ~3 µs per call on a 2-core CPU.
        choice = _auto_cache.get((op_name, dev))
        if choice is None:
            choice = _auto_cache[(op_name, dev)] = _auto_select(op_name, dev)
        return choice
    if wanted not in IMPLS:
        raise ValueError(f"fastgan: impl must be one of {IMPLS}, got {wanted!r}")
    if not available(op_name, wanted, dev):
        why = extension_error() if wanted in ("cpp", "cuda") else None
        raise RuntimeError(
            f"fastgan: impl={wanted!r} of {op_name} cannot run on a {dev} tensor here "
            f"(live on {dev}: {live_impls(op_name, dev)})" + (f"; the compiled extension is not in use: {why}"
                                                              if why else "")
        )
    return wanted


# (op_name, device type) -> the automatic choice. It does not depend on TRITON_INTERPRET: on CPU only "cpp" is
# considered, and on CUDA Triton's availability does not depend on it.
_auto_cache: dict[tuple[str, str], str] = {}


def _auto_select(op_name: str, dev: str) -> str:
    order = ("cuda", "triton") if dev == "cuda" else ("cpp",)
    for name in order:
        if available(op_name, name, dev):
            return name
    if dev == "cuda":
        warn_once(f"{op_name}:cuda-ref", f"no compiled or Triton kernel for {op_name} on CUDA; using the reference")
    return "ref"


def live_impls(op_name: str, device_type: str) -> list[str]:
    """Every implementation of ``op_name`` that can run on ``device_type`` here, fastest first."""
    order = ("cuda", "triton", "ref") if device_type == "cuda" else ("cpp", "triton", "ref")
    return [name for name in order if available(op_name, name, device_type)]


@contextlib.contextmanager
def use_impl(impl: str | None):
    """Pin every fastgan op called inside the block to ``impl`` ("ref", "cpp", "cuda", "triton"; None = automatic).

    Example:
        >>> with fastgan.use_impl("ref"):
        ...     y = fastgan.ops.instance_norm(x)
    """
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"fastgan: impl must be one of {IMPLS} or None, got {impl!r}")
    token = _forced_impl.set(impl)
    try:
        yield
    finally:
        _forced_impl.reset(token)


def import_kernels(name: str):
    """``fastgan.kernels.<name>``; in a source checkout (not installed) it is loaded from the top-level ``kernels/``."""
    try:
        return importlib.import_module(f"fastgan.kernels.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastgan.kernels", f"fastgan.kernels.{name}"):
            raise
        src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
        if not os.path.isfile(os.path.join(src, "__init__.py")):
            raise
        spec = importlib.util.spec_from_file_location(
            "fastgan.kernels", os.path.join(src, "__init__.py"), submodule_search_locations=[src]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["fastgan.kernels"] = package
        spec.loader.exec_module(package)
        return importlib.import_module(f"fastgan.kernels.{name}")


def cpu_kernel_isa() -> str | None:
    """Which clones of the C++ CPU kernels' inner loops run here: "baseline", "avx2" or "avx512" (None without
    ``fastgan._C``). Picked once per process from the CPU, capped by ATEN_CPU_CAPABILITY as ATen's own kernels are."""
    if not _load_extension():
        return None
    return getattr(importlib.import_module("fastgan._C"), "CPU_ISA", None)


def built_cuda_archs() -> list[str]:
    """The CUDA architectures ``fastgan._C`` was compiled for (empty without CUDA kernels)."""
    if not _load_extension():
        return []
    mod = importlib.import_module("fastgan._C")
    return list(getattr(mod, "CUDA_ARCHS", "").split()) if getattr(mod, "CUDA_ARCHS", "") else []
