"""The benchmark case model and the registry of suites.

A *suite* is one op's benchmark matrix: a function registered under a name that, given :class:`SuiteOptions`
(device, preset, which impls), yields :class:`Case` objects. A case is one shape/dtype/layout/mode with a dict of
callables to time, ``{"fastgan-<impl>": fn, "eager": fn, "compile": fn}``, all taking the same inputs, plus the
fewest bytes the op must move (its *floor*). The harness (:mod:`fastgan.bench.harness`), the report writer, the
``fastgan bench`` CLI and ``benchmarks/*.py`` (pytest-benchmark) all consume cases the same way, so adding an op's
benchmark is: write ``fastgan/bench/<op>_suite.py`` with a ``@register_suite`` function and add its module name to
:data:`BUILTIN_SUITE_MODULES`.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, Callable, Iterable

import torch

MODES = ("fwd", "fwd+bwd")
PRESETS = ("quick", "default", "full")
# Importing these modules registers their suites; the one place a new op's suite is switched on.
BUILTIN_SUITE_MODULES = (
    "fastgan.bench.instance_norm_suite",
    "fastgan.bench.adain_suite",
    "fastgan.bench.spade_suite",
    "fastgan.bench.diffusion_suite",
    "fastgan.bench.sampling_suite",
    "fastgan.bench.bias_act_suite",
    "fastgan.bench.stargan_v2_suite",
    "fastgan.bench.grad_penalty_suite",
    "fastgan.bench.group_norm_suite",
)

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a dtype as used in case names ("fp32", "bf16", ...)."""
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def shape_str(shape: Iterable[int]) -> str:
    """``(8, 64, 256, 256)`` -> ``"8x64x256x256"``."""
    return "x".join(str(int(s)) for s in shape)


# The issues set their GPU goals on the H100; the machines lent now are H200s (the same Hopper chip and compute,
# ~1.4x the memory bandwidth), so the goals are evaluated on both and the report says which one ran.
HOPPER = "H100|H200"
# An H100 SXM's device-to-device copy ceiling, about: the issues' "80% of the bytes floor" goals are set from it.
H100_COPY_GBPS = 3000.0


def floor_share_target(floor_bytes: int, numel: int, min_numel: int = 0) -> tuple["Target", ...]:
    """The issues' GPU goal "at least 80% of the copy-ceiling floor" as a time goal for one case (floor at the
    H100's 3.0 TB/s, so it is a little easier on an H200), or none below ``min_numel`` elements."""
    if numel < min_numel:
        return ()
    us = floor_bytes / (0.8 * H100_COPY_GBPS * 1e3)
    return (Target("max_us", round(us, 2), "fastgan", HOPPER, "issue goal: >= 80% of the bytes floor"),)


@dataclasses.dataclass(frozen=True)
class Target:
    """A performance goal that the report checks.

    Attributes:
        kind: ``"max_us"`` (the impl's median time is at most ``value`` µs) or ``"min_speedup"`` (eager time over
            the impl's time is at least ``value``).
        value: the bound.
        impl: an exact result label (``"fastgan-cpp"``), or ``"fastgan"`` for the fastest fastgan impl that ran.
        device_match: substring the device name must contain for the goal to apply (``"H100"``), or several joined
            by ``|`` (:data:`HOPPER`); ``""`` = any.
        note: where the goal comes from, shown in the report.
    """

    kind: str
    value: float
    impl: str = "fastgan"
    device_match: str = ""
    note: str = ""


@dataclasses.dataclass
class Case:
    """One benchmark case.

    Attributes:
        suite: the registering suite's name.
        shape: the main input's shape.
        dtype: the main input's dtype.
        layout: ``"contiguous"`` or ``"channels_last"`` (free text for ops where layout means something else).
        mode: ``"fwd"`` or ``"fwd+bwd"``.
        device: ``"cpu"`` or ``"cuda"``.
        make_inputs: ``seed -> tuple`` of fresh inputs on ``device``; the harness makes several sets to rotate
            through when one set would stay in cache.
        fns: result label -> callable taking ``*make_inputs(seed)`` and returning the op's output(s) (for
            ``fwd+bwd``: the input gradients). Labels are ``"eager"``, ``"compile"`` and ``"fastgan-<impl>"``.
            ``"eager"`` is the reference that speed-ups and the correctness check compare against.
        bytes_floor: the fewest bytes the op must read plus write (see ``bytes_detail``).
        bytes_detail: what ``bytes_floor`` counts, in words.
        targets: performance goals for this case.
        check: compare each impl's output with eager's. False where they must differ, e.g. sampling loops that
            draw their noise differently (say why in the suite's notes).
        check_context: a context-manager factory; when given, the check runs each callable once more on the first
            input set inside it instead of comparing the timed outputs (the critic steps check with TF32 off: its
            rounding makes two correct float32 steps differ by ~3e-2, and their float32 agreement is the check).
    """

    suite: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str
    mode: str
    device: str
    make_inputs: Callable[[int], tuple]
    fns: dict[str, Callable[..., Any]]
    bytes_floor: int
    bytes_detail: str = ""
    targets: tuple[Target, ...] = ()
    check: bool = True
    check_context: Callable[[], Any] | None = None

    @property
    def name(self) -> str:
        """Human-readable name, unique within a suite: ``"fwd 8x64x256x256 fp32 contiguous"``."""
        return f"{self.mode} {shape_str(self.shape)} {dtype_name(self.dtype)} {self.layout}"

    @property
    def id(self) -> str:
        """Name without spaces, for pytest ids and file names."""
        return f"{self.device}-{self.suite}-{self.name.replace(' ', '-')}"

    def describe(self) -> dict:
        """The case's metadata as plain JSON-able values (no callables)."""
        return {
            "suite": self.suite,
            "name": self.name,
            "shape": list(self.shape),
            "dtype": dtype_name(self.dtype),
            "layout": self.layout,
            "mode": self.mode,
            "device": self.device,
            "bytes_floor": int(self.bytes_floor),
            "bytes_detail": self.bytes_detail,
            "impls": list(self.fns),
        }


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    """What a suite function is asked for.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        preset: ``"quick"`` (a few cases), ``"default"`` (the full matrix on CUDA, a CPU-sized one on CPU) or
            ``"full"`` (the full matrix at full size on any device).
        impls: fastgan impls to include (``("cpp", "ref")``); None = every live one.
        compile: include the ``torch.compile`` baseline.
    """

    device: str = "cpu"
    preset: str = "default"
    impls: tuple[str, ...] | None = None
    compile: bool = True


@dataclasses.dataclass(frozen=True)
class Suite:
    """A registered suite: its case generator, the backend op names whose live impls the report lists, and the
    notes (how the bytes floor is counted, what the CPU preset shrinks) printed above its table."""

    name: str
    fn: Callable[[SuiteOptions], Iterable[Case]]
    ops: tuple[str, ...] = ()
    notes: str = ""


_SUITES: dict[str, Suite] = {}


def register_suite(name: str, *, ops: Iterable[str] = (), notes: str = ""):
    """Decorator registering ``fn(SuiteOptions) -> Iterable[Case]`` as suite ``name``.

    Args:
        name: suite name (``--suite`` on the command line).
        ops: backend op names (as in ``fastgan._backend``) whose live impls the report header lists.
        notes: markdown shown above the suite's table; say what the bytes floor counts.

    Returns:
        The decorator, which returns ``fn`` unchanged.
    """

    def deco(fn):
        _SUITES[name] = Suite(name, fn, tuple(ops), notes.strip())
        return fn

    return deco


def all_suites() -> dict[str, Suite]:
    """Every registered suite (importing the built-in suite modules first), by name."""
    for module in BUILTIN_SUITE_MODULES:
        importlib.import_module(module)
    return dict(_SUITES)


def build_cases(names: Iterable[str] | None, opts: SuiteOptions, filters: Iterable[str] = ()) -> list[Case]:
    """Cases of the named suites (all when ``names`` is None) whose names contain every string in ``filters``.

    Args:
        names: suite names, or None for all.
        opts: passed to each suite function.
        filters: case-insensitive substrings that must all occur in ``f"{suite} {case.name}"``.

    Returns:
        The cases in suite order.
    """
    suites = all_suites()
    names = list(suites) if not names else list(names)
    unknown = [n for n in names if n not in suites]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; registered: {sorted(suites)}")
    wanted = [f.lower() for f in filters]
    cases = []
    for n in names:
        for case in suites[n].fn(opts):
            text = f"{n} {case.name}".lower()
            if all(f in text for f in wanted):
                cases.append(case)
    return cases


def fastgan_impls(op_name: str, device: str, wanted: Iterable[str] | None = None) -> list[str]:
    """The fastgan impls of ``op_name`` worth benchmarking on ``device``, fastest first.

    Triton on CPU runs only in the interpreter (``TRITON_INTERPRET=1``), which is orders of magnitude slower than
    anything else, so it is never benchmarked on CPU.

    Args:
        op_name: backend op name, e.g. ``"instance_norm_fwd"``.
        device: ``"cpu"`` or ``"cuda"``.
        wanted: restrict to these impls (None = all live).

    Returns:
        Impl names such as ``["cpp", "ref"]``.
    """
    from .. import _backend

    live = _backend.live_impls(op_name, device)
    if device == "cpu":
        live = [i for i in live if i != "triton"]
    if wanted is not None:
        live = [i for i in live if i in set(wanted)]
    return live


def reset_compiler() -> None:
    """Drop every torch.compile cache entry.

    Dynamo caches compiled graphs on the Python code object, and one function compiled for many shapes hits the
    recompile limit and silently falls back to eager; resetting before each case's compile keeps every case a
    fresh, static-shape compile.
    """
    import torch._dynamo

    torch._dynamo.reset()


class LazyCompiled:
    """``torch.compile(fn, dynamic=False)`` made on first call, after a compiler reset.

    Importing the compiler costs seconds, so nothing is compiled or imported unless the compile baseline runs.
    The first call includes compilation; the harness times it separately as warm-up. Use one instance per case
    and finish timing it before the next instance's first call (the reset drops other instances' graphs).
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.compiled: Callable[..., Any] | None = None

    def __call__(self, *args):
        if self.compiled is None:
            reset_compiler()
            self.compiled = torch.compile(self.fn, dynamic=False)
        return self.compiled(*args)


def tensor_bytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``."""
    return math.prod(int(s) for s in shape) * torch.empty((), dtype=dtype).element_size()


def with_backward(fwd: Callable[..., Any]) -> Callable[..., Any]:
    """``fwd(*inputs) -> y`` turned into ``(*inputs, gy) -> gradients of every input``: one forward, one backward."""

    def fwd_bwd(*args):
        *inputs, gy = args
        return torch.autograd.grad(fwd(*inputs), inputs, gy)

    return fwd_bwd


def with_penalty(fwd: Callable[..., Any]) -> Callable[..., Any]:
    """``fwd(*inputs) -> y`` turned into ``(*inputs, gy) -> gradients of every input of ||d<y, gy>/dx||^2`` with x the
    first input: a gradient penalty's first backward (``create_graph=True``) and its double backward."""

    def penalty(*args):
        *inputs, gy = args
        (gx,) = torch.autograd.grad(fwd(*inputs), inputs[0], gy, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), inputs)

    return penalty


WRAPS = {"fwd": lambda f: f, "fwd+bwd": with_backward, "penalty": with_penalty}


def standard_cases(suite: str, opts: SuiteOptions, combos: Iterable[tuple], *, op: str,
                   eager: Callable[..., Any], fastgan: Callable[[str], Callable[..., Any]],
                   make_inputs: Callable[..., Callable[[int], tuple]], bytes_floor: Callable[..., int],
                   bytes_detail: Callable[[str], str], targets: Callable[..., tuple]) -> Iterable[Case]:
    """Cases for the usual op suite: eager, every live fastgan impl and the compile baseline per combination.

    Args:
        suite: the suite's name.
        opts: the suite options (device, preset, impl filter, compile baseline).
        combos: ``(mode, shape, dtype, layout)`` tuples; mode ``"fwd+bwd"`` times a forward plus
            ``torch.autograd.grad`` of every input, ``"penalty"`` a gradient penalty through the op
            (:func:`with_penalty`; no compile baseline: torch.compile refuses double backward).
        op: backend op name whose live impls are benchmarked.
        eager: the PyTorch formulation (also the compile baseline and the correctness check's reference).
        fastgan: ``impl -> forward callable`` pinned to that impl.
        make_inputs: ``(shape, dtype, layout, mode, device) -> (seed -> inputs)``; for fwd+bwd and penalty the last
            input is gy.
        bytes_floor: ``(shape, dtype, mode) -> bytes``.
        bytes_detail: ``mode -> what bytes_floor counts``.
        targets: ``(shape, dtype, layout, mode, device) -> tuple of Target``.

    Returns:
        An iterator of :class:`Case`.
    """
    impls = fastgan_impls(op, opts.device, opts.impls)
    for mode, shape, dtype, layout in combos:
        wrap = WRAPS[mode]
        fns = {"eager": wrap(eager)}
        for impl in impls:
            fns[f"fastgan-{impl}"] = wrap(fastgan(impl))
        if opts.compile and mode != "penalty":
            fns["compile"] = wrap(LazyCompiled(eager))
        yield Case(
            suite=suite, shape=tuple(shape), dtype=dtype, layout=layout, mode=mode, device=opts.device,
            make_inputs=make_inputs(shape, dtype, layout, mode, opts.device), fns=fns,
            bytes_floor=bytes_floor(shape, dtype, mode), bytes_detail=bytes_detail(mode),
            targets=targets(shape, dtype, layout, mode, opts.device),
        )
