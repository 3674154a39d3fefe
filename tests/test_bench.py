"""Smoke tests of the benchmark harness (``fastgan.bench``) and ``python -m fastgan bench`` on tiny CPU cases.

No timing is asserted (speed belongs in benchmarks/): these check that a run produces a complete report, that
failures and wrong outputs are recorded rather than hidden, and that the bytes floor is what the docs say.
"""
from __future__ import annotations

import contextlib
import json
import sys

import pytest
import torch
import torch.nn.functional as F

from fastgan import cli
from fastgan import _backend
from fastgan.bench import harness, report
from fastgan.bench.instance_norm_suite import bytes_floor
from fastgan.bench.suites import Case, Suite, SuiteOptions, Target, build_cases
from fastgan.bench.timing import TimingConfig, rotation_sets, steady_cpu_allocator

FAST = TimingConfig(budget_s=0.005, warmup_s=0.0, min_reps=3, max_reps=5)
SHAPE = (2, 4, 8, 8)


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.ones(SHAPE[1]), torch.zeros(SHAPE[1])


def _eager(x, w, b):
    return F.instance_norm(x, weight=w, bias=b)


def _broken(x, w, b):
    raise RuntimeError("compile failed\nsecond line")


def _tiny_case(**fns) -> Case:
    return Case(
        suite="tiny", shape=SHAPE, dtype=torch.float32, layout="contiguous", mode="fwd", device="cpu",
        make_inputs=_inputs, fns={"eager": _eager, **fns}, bytes_floor=2 * 2 * 4 * 8 * 8 * 4 + 2 * 4 * 4,
        targets=(Target("min_speedup", 1e-9, "fastgan-ref"), Target("max_us", 1.0, "fastgan", "NoSuchGPU")),
    )


def _run(tmp_path, case: Case, png: bool = True):
    suite = Suite("tiny", lambda opts: [case], notes="tiny notes")
    rep = harness.benchmark([case], torch.device("cpu"), [suite], FAST, preset="quick", progress=False,
                            ceiling_bytes=4 * 2**20)
    return rep, report.write_report(rep, str(tmp_path), png=png)


def test_report_files_and_fields(tmp_path):
    case = _tiny_case(**{"fastgan-ref": lambda x, w, b: _eager(x, w, b) + 0.0, "compile": _broken})
    rep, paths = _run(tmp_path, case)
    for kind in ("md", "json"):
        assert (tmp_path / f"report.{kind}").is_file()
    data = json.loads((tmp_path / "report.json").read_text())
    for key in ("schema", "env", "ceiling", "settings", "suites", "cases", "targets", "elapsed_s"):
        assert key in data
    env = data["env"]
    assert env["device"]["type"] == "cpu" and env["device"]["name"]
    assert env["versions"]["torch"] == torch.__version__ and env["versions"]["fastgan"]
    assert env["command"] and env["date"]
    assert "instance_norm_fwd" not in env["fastgan"]["live_impls"]  # only the tiny suite's ops (none) are listed
    assert data["ceiling"]["gbps"] > 0
    assert env["fastgan"]["cpu_isa"] == _backend.cpu_kernel_isa()  # which CPU clones produced the numbers
    assert env["device"]["allocator"] == steady_cpu_allocator()  # None only off glibc

    (c,) = data["cases"]
    assert c["name"] == "fwd 2x4x8x8 fp32 contiguous" and c["floor_us"] > 0
    eager, ref = c["results"]["eager"], c["results"]["fastgan-ref"]
    assert eager["median_us"] > 0 and eager["reps"] >= 3 and eager["speedup_vs_eager"] == pytest.approx(1.0)
    for field in ("median_us", "min_us", "gbps", "pct_ceiling", "speedup_vs_eager", "first_call_s"):
        assert ref[field] > 0, field
    assert ref["check_ok"] is True and ref["rel_err"] < 1e-6
    assert ref["rotation_sets"] > 1  # a 2 KB input fits any cache: inputs must rotate
    # A failing impl (a compile error) is recorded with its first line, and the run goes on.
    assert c["results"]["compile"] == {"error": "RuntimeError: compile failed"}

    goals = {t["kind"]: t for t in data["targets"]}
    assert goals["min_speedup"]["met"] is True and goals["min_speedup"]["impl"] == "fastgan-ref"
    assert goals["max_us"]["applies"] is False and goals["max_us"]["met"] is None

    md = (tmp_path / "report.md").read_text()
    assert "| case | impl | µs/call |" in md and "fwd 2x4x8x8 fp32 contiguous" in md
    assert "Copy ceiling" in md and "tiny notes" in md and "compile failed" in md
    if env["fastgan"]["cpu_isa"]:
        assert f"CPU kernels run {env['fastgan']['cpu_isa']} code" in md
    if env["device"]["allocator"]:
        assert env["device"]["allocator"] in md
    if "png" in paths:
        assert (tmp_path / "report.png").stat().st_size > 1000
        assert "report.png" in md


def test_report_after_each_case_and_time_limit(tmp_path):
    """The report is rewritten after every case (a killed run keeps what it measured), and --time-limit starts no
    case after the limit and names those left out."""
    cases = [_tiny_case(**{"fastgan-ref": _eager}) for _ in range(3)]
    suite = Suite("tiny", lambda opts: cases)
    seen = []

    def on_case(partial):
        seen.append(partial)
        report.write_report(partial, str(tmp_path), png=False)

    rep = harness.benchmark(cases, torch.device("cpu"), [suite], FAST, progress=False, ceiling_bytes=4 * 2**20,
                            on_case=on_case)
    assert rep["complete"] is True and rep["skipped_cases"] == [] and len(rep["cases"]) == 3
    assert [len(p["cases"]) for p in seen] == [1, 2] and not any(p["complete"] for p in seen)
    assert seen[0]["skipped_cases"] == ["tiny fwd 2x4x8x8 fp32 contiguous"] * 2
    assert "**Partial report: 2 of 3 cases ran**" in (tmp_path / "report.md").read_text()

    cut = harness.benchmark(cases, torch.device("cpu"), [suite], FAST, progress=False, ceiling_bytes=4 * 2**20,
                            time_limit_s=0.0)
    assert cut["complete"] is False and len(cut["cases"]) == 0 and len(cut["skipped_cases"]) == 3
    assert [t["met"] for t in cut["targets"]] == []  # goals of cases that did not run are not evaluated
    assert "Partial report: 0 of 3" in report.render_markdown(cut, None)


def test_wrong_output_is_flagged(tmp_path):
    rep, _ = _run(tmp_path, _tiny_case(**{"fastgan-ref": lambda x, w, b: 2 * _eager(x, w, b)}), png=False)
    r = rep["cases"][0]["results"]["fastgan-ref"]
    assert r["check_ok"] is False and r["rel_err"] > 0.1
    assert "MISMATCH" in (tmp_path / "report.md").read_text()


def _switch():
    """``(state, context)``: ``state["on"]`` is True inside ``context()`` (a stand-in for check_context's TF32-off)."""
    state = {"on": False}

    @contextlib.contextmanager
    def context():
        state["on"] = True
        try:
            yield
        finally:
            state["on"] = False

    return state, context


def test_check_context_makes_the_outputs_that_are_checked(tmp_path):
    exact, exact_mode = _switch()

    def fast(x, w, b):  # off by 2x unless exact mode is on, as TF32 steps differ until TF32 is off
        return _eager(x, w, b) * (1.0 if exact["on"] else 2.0)

    case = _tiny_case(**{"fastgan-ref": fast})
    case.check_context = exact_mode
    rep, _ = _run(tmp_path, case, png=False)
    assert rep["cases"][0]["results"]["fastgan-ref"]["check_ok"] is True
    rep, _ = _run(tmp_path, _tiny_case(**{"fastgan-ref": fast}), png=False)  # no context: flagged
    assert rep["cases"][0]["results"]["fastgan-ref"]["check_ok"] is False


def test_a_failing_check_rerun_is_recorded_not_fatal(tmp_path):
    rerun, context = _switch()

    def fails_on_rerun(x, w, b):  # fine while timed, raises when the check runs it again
        if rerun["on"]:
            raise RuntimeError("capture failed\nsecond line")
        return _eager(x, w, b)

    case = _tiny_case(**{"fastgan-ref": fails_on_rerun})
    case.check_context = context
    rep, _ = _run(tmp_path, case, png=False)
    r = rep["cases"][0]["results"]["fastgan-ref"]
    assert r["check_ok"] is False and r["check_error"] == "RuntimeError: capture failed" and "median_us" in r


def test_hopper_goals_apply_on_the_h100_and_the_h200():
    from fastgan.bench.suites import HOPPER

    case = _tiny_case()
    case.targets = (Target("max_us", 5.0, "eager", HOPPER, "issue goal on the H100"),)
    res = [{"results": {"eager": {"median_us": 4.0, "min_us": 3.9}}}]
    for name, applies, met in (("NVIDIA H100 80GB HBM3", True, True), ("NVIDIA H200", True, True),
                               ("NVIDIA A100-SXM4-80GB", False, None)):
        (goal,) = harness.evaluate_targets([case], res, name)
        assert (goal["applies"], goal["met"]) == (applies, met)
        assert ("measured on NVIDIA H200" in goal["note"]) == (name == "NVIDIA H200")
        assert ("applies to H100 or H200 only" in goal["note"]) == (not applies)


def test_a_case_without_check_is_not_compared(tmp_path):
    case = _tiny_case(**{"fastgan-ref": lambda x, w, b: 2 * _eager(x, w, b)})
    case.check = False
    rep, _ = _run(tmp_path, case, png=False)
    assert "check_ok" not in rep["cases"][0]["results"]["fastgan-ref"]


def test_sampling_suite_cases():
    cpu = build_cases(["sampling"], SuiteOptions(device="cpu", preset="default", compile=False))
    assert [c.name for c in cpu] == ["sample 4x3x16x16 fp32 ddpm-20-steps", "sample 4x3x16x16 fp32 ddim-10-steps"]
    assert [c.check for c in cpu] == [False, True] and all(set(c.fns) == {"eager", "fastgan-auto"} for c in cpu)
    (x_T,) = cpu[1].make_inputs(0)
    ddim = cpu[1].fns["fastgan-auto"](x_T)
    assert harness.relative_error(ddim, cpu[1].fns["eager"](x_T)) < 1e-5 and not torch.equal(ddim, x_T)
    ddpm = cpu[0].fns["fastgan-auto"](x_T)
    assert ddpm.shape == x_T.shape and torch.equal(ddpm, cpu[0].fns["fastgan-auto"](x_T))  # seeded: reproduces
    gpu = build_cases(["sampling"], SuiteOptions(device="cuda", preset="default", compile=False))
    assert [c.name for c in gpu] == ["sample 64x3x32x32 fp32 ddpm-1000-steps", "sample 64x3x32x32 fp32 ddim-50-steps"]
    assert set(gpu[0].fns) == {"eager", "fastgan-auto", "fastgan-graph"}
    assert [(t.kind, t.value, t.device_match) for t in gpu[0].targets] == [("min_speedup", 1.5, "H100|H200")]
    assert "fastgan-auto" not in build_cases(["sampling"], SuiteOptions(device="cpu", impls=()))[0].fns


def test_critic_steps_get_a_cuda_graph_variant_on_cuda(monkeypatch):
    from fastgan.bench import grad_penalty_suite
    monkeypatch.setattr(grad_penalty_suite, "fastgan_impls", lambda op, device, wanted=None: ["triton", "ref"])
    cases = [c for c in build_cases(["grad_penalty"], SuiteOptions(device="cuda", compile=False))
             if c.layout.startswith("critic")]
    assert [c.layout for c in cases] == ["critic-wgan-gp", "critic-r1"]
    assert all(set(c.fns) == {"eager", "fastgan-triton", "fastgan-triton-graph"} for c in cases)
    cpu = [c for c in build_cases(["grad_penalty"], SuiteOptions(device="cpu", compile=False))
           if c.layout.startswith("critic")]
    assert not any(k.endswith("-graph") for c in cpu for k in c.fns)


def test_png_skipped_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.warns(RuntimeWarning, match="matplotlib"):
        rep, paths = _run(tmp_path, _tiny_case())
    assert "png" not in paths and not (tmp_path / "report.png").exists()
    assert (tmp_path / "report.md").is_file() and "report.png" not in (tmp_path / "report.md").read_text()


def test_instance_norm_suite_cases():
    cases = build_cases(["instance_norm"], SuiteOptions(device="cpu", preset="quick", impls=("ref",), compile=False))
    assert [c.name for c in cases] == [
        "fwd 2x64x256x256 fp32 contiguous", "fwd 2x512x16x16 fp32 contiguous", "fwd+bwd 2x64x256x256 fp32 contiguous"]
    assert set(cases[0].fns) == {"eager", "fastgan-ref"}
    e = 2 * 64 * 256 * 256 * 4
    assert cases[0].bytes_floor == 2 * e + 2 * 64 * 4 and cases[2].bytes_floor == 5 * e + 5 * 64 * 4
    assert bytes_floor((8, 512, 16, 16), torch.bfloat16, "fwd") == 2 * 8 * 512 * 256 * 2 + 2 * 512 * 2
    full = build_cases(["instance_norm"], SuiteOptions(device="cuda", preset="default", impls=(), compile=True))
    assert len(full) == 4 * 2 * 2 * 2 and full[0].shape == (8, 64, 256, 256)
    assert all("compile" in c.fns and not any(k.startswith("fastgan-") for k in c.fns) for c in full)


def test_fwd_bwd_case_returns_gradients():
    (case,) = build_cases(["instance_norm"], SuiteOptions(device="cpu", preset="default", impls=("ref",),
                                                          compile=False), ["fwd+bwd", "16x16", "channels_last"])
    x, w, b, gy = inputs = case.make_inputs(0)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.requires_grad and not gy.requires_grad
    grads = case.fns["fastgan-ref"](*inputs)
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]
    assert harness.relative_error(grads, case.fns["eager"](*inputs)) < 1e-4


def test_steady_cpu_allocator_reuses_freed_buffers():
    """Without it, whether a timed call's 8 MiB output costs 2048 fresh page faults depended on malloc's history."""
    import resource

    desc = steady_cpu_allocator()
    if desc is None:
        pytest.skip("the C library is not glibc")
    assert steady_cpu_allocator() == desc and "glibc" in desc  # idempotent
    for _ in range(4):  # grow the heap to its steady state (the first few 8 MiB blocks still fault pages in)
        torch.empty(2**21).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(2**21).fill_(1.0)  # 8 MiB, touched, freed
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000  # 10240 when each maps fresh pages


def test_rotation_sets():
    assert rotation_sets(10 * 2**20, 50 * 2**20, 5 * 2**20, 2**30) == 15
    assert rotation_sets(200 * 2**20, 50 * 2**20, 100 * 2**20, 2**30) == 1
    assert rotation_sets(1000, 50 * 2**20, 500, 2**30) == 64
    assert rotation_sets(10 * 2**20, 50 * 2**20, 5 * 2**20, 20 * 2**20) == 4


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["bench", "--quick", "--no-compile", "--impl", "ref", "-k", "fwd 2x512x16x16", "--budget", "0.01",
                   "--out", str(out), "--quiet", "--no-png"])
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    assert [c["name"] for c in data["cases"]] == ["fwd 2x512x16x16 fp32 contiguous"]
    assert set(data["cases"][0]["results"]) == {"eager", "fastgan-ref"}
    assert data["cases"][0]["results"]["fastgan-ref"]["check_ok"] is True
    assert str(out / "report.md") in capsys.readouterr().out
    assert cli.main(["bench", "--list", "--device", "cpu"]) == 0
    assert cli.main(["bench", "-k", "no-such-case", "--out", str(tmp_path / "none")]) == 2


def test_every_suite_has_a_pytest_benchmark_file():
    """Each suite ``fastgan bench`` runs is also runnable with pytest-benchmark from a ``benchmarks/bench_*.py``."""
    import pathlib

    from fastgan.bench import suites

    bench_dir = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    text = "\n".join(p.read_text() for p in bench_dir.glob("bench_*.py"))
    missing = [name for name in suites.all_suites() if f'"{name}"' not in text]
    assert not missing, f"suites without a benchmarks/bench_*.py: {missing}"


def test_gpu_tables_show_peak_memory_and_training_cases_it_per_s(tmp_path):
    rep, _ = _run(tmp_path, _tiny_case(**{"fastgan-ref": _eager}), png=False)
    assert rep["cases"][0]["results"]["eager"]["peak_mem_mib"] is None  # measured on CUDA only
    rep["env"]["device"]["type"] = "cuda"  # the same data rendered as a GPU report of a training case
    rep["cases"][0]["mode"] = "train"
    for r in rep["cases"][0]["results"].values():
        r.update(gpu_us=1.0, peak_mem_mib=1536.0, median_us=500_000.0)
    lines, _ = report.suite_table(rep, "tiny")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row[header.index("it/s")] == "2.00" and row[header.index("peak MiB")] == "1,536"
    assert len(row) == len(header)
