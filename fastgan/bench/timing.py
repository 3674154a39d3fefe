"""Timing one callable, and the copy-bandwidth ceiling, on CPU or CUDA.

Method (the same for every impl, so eager, compile and fastgan are compared like for like):

1. First call, timed alone (for ``torch.compile`` this includes compilation); then warm-up calls for
   ``warmup_s``, which also estimate the time per call. All impls of a case are prepared first, then sampled
   round-robin, so load changes on a shared machine affect each impl alike.
2. Calls are grouped in batches long enough that the clock's resolution and the per-batch synchronisation do not
   matter (``batch_s``). A batch runs back to back, as a training loop would, rotating through several input sets
   when one set would stay in the last-level cache (L2 on CUDA, L3 on CPU). The time per call of a batch is one
   sample; the median of the samples is reported.
3. CUDA batches are timed with CUDA events after a synchronisation, so a call's CPU-side launch overhead counts
   when the GPU would otherwise wait for it ("µs/call"). A second pass queues each batch behind a
   ``torch.cuda._sleep`` so the CPU is ahead of the GPU and the events see device time only ("GPU µs").

4. On CPU, :func:`steady_cpu_allocator` first fixes glibc malloc's thresholds, so every impl reuses freed buffers.
   Left to itself, glibc returns large freed blocks to the OS and adapts its thresholds to the sizes seen so far,
   so whether a call's outputs and temporaries cost fresh page faults (about 0.2 ms per 4 MiB here) depended on
   which impl ran before it: eager ``F.silu(x + b)`` on 2x512x32x32 timed 456 µs when prepared first and 1,495 µs
   when the fused op was prepared first (a separate run, same machine).

The copy ceiling is a large device-to-device ``copy_`` timed the same way; bytes = read + written.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import statistics
import time
from typing import Any, Callable, Sequence

import torch


@dataclasses.dataclass
class TimingConfig:
    """How long to spend per impl per case.

    Attributes:
        budget_s: measuring time per impl (after warm-up).
        warmup_s: warm-up time per impl (after the first call).
        batch_s: target length of one timed batch; None = 2 ms on CUDA (amortises event and sync cost), 0.5 ms
            on CPU (short samples, so a preemption by another process spoils few of them and the median skips it).
        min_reps: fewest samples.
        max_reps: most samples.
        device_time: on CUDA, also measure device-only time (the "GPU µs" pass).
    """

    budget_s: float = 0.25
    warmup_s: float = 0.05
    batch_s: float | None = None
    min_reps: int = 7
    max_reps: int = 200
    device_time: bool = True


_ALLOCATOR: list[str | None] = []
_GIB = 2**30


def steady_cpu_allocator() -> str | None:
    """Make CPU timings independent of malloc's history: keep freed blocks for reuse instead of returning them.

    Sets glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB (32 MiB for the mmap threshold where glibc
    refuses more), which also stops their adaptation to the sizes seen so far. A long training loop reaches the
    same steady state: its buffers are reused from the heap. Affects this whole process from then on (a pytest run
    that times a CPU benchmark keeps the setting for its later tests); call it in benchmark processes, not in library
    code. Idempotent. Under a preloaded allocator (jemalloc, tcmalloc) glibc's mallopt still answers but changes
    nothing, and the report's line then overstates what was set.

    Returns:
        What was set (for the report), or None where the C library is not glibc or refused.
    """
    if _ALLOCATOR:
        return _ALLOCATOR[0]
    desc = None
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
        version.restype = ctypes.c_char_p
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        mmap = next((v for v in (_GIB, 32 * 2**20) if libc.mallopt(m_mmap_threshold, v) == 1), None)
        if mmap is not None and libc.mallopt(m_trim_threshold, _GIB) == 1:
            desc = (f"glibc {version().decode()} malloc: mmap threshold {mmap // 2**20} MiB, trim threshold "
                    f"{_GIB // 2**20} MiB (freed buffers are reused, not returned to the OS)")
    except (OSError, AttributeError, TypeError):  # TypeError: CDLL(None) on Windows
        pass
    _ALLOCATOR.append(desc)
    return desc


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (``/proc/pressure/cpu``), in %.

    High values mean other processes compete for the cores, which makes CPU timings noisy.
    """
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return float(line.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return None


def cache_bytes(device: torch.device) -> int:
    """Size of the last-level cache that inputs could stay in: L2 on CUDA, the largest CPU cache otherwise.

    Args:
        device: the benchmark device.

    Returns:
        Bytes (32 MiB when the size cannot be read).
    """
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20)
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(path).read().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return best or 32 * 2**20


def rotation_sets(footprint: int, cache: int, input_bytes: int, memory_cap: int) -> int:
    """How many input sets to rotate through so that consecutive calls do not find their inputs in cache.

    Args:
        footprint: bytes one call touches (its bytes floor).
        cache: last-level cache bytes.
        input_bytes: bytes of one input set.
        memory_cap: most bytes all sets together may take.

    Returns:
        1 when one call already overflows the cache 3 times over, else enough sets to cover 3x the cache,
        at most 64 and within ``memory_cap``.
    """
    if footprint <= 0 or footprint >= 3 * cache:
        return 1
    n = math.ceil(3 * cache / footprint)
    n = min(n, 64, max(1, memory_cap // max(1, input_bytes)))
    return max(1, n)


def _wall_batch(fn: Callable, sets: Sequence[tuple], start: int, k: int, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(k):
        fn(*sets[(start + i) % len(sets)])
    synchronize(device)
    return (time.perf_counter() - t0) / k


def _event_batch(fn: Callable, sets: Sequence[tuple], start: int, k: int, sleep_cycles: int = 0) -> float:
    begin = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    if sleep_cycles:
        # Keep the GPU busy while the CPU queues the batch, so the events bracket device time only.
        torch.cuda._sleep(sleep_cycles)
    begin.record()
    for i in range(k):
        fn(*sets[(start + i) % len(sets)])
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) * 1e-3 / k


_SLEEP_CYCLES_PER_S: list[float] = []


def _sleep_cycles_per_s() -> float:
    """Calibrate ``torch.cuda._sleep``: spin cycles per second on this GPU (measured once per process)."""
    if not _SLEEP_CYCLES_PER_S:
        cycles = 20_000_000
        torch.cuda._sleep(cycles // 10)  # first call loads the kernel
        samples = []
        for _ in range(3):
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            samples.append(cycles / (begin.elapsed_time(end) * 1e-3))
        _SLEEP_CYCLES_PER_S.append(statistics.median(samples))
    return _SLEEP_CYCLES_PER_S[0]


def _summary(samples: list[float]) -> dict[str, Any]:
    qs = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {
        "median_us": statistics.median(samples) * 1e6,
        "min_us": min(samples) * 1e6,
        "p25_us": qs[0] * 1e6,
        "p75_us": qs[2] * 1e6,
        "reps": len(samples),
    }


def _prepare(fn: Callable, sets: Sequence[tuple], device: torch.device, cfg: TimingConfig) -> dict[str, Any]:
    """First call (timed alone; includes torch.compile's compilation), then warm-up that sizes the batches. On
    CUDA also the peak of allocated memory over those calls (what was resident before them included)."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    output = fn(*sets[0])
    synchronize(device)
    first = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while calls < 2 or (time.perf_counter() - t0 < cfg.warmup_s and calls < 1000):
        fn(*sets[(calls + 1) % len(sets)])
        calls += 1
    synchronize(device)
    est = max((time.perf_counter() - t0) / calls, 1e-7)
    batch_s = cfg.batch_s if cfg.batch_s is not None else (0.002 if device.type == "cuda" else 0.0005)
    k = max(1, min(1000, round(batch_s / est)))
    reps = int(max(cfg.min_reps, min(cfg.max_reps, cfg.budget_s / (k * est))))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"output": output, "first_call_s": first, "batch": k, "reps": reps, "peak_mem_mib": peak}


def _error(exc: BaseException) -> dict[str, str]:
    lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return {"error": (lines[0] if lines else type(exc).__name__)[:300]}


def time_impls(fns: dict[str, Callable], sets: Sequence[tuple], device: torch.device, cfg: TimingConfig,
               on_impl: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Time several callables on the same inputs, interleaved.

    Samples are taken round-robin (one batch of each impl per round) rather than impl after impl, so a change in
    machine load during the run (a shared CPU, clocks ramping) hits every impl alike and their ratios stay fair.

    Args:
        fns: label -> callable taking ``*inputs``; prepared (first call, warm-up) in this order.
        sets: one or more input tuples to rotate through.
        device: where the inputs live (chooses the clock).
        cfg: budgets.
        on_impl: called with a label before it is prepared (for a progress line).

    Returns:
        Label -> ``{"median_us", "min_us", "p25_us", "p75_us", "reps", "batch", "first_call_s", "gpu_us",
        "peak_mem_mib", "output"}`` (``output``: the first call's result, for a correctness check; ``gpu_us`` None
        on CPU or without the device-time pass; ``peak_mem_mib`` the CUDA allocator's peak over the first call and
        warm-up, None on CPU), or ``{"error": "Type: message"}`` when the callable raised.
    """
    cuda = device.type == "cuda"
    state: dict[str, dict[str, Any]] = {}
    for label, fn in fns.items():
        if on_impl is not None:
            on_impl(label)
        try:
            state[label] = _prepare(fn, sets, device, cfg)
        except Exception as exc:  # noqa: BLE001 - one impl failing (a compile error) is data, not fatal
            state[label] = _error(exc)
            if cuda:
                torch.cuda.empty_cache()
    live = [label for label in fns if "error" not in state[label]]
    samples: dict[str, list[float]] = {label: [] for label in live}
    if on_impl is not None and live:
        on_impl("timing " + ", ".join(live))
    for r in range(max((state[label]["reps"] for label in live), default=0)):
        for label in live:
            st = state[label]
            if "error" in st or r >= st["reps"]:
                continue
            k = st["batch"]
            try:
                if cuda:
                    samples[label].append(_event_batch(fns[label], sets, (r * k) % len(sets), k))
                else:
                    samples[label].append(_wall_batch(fns[label], sets, (r * k) % len(sets), k, device))
            except Exception as exc:  # noqa: BLE001
                state[label] = _error(exc)
    results: dict[str, dict[str, Any]] = {}
    for label in fns:
        st = state[label]
        if "error" in st:
            results[label] = st
            continue
        res = _summary(samples[label])
        res.update(batch=st["batch"], first_call_s=st["first_call_s"], gpu_us=None, output=st["output"],
                   peak_mem_mib=st["peak_mem_mib"])
        if cuda and cfg.device_time:
            try:
                res["gpu_us"] = _device_time(fns[label], sets, res["median_us"] * 1e-6, st["batch"], res["reps"])
            except Exception:  # noqa: BLE001 - the extra pass is optional; keep the main timing
                res["gpu_us"] = None
        results[label] = res
    return results


def _device_time(fn: Callable, sets: Sequence[tuple], wall_s: float, k: int, reps: int) -> float:
    """Median device-only µs per call: batches queued behind a GPU sleep that outlasts their CPU launch time
    (the wall time per call bounds the CPU time per call)."""
    kd = max(1, min(k, 64))
    sleep_s = min(0.05, 2.0 * kd * wall_s + 50e-6)
    cycles = int(sleep_s * _sleep_cycles_per_s())
    dev = [_event_batch(fn, sets, (r * kd) % len(sets), kd, cycles) for r in range(max(3, min(reps, 30)))]
    return statistics.median(dev) * 1e6


def copy_ceiling(device: torch.device, nbytes: int | None = None, reps: int | None = None) -> dict[str, Any]:
    """Measure the copy bandwidth: the speed limit a memory-bound kernel is compared with.

    Args:
        device: CPU or CUDA device.
        nbytes: size of the source buffer (default 1 GiB on CUDA, 256 MiB on CPU; far past any cache).
        reps: timed copies (default 30 on CUDA, 5 on CPU).

    Returns:
        ``{"gbps", "best_us", "bytes_moved", "buffer_bytes", "reps", "method"}``; ``gbps`` is (read + written)
        bytes per second / 1e9 of the fastest copy.
    """
    cuda = device.type == "cuda"
    if nbytes is None:
        nbytes = 2**30 if cuda else 256 * 2**20
        if cuda:
            free, _ = torch.cuda.mem_get_info(device)
            nbytes = min(nbytes, max(64 * 2**20, free // 4))
    reps = reps or (30 if cuda else 5)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)  # written, so every page is real
    dst = torch.zeros_like(src)
    for _ in range(2):
        dst.copy_(src)
    samples = []
    for _ in range(reps):
        if cuda:
            samples.append(_event_batch(dst.copy_, [(src,)], 0, 1))
        else:
            samples.append(_wall_batch(dst.copy_, [(src,)], 0, 1, device))
    # The fastest copy, not the median: other load can only slow a copy down, and the ceiling is an upper bound.
    best = min(samples)
    moved = 2 * src.numel() * 4
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    return {
        "gbps": moved / best / 1e9,
        "best_us": best * 1e6,
        "bytes_moved": moved,
        "buffer_bytes": nbytes,
        "reps": reps,
        "method": f"dst.copy_(src), {nbytes / 2**20:.0f} MiB fp32, fastest of {reps}; bytes = read + written",
    }
