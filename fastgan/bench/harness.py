"""Run benchmark cases: environment record, copy ceiling, timing of every impl, derived metrics, goals.

:func:`benchmark` returns one JSON-able dict (the report's data); :mod:`fastgan.bench.report` renders it.
"""
from __future__ import annotations

import datetime
import gc
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, TextIO

import torch

from .suites import Case, Suite, dtype_name
from .timing import (TimingConfig, cache_bytes, copy_ceiling, cpu_pressure, rotation_sets, steady_cpu_allocator,
                     synchronize, time_impls)

SCHEMA = 1
# Relative tolerance (max |impl - eager| / max |eager|, per output tensor) of the correctness check. It only
# catches a broken benchmark (wrong impl, a compile that silently did something else); the tests own accuracy.
CHECK_TOL = {torch.float32: 1e-3, torch.float64: 1e-6}
CHECK_TOL_LOW = 3e-2


# ------------------------------------------------------------------------------------------ environment
def command_line() -> str:
    """The command that started this process, as a user would type it (``python -m fastgan bench ...``)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0.endswith("__main__.py") and os.path.basename(os.path.dirname(argv0)) == "fastgan":
        head = ["python", "-m", "fastgan"]
    else:
        head = [os.path.basename(argv0) or "python"]
    return shlex.join(head + sys.argv[1:])


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """Name and properties of the benchmark device.

    Args:
        device: CPU or CUDA device.

    Returns:
        ``{"type", "name", ...}``: for CUDA the capability, SM count, memory and L2; for CPU the cores usable by
        this process and torch's intra-op threads.
    """
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "capability": f"sm_{p.major}{p.minor}",
            "sms": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "l2_bytes": cache_bytes(device),
        }
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "type": "cpu",
        "name": cpu_name(),
        "loadavg_at_start": load,  # other processes on a shared CPU make timings noisy
        "pressure_at_start": cpu_pressure(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "llc_bytes": cache_bytes(device),
    }


def _git_commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment(device: torch.device, suites: Iterable[Suite]) -> dict[str, Any]:
    """Everything needed to reproduce or compare a run: device, versions, fastgan backends, command and date.

    Args:
        device: the benchmark device.
        suites: the suites being run (their ops' live impls are listed).

    Returns:
        A JSON-able dict.
    """
    from .. import __version__, _backend

    live = {op: _backend.live_impls(op, device.type) for s in suites for op in s.ops}
    return {
        "device": device_info(device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "triton": _version("triton") or _version("pytorch-triton"),
            "fastgan": __version__,
            "platform": platform.platform(),
        },
        "fastgan": {
            "extension_loaded": _backend.extension_error() is None,
            "extension_error": _backend.extension_error(),
            "cuda_archs": _backend.built_cuda_archs(),
            "cpu_isa": _backend.cpu_kernel_isa(),
            "live_impls": live,
            "git_commit": _git_commit(),
        },
        "command": command_line(),
        "argv": list(sys.argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------- progress
class Progress:
    """One status line on stderr: ``[ 3/16 0:42] instance_norm fwd 2x64x256x256 fp32 contiguous · compile``.

    On a terminal the line is rewritten in place; otherwise (logs, CI) one line is printed per case.
    """

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream or sys.stderr, enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.width = 0

    def update(self, index: int, text: str, detail: str = "") -> None:
        """Show case ``index`` (0-based) of ``total``; ``detail`` is the impl being timed."""
        if not self.enabled:
            return
        el = int(time.perf_counter() - self.t0)
        line = f"[{index + 1:>{len(str(self.total))}}/{self.total} {el // 60}:{el % 60:02d}] {text}"
        if self.tty:
            line = f"{line} · {detail}" if detail else line
            cols = max(40, _terminal_columns() - 1)
            line = line[:cols]
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
        elif not detail:
            self.stream.write(line + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the status line."""
        if self.enabled and self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()


def _terminal_columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 100


# ------------------------------------------------------------------------------------------------ check
def _as_tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)] if isinstance(out, (tuple, list)) else []


def relative_error(out, ref) -> float:
    """Largest ``max|out - ref| / max|ref|`` over the output tensors (in float64, on the outputs' device)."""
    a, b = _as_tensors(out), _as_tensors(ref)
    if len(a) != len(b) or not a:
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("inf")
        x, y = x.detach().double(), y.detach().double()
        scale = max(y.abs().max().item(), 1e-12)
        worst = max(worst, (x - y).abs().max().item() / scale)
    return worst


# ------------------------------------------------------------------------------------------------- runs
def run_case(case: Case, device: torch.device, cfg: TimingConfig, check: bool = True,
             progress: Progress | None = None, index: int = 0) -> dict[str, dict[str, Any]]:
    """Time every callable of one case.

    Args:
        case: the case.
        device: where it runs.
        cfg: timing budgets.
        check: compare each impl's first output with eager's.
        progress: status line to update.
        index: the case's position, for the status line.

    Returns:
        Label -> timing dict (see :func:`fastgan.bench.timing.time_impls`, without ``output``) plus ``rel_err`` and
        ``check_ok``, or ``{"error": "..."}`` when the callable raised (a failed compile is recorded, not fatal).
    """
    first = case.make_inputs(0)
    input_bytes = sum(t.numel() * t.element_size() for t in first if isinstance(t, torch.Tensor))
    cap = (2 if device.type == "cuda" else 1) * 2**30
    n = rotation_sets(case.bytes_floor, cache_bytes(device), input_bytes, cap)
    sets = [first] + [case.make_inputs(s) for s in range(1, n)]
    synchronize(device)

    labels = sorted(case.fns, key=lambda k: (k != "eager", k == "compile", k))  # eager first, compile last

    def show(label: str) -> None:
        if progress is not None:
            progress.update(index, f"{case.suite} {case.name}", label)

    results = time_impls({k: case.fns[k] for k in labels}, sets, device, cfg, on_impl=show)
    tol = CHECK_TOL.get(case.dtype, CHECK_TOL_LOW)
    if check and case.check and case.check_context is not None:
        with case.check_context():  # outputs for the check made in that context, not the timed ones
            for label, r in results.items():
                if "output" in r:
                    try:
                        r["output"] = case.fns[label](*first)
                    except Exception as exc:  # recorded, as a failed timing is: the check then cannot pass
                        r.pop("output")
                        r["rel_err"], r["check_ok"] = float("inf"), False
                        r["check_error"] = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:300]
    ref = results.get("eager", {}).get("output")
    for label, r in results.items():
        if "output" not in r:
            continue
        out = r.pop("output")
        r["rotation_sets"] = n
        if check and case.check and label != "eager" and ref is not None:
            err = relative_error(out, ref)
            r["rel_err"], r["check_ok"] = err, bool(err <= tol)
        del out
    del sets, first, ref
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def derive(case_result: dict[str, Any], ceiling_gbps: float) -> None:
    """Add ``floor_us`` to the case and ``gbps``, ``pct_ceiling``, ``speedup_vs_eager`` to each result, in place.

    Achieved bandwidth is the bytes floor over the median time, so it is the bandwidth the op would need at its
    measured speed if it moved only the bytes it must (extra traffic makes it lower than the hardware's figure).
    """
    floor = case_result["bytes_floor"]
    case_result["floor_us"] = floor / (ceiling_gbps * 1e9) * 1e6 if ceiling_gbps else None
    eager = case_result["results"].get("eager", {}).get("median_us")
    for r in case_result["results"].values():
        if "median_us" not in r:
            continue
        t = r["median_us"] * 1e-6
        r["gbps"] = floor / t / 1e9
        r["pct_ceiling"] = 100.0 * r["gbps"] / ceiling_gbps if ceiling_gbps else None
        r["speedup_vs_eager"] = eager / r["median_us"] if eager else None
        # The ratio of best times: robust to other processes preempting a shared CPU, where medians suffer.
        eager_min = case_result["results"].get("eager", {}).get("min_us")
        r["speedup_vs_eager_min"] = eager_min / r["min_us"] if eager_min else None
        if r.get("gpu_us"):
            r["gpu_gbps"] = floor / (r["gpu_us"] * 1e-6) / 1e9


def evaluate_targets(cases: list[Case], case_results: list[dict], device_name: str) -> list[dict[str, Any]]:
    """Check each case's goals against its results.

    Returns:
        One dict per goal: case, kind, value, impl (resolved label), measured, met (True/False, or None when the
        goal does not apply to this device or its impl did not run), note.
    """
    out = []
    for case, cr in zip(cases, case_results):
        for t in case.targets:
            res = cr["results"]
            label = t.impl
            if t.impl == "fastgan":
                timed = [k for k, v in res.items() if k.startswith("fastgan-") and "median_us" in v]
                label = min(timed, key=lambda k: res[k]["median_us"]) if timed else "fastgan"
            r = res.get(label, {})
            measured = r.get("median_us") if t.kind == "max_us" else r.get("speedup_vs_eager")
            best = r.get("min_us") if t.kind == "max_us" else r.get("speedup_vs_eager_min")
            applies = any(m.lower() in device_name.lower() for m in t.device_match.split("|"))
            note = t.note + ("" if applies else f" (applies to {t.device_match.replace('|', ' or ')} only)")
            if applies and "H100" in t.device_match and "H100" not in device_name:
                note += f" (set for the H100; measured on {device_name})"
            met = None
            if applies and measured is not None:
                met = measured <= t.value if t.kind == "max_us" else measured >= t.value
            out.append({
                "suite": case.suite, "case": case.name, "kind": t.kind, "value": t.value, "impl": label,
                "measured": measured, "measured_best": best, "met": met, "applies": applies,
                "note": note,
            })
    return out


def benchmark(cases: list[Case], device: torch.device, suites: Iterable[Suite], cfg: TimingConfig | None = None,
              *, preset: str = "default", check: bool = True, progress: bool = True,
              settings: dict[str, Any] | None = None, ceiling_bytes: int | None = None,
              time_limit_s: float | None = None,
              on_case: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``cases`` on ``device`` and return the report data.

    Args:
        cases: what to run (all on ``device``).
        device: the benchmark device.
        suites: the suites the cases come from (for their notes and op names).
        cfg: timing budgets (default :class:`TimingConfig`).
        preset: the preset name, recorded in the report.
        check: run the correctness check against eager.
        progress: show the status line on stderr.
        settings: extra options to record (the CLI's flags).
        ceiling_bytes: buffer size of the copy-ceiling measurement (default: far past any cache; tests pass a
            small one to stay fast).
        time_limit_s: start no case once this many seconds have passed; the cases left are named in the report's
            ``skipped_cases`` (a case already running is finished).
        on_case: called with the report so far (``complete`` False) after each case, so that a run that is killed
            keeps what it measured.

    Returns:
        The JSON-able report: ``schema``, ``env``, ``ceiling``, ``settings``, ``suites``, ``cases``, ``targets``,
        ``elapsed_s``, ``complete`` (every case ran) and ``skipped_cases`` (names of the cases not run).
    """
    cfg = cfg or TimingConfig()
    suites = list(suites)
    t0 = time.perf_counter()
    env = environment(device, suites)
    if device.type == "cpu":  # before anything is timed, the copy ceiling included
        env["device"]["allocator"] = steady_cpu_allocator()
    ceiling = copy_ceiling(device, ceiling_bytes)
    bar = Progress(len(cases), enabled=progress)
    run_settings = {
        "preset": preset,
        "timing": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "check": check,
        "dtypes": sorted({dtype_name(c.dtype) for c in cases}),
        **(settings or {}),
    }
    case_results: list[dict[str, Any]] = []

    def assemble(complete: bool) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "env": env,
            "ceiling": ceiling,
            "settings": run_settings,
            "suites": [{"name": s.name, "ops": list(s.ops), "notes": s.notes} for s in suites],
            "cases": list(case_results),
            "targets": evaluate_targets(cases[: len(case_results)], case_results, env["device"]["name"]),
            "elapsed_s": time.perf_counter() - t0,
            "complete": complete,
            "skipped_cases": [f"{c.suite} {c.name}" for c in cases[len(case_results):]],
        }

    for i, case in enumerate(cases):
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            break
        bar.update(i, f"{case.suite} {case.name}")
        cr = case.describe()
        cr["results"] = run_case(case, device, cfg, check=check, progress=bar, index=i)
        derive(cr, ceiling["gbps"])
        case_results.append(cr)
        if on_case is not None and len(case_results) < len(cases):
            on_case(assemble(False))
    bar.finish()
    if device.type == "cpu":
        env["device"]["pressure_at_end"] = cpu_pressure()
    return assemble(len(case_results) == len(cases))
