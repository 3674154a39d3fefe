"""Compile every Triton kernel variant fastgan launches for a Hopper GPU (sm_90), on a machine without one.

CI runs the Triton kernels under TRITON_INTERPRET=1, and the interpreter accepts programs the compiler rejects: a
loop-carried variable whose type or shape changes (a throwaway ``_`` rebound to a mask of another shape), a module
global read inside ``@triton.jit``. This tool catches those before a GPU is lent. It installs a stand-in driver that
reports an sm_90 target, calls fastgan's own kernel wrappers on CPU tensors (so the launch arguments, constexprs
and grids are exactly what the wrappers compute for those shapes), and turns every launch into a compilation to
a cubin (Triton's bundled ptxas) instead of a run. It also flags grids over CUDA's limits (axis 0 < 2^31, axes 1
and 2 <= 65535).

    python tools/triton_compile_check.py            # every family, dtypes and sizes up to realistic ones
    python tools/triton_compile_check.py --quick    # fewer dtypes and sizes (the CI test, ~1-2 min on 2 cores)

Exit status 1 when any launch fails to compile or breaks a grid limit. Nothing runs: values are never read, so
inputs are uninitialised. Must run with TRITON_INTERPRET unset (it decides how @triton.jit wraps at import).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("triton_compile_check: unset TRITON_INTERPRET (the kernels must be compiled, not interpreted)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


class _Sm90Driver:
    """Enough of Triton's active-driver interface for compilation: the target, device 0, a null stream."""

    def get_current_target(self):
        return TARGET

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def map_python_to_cpp_type(self, ty):
        return ty

    def get_benchmarker(self):
        return None

    def get_device_interface(self):
        return None

    @classmethod
    def is_active(cls):
        return True


def _describe(e: BaseException) -> str:
    """The innermost compiler message of ``e`` with its kernel source line (Triton nests one CompilationError per
    called @triton.jit function)."""
    found, seen, cur = None, set(), e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if getattr(cur, "error_message", None):
            found = cur
        cur = cur.__cause__ or cur.__context__
    if found is None:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return f"{type(e).__name__}: " + (" | ".join(lines[-3:]) or "(no message)")
    line = getattr(getattr(found, "node", None), "lineno", "?")
    return f"line {line} of the jit function: {found.error_message.strip().splitlines()[0]}"


class Recorder:
    """Turns launches into compilations and keeps one line per launch."""

    def __init__(self, shard: tuple[int, int] = (0, 1)):
        self.rows: list[tuple[str, str, tuple, str]] = []
        self.tag = ""
        self.shard, self.launches = shard, 0

    def install(self) -> None:
        driver.set_active(_Sm90Driver())
        recorder = self

        def getitem(fn, grid):
            def launch(*args, **kwargs):
                index, recorder.launches = recorder.launches, recorder.launches + 1
                if index % recorder.shard[1] != recorder.shard[0]:
                    return  # another shard's launch (the cases run in the same order in every shard)
                g = grid(kwargs) if callable(grid) else grid
                g = tuple(g) + (1,) * (3 - len(g))
                status = "OK"
                if g[0] >= 2**31 or g[1] > 65535 or g[2] > 65535:
                    status = f"FAIL grid {g} over CUDA's limits"
                else:
                    try:
                        kernel = fn.run(*args, grid=grid, warmup=True, **kwargs)
                        status = f"OK warps={kernel.metadata.num_warps} smem={kernel.metadata.shared}"
                    except Exception as e:  # noqa: BLE001 - every compiler error is a finding
                        status = "FAIL " + _describe(e)
                recorder.rows.append((recorder.tag, fn.__name__, g, status))

            return launch

        JITFunction.__getitem__ = getitem

    def case(self, tag: str, call) -> None:
        self.tag = tag
        try:
            call()
        except Exception:  # noqa: BLE001 - a wrapper error is a finding too
            self.rows.append((tag, "<wrapper>", (), "FAIL " + traceback.format_exc(limit=2).splitlines()[-1]))

    def failures(self) -> list:
        return [r for r in self.rows if not r[3].startswith("OK")]


def _t(shape, dtype=torch.float32, channels_last=False):
    t = torch.empty(shape, dtype=dtype)
    return t.to(memory_format=torch.channels_last) if channels_last and len(shape) == 4 else t


def instance_norm_cases(rec: Recorder, quick: bool) -> None:
    from fastgan._backend import import_kernels
    k = import_kernels("instance_norm")
    # single tile, looped and split planes, contiguous and channels-last, odd sizes
    shapes = [(2, 3, 5, 7), (1, 3, 256, 256), (64, 512, 32, 32), (3, 5, 1)] + ([] if quick else [(2, 8, 128, 128)])
    for dt in (torch.float32, torch.bfloat16) if quick else (torch.float32, torch.float64, torch.bfloat16):
        acc = torch.float64 if dt == torch.float64 else torch.float32
        for shape in shapes:
            for cl in (False, True) if len(shape) == 4 else (False,):
                x = _t(shape, dt, cl)
                n, c = shape[:2]
                p, st = torch.empty(n, c, dtype=acc), torch.empty(n, c, dtype=acc)
                tag = f"instance_norm {dt} {shape} cl={cl}"
                rec.case(tag + " fwd", lambda: k.forward(x, p, p, 1e-5))
                rec.case(tag + " bwd", lambda: k.backward(x, x, st, st, p))
                rec.case(tag + " dbwd", lambda: k.double_backward(x, p, p, x, x, st, st, p))


def group_norm_cases(rec: Recorder, quick: bool) -> None:
    from fastgan._backend import import_kernels
    k = import_kernels("group_norm")
    shapes = [((2, 8, 4, 4), 4), ((2, 512, 64, 64), 32)] + ([] if quick else [((4, 64, 32, 32), 32)])
    for dt in (torch.float32, torch.float64) if quick else (torch.float32, torch.float64, torch.bfloat16):
        acc = torch.float64 if dt == torch.float64 else torch.float32
        for shape, g in shapes:
            x = _t(shape, dt)
            n, c = shape[:2]
            sc = torch.empty(n, c, dtype=torch.float64)
            st = torch.empty(n, g, dtype=acc)
            for act in (0, 2, 5) if quick else (0, 1, 2, 5):
                for maps in (False, True):
                    m = x if maps else None
                    tag = f"group_norm {dt} {shape} G={g} act={act} maps={maps}"
                    rec.case(tag + " fwd", lambda: k.forward(x, sc, sc, m, m, g, 1e-5, act, 0.2))
                    rec.case(tag + " bwd", lambda: k.backward(x, x, st, st, sc, sc, m, m, act, 0.2))
                    if not maps:
                        rec.case(tag + " dbwd", lambda: k.double_backward(x, sc, sc, x, x, st, st, sc, sc, 1e-5,
                                                                          act, 0.2))


def bias_act_cases(rec: Recorder, quick: bool) -> None:
    from fastgan._backend import import_kernels
    k = import_kernels("bias_act")
    for dt in (torch.float32, torch.float64, torch.bfloat16) + (() if quick else (torch.float16,)):
        x, b = _t((2, 8, 4, 4), dt), _t((8,), dt)
        for act in range(7):
            tag = f"bias_act {dt} act={act}"
            rec.case(tag + " fwd", lambda: k.forward(x, b, act, 0.2, 1.4, 256.0, 1))
            rec.case(tag + " bwd", lambda: k.backward(x, x, b, act, 0.2, 1.4, -1.0, 1))
            rec.case(tag + " dbwd", lambda: k.double_backward(x, x, x, b, act, 0.2, 1.4, 256.0, 1))


def grad_penalty_cases(rec: Recorder, quick: bool) -> None:
    from fastgan._backend import import_kernels
    k = import_kernels("grad_penalty")
    shapes = [(4, 3, 8, 8), (64, 3, 256, 256), (1000, 7)] + ([] if quick else [(2, 3, 1024, 1024)])
    for dt in (torch.float32, torch.float64) if quick else (torch.float32, torch.float64, torch.bfloat16):
        for shape in shapes:
            g, n = _t(shape, dt), shape[0]
            w, c = torch.empty(n, dtype=dt), torch.empty(n, dtype=torch.float64)
            for kind in (0, 1):
                tag = f"grad_penalty {dt} {shape} kind={kind}"
                rec.case(tag + " fwd", lambda: k.forward(g, kind, 1.0))
                rec.case(tag + " bwd", lambda: k.backward(w, g, c, kind, 1.0))
                rec.case(tag + " dbwd", lambda: k.double_backward(g, w, g, c, kind, 1.0))


def diffusion_step_cases(rec: Recorder, quick: bool) -> None:
    from fastgan._backend import import_kernels
    k = import_kernels("diffusion_step")
    for dt in (torch.float32, torch.float64) + (() if quick else (torch.float16, torch.bfloat16)):
        acc = torch.float64 if dt == torch.float64 else torch.float32
        coef, seed = torch.empty(4, 7, dtype=acc), torch.zeros(1, dtype=torch.int64)
        for cl in (False, True):
            x = _t((4, 3, 16, 16), dt, cl)
            for u in (None, x):
                tag = f"diffusion_step {dt} cl={cl} guided={u is not None}"
                rec.case(tag + " noise", lambda: k.step(x, x, u, x, coef, 7.5, 1.0))
                rec.case(tag + " philox", lambda: k.step(x, x, u, None, coef, 7.5, 1.0, seed=seed, channels_last=cl))
                rec.case(tag + " noiseless", lambda: k.step(x, x, u, None, coef[:1], 7.5, 0.0))


def idx64_cases(rec: Recorder, quick: bool) -> None:
    """The 64-bit-index variants (chosen for tensors of 2^31+ elements), forced on small shapes."""
    from fastgan._backend import import_kernels
    k, g = import_kernels("instance_norm"), import_kernels("group_norm")
    plan, meta = k._plan, g._meta
    k._plan = lambda x, n_in: plan(x, n_in)._replace(idx64=True)

    def meta64(x, groups):
        cg, length, m = meta(x, groups)
        return cg, length, {**m, "IDX64": True}

    g._meta = meta64
    try:
        for shape, cl in [((2, 3, 5, 7), False), ((2, 8, 128, 128), True)]:
            x = _t(shape, channels_last=cl)
            p = torch.empty(shape[:2])
            rec.case(f"instance_norm idx64 {shape} cl={cl} fwd", lambda: k.forward(x, p, p, 1e-5))
            rec.case(f"instance_norm idx64 {shape} cl={cl} bwd", lambda: k.backward(x, x, p, p, p))
            rec.case(f"instance_norm idx64 {shape} cl={cl} dbwd", lambda: k.double_backward(x, p, p, x, x, p, p, p))
        # Cg = 1 (G = C) and L = 1 too: Triton passes an integer argument equal to 1 as a constant.
        for shape, groups in (((2, 8, 16, 16), 4), ((2, 8, 16, 16), 8), ((2, 8, 1, 1), 4)):
            x, sc = _t(shape), torch.empty(2, 8, dtype=torch.float64)
            st = torch.empty(2, groups)
            for act in (0, 5):
                tag = f"group_norm idx64 {shape} G={groups} act={act}"
                rec.case(tag + " fwd", lambda: g.forward(x, sc, sc, None, None, groups, 1e-5, act, 0.2))
                rec.case(tag + " bwd", lambda: g.backward(x, x, st, st, sc, sc, None, None, act, 0.2))
                rec.case(tag + " dbwd", lambda: g.double_backward(x, sc, sc, x, x, st, st, sc, sc, 1e-5, act, 0.2))
    finally:
        k._plan, g._meta = plan, meta


FAMILIES = {"instance_norm": instance_norm_cases, "group_norm": group_norm_cases, "bias_act": bias_act_cases,
            "grad_penalty": grad_penalty_cases, "diffusion_step": diffusion_step_cases, "idx64": idx64_cases}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer dtypes and sizes")
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES), help="only these (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every launch, not only failures")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="compile only launches I, I+N, I+2N, ... (run N processes to use N cores)")
    args = ap.parse_args(argv)
    i, n = (int(v) for v in args.shard.split("/"))
    if not 0 <= i < n:
        ap.error(f"--shard {args.shard}: expected I/N with 0 <= I < N")
    rec = Recorder((i, n))
    rec.install()
    for name in args.family or FAMILIES:
        FAMILIES[name](rec, args.quick)
    for tag, kernel, grid, status in rec.rows:
        if args.verbose or not status.startswith("OK"):
            print(f"{status[:4]:4s} {kernel} grid={grid} [{tag}] {status}")
    bad = rec.failures()
    print(f"triton {triton.__version__}, target sm_{TARGET.arch}: {len(rec.rows)} launches compiled, "
          f"{len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
