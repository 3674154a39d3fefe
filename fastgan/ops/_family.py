"""What the op families share: one family's triple of registered ops (forward, backward, double backward) per
implementation, and the argument checks of the ops' Python front ends.

Each family (instance norm, bias_act) has a Triton triple defined in Python and a compiled triple from
``fastgan._C`` whose fakes and autograd are attached from Python on first use (at import when the extension
loaded), so ``torch.compile`` and ``opcheck`` see them. :class:`KernelFamily` holds that plumbing once.

The checks raise the same messages from every op (a user who passes a CUDA bias with a CPU x reads the same
sentence from bias_act, instance_norm or group_norm); each op keeps its own order of checks and shape rules.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable, Sequence

import torch

from .. import _backend

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(t, name: str) -> None:
    """A TypeError unless ``t`` is a tensor of one of :data:`FLOAT_DTYPES` (the main input of an op)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastgan: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastgan: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_optional_tensor(p, name: str) -> None:
    """A TypeError unless ``p`` (an optional argument: a bias, a scale, a map) is a tensor or None."""
    if p is not None and not isinstance(p, torch.Tensor):
        raise TypeError(f"fastgan: {name} must be a torch.Tensor or None, got {type(p).__name__}")


def check_device_and_dtype(p: torch.Tensor, name: str, x: torch.Tensor) -> None:
    """The checks after an op's own shape rule for a tensor argument that goes with x: on x's device, floating."""
    if p.device != x.device:
        raise ValueError(f"fastgan: {name} is on {p.device} but x is on {x.device}; move both to one device")
    if p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastgan: {name} must be a floating tensor, got {p.dtype}")


def check_finite(what: str, **values: float) -> None:
    """ValueError unless every value is finite. Under torch.compile the check waits for the op's own run-time check
    (the C++ op's TORCH_CHECK; the Triton op's Python body, which calls this outside the trace): with dynamic=True
    a float argument is a graph input, and reading it at trace time would fail (math.isfinite of a symbolic float)
    or specialise the graph on its value."""
    if torch.compiler.is_compiling():
        return
    if not all(math.isfinite(v) for v in values.values()):
        raise ValueError(f"fastgan: {what}, got " + ", ".join(f"{k}={v}" for k, v in values.items()))


def check_eps(eps) -> float:
    """``eps`` as a float; a ValueError when it is negative or NaN (``not eps >= 0`` is true for both)."""
    eps = float(eps)
    if not eps >= 0.0:
        raise ValueError(f"fastgan: eps must be >= 0, got {eps}")
    return eps


def register_formulas(formulas, native: frozenset = frozenset()) -> None:
    """``torch.library.register_autograd`` for each ``(op name, backward, setup_context)`` of ``formulas``, except
    the ops in ``native``: the extension registered the same formula in C++ for those (the "Autograd" key, e.g.
    csrc/bias_act_autograd.cpp), and a Python one would replace it."""
    for name, backward, setup in formulas:
        if name not in native:
            torch.library.register_autograd(name, backward, setup_context=setup)


class KernelFamily:
    """The ``fwd``/``bwd``/``dbwd`` callables of every implementation of one op family.

    Args:
        op_names: the three schema names in ``csrc/fastgan.cpp`` (``"instance_norm_fwd"``, ...).
        fakes: their fake (meta) implementations, in the same order.
        attach_autograd: ``(fwd, bwd, dbwd, names)`` registering the family's autograd formulas; for the compiled
            ops it is also passed ``native=`` (the op names whose formula the extension registered in C++, which
            it must leave alone) when there are any.
        triton: the Triton triple (custom ops ``fastgan::<op_name>_triton`` with fakes); its autograd is attached
            here.
        launchers: the plain Python functions those custom ops run (same signatures as the extension's ops). When
            given, CUDA calls of the Triton impl go through the extension's ops with these as their CUDA kernels
            (:func:`fastgan._backend.route_cuda_to_triton`: autograd in C++, not Python), where the extension has
            the ops and no CUDA C++ kernel for them.
    """

    def __init__(self, op_names: Sequence[str], fakes: Sequence[Callable], attach_autograd: Callable,
                 triton: Sequence[Callable], launchers: Sequence[Callable] | None = None):
        self.op_names = tuple(op_names)
        self.launchers = None if launchers is None else dict(zip(self.op_names, launchers))
        self._routed: bool | None = None
        self.fakes = tuple(fakes)
        self.attach_autograd = attach_autograd
        attach_autograd(*triton, names=tuple(f"fastgan::{n}_triton" for n in self.op_names))
        self.triton = SimpleNamespace(fwd=triton[0], bwd=triton[1], dbwd=triton[2])
        self._compiled: SimpleNamespace | None = None

    def compiled(self) -> SimpleNamespace:
        """The extension's triple, with fakes and autograd attached on first use."""
        if self._compiled is None:
            names = tuple(f"fastgan::{n}" for n in self.op_names)
            # Ops whose autograd formula the extension registers in C++ (checked before Python registers any):
            # it costs a few µs per call where the Python one (an autograd.Function per call) cost tens of µs.
            native = frozenset(n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, "Autograd"))
            for name, fake in zip(names, self.fakes):
                torch.library.register_fake(name)(fake)
            triple = tuple(getattr(torch.ops.fastgan, n).default for n in self.op_names)
            if native:
                self.attach_autograd(*triple, names=names, native=native)
            else:  # families without native formulas keep the plain signature
                self.attach_autograd(*triple, names=names)
            self._compiled = SimpleNamespace(fwd=triple[0], bwd=triple[1], dbwd=triple[2])
        return self._compiled

    def ops(self, impl: str, device_type: str = "cpu") -> SimpleNamespace:
        """The triple of ``impl`` ("cpp", "cuda" or "triton") for tensors of ``device_type``."""
        if impl == "triton":
            if device_type == "cuda" and self._route_triton():
                return self.compiled()
            return self.triton  # and on CPU tensors under TRITON_INTERPRET=1, where the extension's op is C++'s
        if impl in ("cpp", "cuda"):
            return self.compiled()
        raise ValueError(f"fastgan: no {self.op_names[0]} kernel ops for impl {impl!r}")

    def _route_triton(self) -> bool:
        """Whether CUDA calls of the Triton impl take the extension's ops (decided once)."""
        if self._routed is None:
            self._routed = self.launchers is not None and _backend.route_cuda_to_triton(self.launchers)
        return self._routed

    def register_compiled(self) -> None:
        """Attach fakes and autograd to the extension's ops now, when the extension has them, and decide the Triton
        route (at import: deciding it on the first CUDA call could happen inside a torch.compile trace, which cannot
        trace the registration)."""
        if _backend.has_kernel(self.op_names[0], "CPU") or _backend.has_kernel(self.op_names[0], "CUDA"):
            self.compiled()
            self._route_triton()
