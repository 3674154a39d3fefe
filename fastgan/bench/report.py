"""Write a benchmark run as ``report.json`` (all data), ``report.md`` (tables) and ``report.png`` (a chart).

The PNG needs matplotlib (the optional ``bench`` extra); without it a warning is printed and the markdown and
JSON are still written.
"""
from __future__ import annotations

import json
import math
import os
import sys
import warnings
from typing import Any

TIMING_METHOD = (
    "median of batches of back-to-back calls after warm-up, rotating input sets when they would fit in the "
    "last-level cache; µs/call includes CPU launch overhead when the device would wait for it"
)
NOISY_PRESSURE = 10.0  # % of time some task waited for a CPU; above this a CPU run is flagged as noisy
GPU_TIME_METHOD = "GPU µs: the same batches queued behind a GPU sleep, so CUDA events see device time only"


def _us(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _gbps(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def header_rows(rep: dict[str, Any]) -> list[tuple[str, str]]:
    """The key/value rows of the report header: device, versions, backends, command, date, ceiling, settings."""
    env, dev, ver, fg = rep["env"], rep["env"]["device"], rep["env"]["versions"], rep["env"]["fastgan"]
    if dev["type"] == "cuda":
        device = (f"{dev['name']} ({dev['capability']}, {dev['sms']} SMs, {dev['memory_gib']} GiB, "
                  f"L2 {_mib(dev['l2_bytes'])})")
    else:
        device = (f"CPU: {dev['name']}, {dev['cores']} cores usable, torch threads {dev['torch_threads']}, "
                  f"LLC {_mib(dev['llc_bytes'])}, load average at start {dev.get('loadavg_at_start')}")
    versions = f"torch {ver['torch']}"
    if ver.get("cuda"):
        versions += f" (CUDA {ver['cuda']}, cuDNN {ver.get('cudnn')})"
    versions += f", triton {ver.get('triton') or 'not installed'}, Python {ver['python']}, {ver['platform']}"
    live = "; ".join(f"{op}: {', '.join(impls)}" for op, impls in fg["live_impls"].items()) or "—"
    ext = "compiled extension loaded" if fg["extension_loaded"] else f"no compiled extension ({fg['extension_error']})"
    if fg.get("cpu_isa"):
        ext += f", CPU kernels run {fg['cpu_isa']} code"
    if fg.get("cuda_archs"):
        ext += f", CUDA archs {' '.join(fg['cuda_archs'])}"
    fastgan = f"{ver['fastgan']}" + (f" @ {fg['git_commit'][:12]}" if fg.get("git_commit") else "")
    ceil = rep["ceiling"]
    s = rep["settings"]
    t = s["timing"]
    settings = (f"preset `{s['preset']}`, dtypes {', '.join(s['dtypes']) or '—'}, "
                f"{t['budget_s']} s per impl per case, warm-up {t['warmup_s']} s"
                + ("" if s.get("compile", True) else ", torch.compile skipped"))
    rows = [
        ("Device", device),
        ("Versions", versions),
        ("fastgan", f"{fastgan}; {ext}"),
        ("Live impls", live),
        ("Command", f"`{env['command']}`"),
        ("Date", env["date"]),
        ("Copy ceiling", f"**{ceil['gbps']:.0f} GB/s** read+write ({ceil['method']})"),
        ("Settings", settings),
        ("Timing", TIMING_METHOD + (f"; {GPU_TIME_METHOD}" if dev["type"] == "cuda" else "")
         + (f"; {dev['allocator']}" if dev.get("allocator") else "")),
        ("Run time", f"{rep['elapsed_s']:.0f} s"),
    ]
    pressure = [p for p in (dev.get("pressure_at_start"), dev.get("pressure_at_end")) if p is not None]
    if pressure and max(pressure) >= NOISY_PRESSURE:
        rows.append(("**Warning**", f"other processes competed for the CPU (PSI cpu some avg10 = "
                     f"{' → '.join(f'{p:.0f}%' for p in pressure)}, start → end): medians are noisy; "
                     "compare min µs, or rerun with `--threads 1` when the machine is shared"))
    return rows


def _goal_value(t: dict[str, Any], v: float | None) -> str:
    if v is None:
        return "—"
    return _us(v) + " µs" if t["kind"] == "max_us" else f"{v:.2f}x"


def _check_cell(r: dict[str, Any]) -> str:
    if "rel_err" not in r:
        return ""
    return f"{'ok' if r['check_ok'] else '**MISMATCH**'} {r['rel_err']:.0e}"


def suite_table(rep: dict[str, Any], suite: str) -> tuple[list[str], list[str]]:
    """Markdown table lines of one suite, and the error lines under it."""
    gpu = rep["env"]["device"]["type"] == "cuda"
    train = any(c["suite"] == suite and c.get("mode") == "train" for c in rep["cases"])
    cols = ["case", "impl", "µs/call", "min µs"] + (["GPU µs"] if gpu else []) + (["it/s"] if train else []) + [
        "GB/s", "% ceiling", "vs eager", "floor µs", "check"] + (["peak MiB"] if gpu else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < 2 else "--:" for i in range(len(cols))) + "|"]
    errors = []
    for c in rep["cases"]:
        if c["suite"] != suite:
            continue
        for i, (label, r) in enumerate(c["results"].items()):
            case = f"{c['name']}" if i == 0 else ""
            floor = _us(c.get("floor_us")) if i == 0 else ""
            if "error" in r:
                errors.append(f"- {c['name']} · {label}: `{r['error']}`")
                cells = [case, label, "error", "—"] + (["—"] if gpu else []) + (["—"] if train else []) + [
                    "—", "—", "—", floor, ""] + (["—"] if gpu else [])
            else:
                sp = r.get("speedup_vs_eager")
                gpu_cell = [_us(r.get("gpu_us"))] if gpu else []
                # a training iteration per call: iterations per second, as training logs print them
                its = [f"{1e6 / r['median_us']:.2f}" if r["median_us"] else "—"] if train else []
                cells = [case, label, _us(r["median_us"]), _us(r["min_us"])] + gpu_cell + its + [
                    _gbps(r.get("gbps")), _num(r.get("pct_ceiling"), ".1f"),
                    "—" if sp is None else f"{sp:.2f}x", floor, _check_cell(r)] + (
                    [_num(r.get("peak_mem_mib"), ",.0f")] if gpu else [])
            lines.append("| " + " | ".join(cells) + " |")
    return lines, errors


def render_markdown(rep: dict[str, Any], png_name: str | None = "report.png") -> str:
    """The whole report as markdown.

    Args:
        rep: the data from :func:`fastgan.bench.harness.benchmark`.
        png_name: chart file to link (None when no chart was written).

    Returns:
        Markdown text.
    """
    dev = rep["env"]["device"]
    title = dev["name"] if dev["type"] == "cuda" else f"CPU ({dev['cores']} cores)"
    out = [f"# fastgan benchmark: {title}", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in header_rows(rep)]
    left = rep.get("skipped_cases") or []
    if left:
        # Written after each case (a killed run keeps these) or cut short by --time-limit.
        out += ["", f"**Partial report: {len(rep['cases'])} of {len(rep['cases']) + len(left)} cases ran**; "
                "not run: " + ", ".join(left) + "."]
    if rep["targets"]:
        out += ["", "## Goals", "",
                "Measured from medians; *best* from minimum times (robust to other load on a shared CPU).",
                "", "| case | goal | impl | measured | best | met |", "|---|---|---|--:|--:|---|"]
        for t in rep["targets"]:
            goal = f"≤ {t['value']:g} µs" if t["kind"] == "max_us" else f"≥ {t['value']:g}x vs eager"
            meas, best = (_goal_value(t, t[k]) for k in ("measured", "measured_best"))
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            out.append(f"| {t['suite']} {t['case']} | {goal} ({t['note']}) | {t['impl']} | {meas} | {best} | {met} |")
    for s in rep["suites"]:
        if not any(c["suite"] == s["name"] for c in rep["cases"]):
            continue  # filtered out by -k / --suite: no empty table
        out += ["", f"## {s['name']}", ""]
        if s["notes"]:
            out += [s["notes"], ""]
        lines, errors = suite_table(rep, s["name"])
        out += lines
        if errors:
            out += ["", "Failures (recorded, not fatal):", ""] + errors
    out += ["", "µs/call = median; min µs = fastest sample. GB/s = bytes floor / µs per call; % ceiling = that over "
            "the copy ceiling; floor µs = bytes floor / copy ceiling; vs eager = eager µs / impl µs; check = max "
            "relative difference from eager."]
    if png_name:
        out += ["", f"![time per call, log scale]({png_name})"]
    return "\n".join(out) + "\n"


def write_png(rep: dict[str, Any], path: str) -> bool:
    """Horizontal bars of µs per call for every case and impl (log scale), with each case's floor marked.

    Args:
        rep: the report data.
        path: PNG file to write.

    Returns:
        False (with a warning) when matplotlib is not installed or there is nothing to plot, else True.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("fastgan bench: matplotlib is not installed (pip install 'fastgan[bench]'); "
                      "skipping the PNG chart", RuntimeWarning, stacklevel=2)
        return False
    cases = [c for c in rep["cases"] if any("median_us" in r for r in c["results"].values())]
    if not cases:
        return False
    labels = sorted({k for c in cases for k in c["results"]}, key=lambda k: (k != "eager", k != "compile", k))
    palette = {"eager": "#8c8c8c", "compile": "#f28e2b"}
    blues = ["#1f77b4", "#59a14f", "#76b7b2", "#4e79a7", "#9467bd"]
    fastgan = [k for k in labels if k not in palette]
    palette.update({k: blues[i % len(blues)] for i, k in enumerate(fastgan)})
    nl = len(labels)
    bar_h = 0.8 / nl
    fig_h = 1.2 + 0.16 * nl * len(cases)
    fig, ax = plt.subplots(figsize=(11, fig_h))
    for ci, c in enumerate(cases):
        base = len(cases) - 1 - ci  # first case on top
        for li, label in enumerate(labels):
            r = c["results"].get(label, {})
            if "median_us" in r:
                y = base + 0.4 - (li + 0.5) * bar_h
                ax.barh(y, r["median_us"], height=bar_h * 0.9, color=palette[label], label=label)
        if c.get("floor_us"):
            ax.plot([c["floor_us"]] * 2, [base - 0.45, base + 0.45], color="black", lw=1.5,
                    label="bytes floor" if ci == 0 else None)
    ax.set_xscale("log")
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels([f"{c['suite']} {c['name']}" for c in reversed(cases)], fontsize=7)
    ax.set_ylim(-0.6, len(cases) - 0.4)
    ax.set_xlabel("µs per call (log scale; lower is better)")
    dev = rep["env"]["device"]
    ax.set_title(f"fastgan bench on {dev['name']} — copy ceiling {rep['ceiling']['gbps']:.0f} GB/s", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    seen = dict(zip(names, handles))
    ax.legend(seen.values(), seen.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def write_report(rep: dict[str, Any], out_dir: str, png: bool = True) -> dict[str, str]:
    """Write ``report.json``, ``report.png`` (when possible) and ``report.md`` into ``out_dir``.

    Args:
        rep: the data from :func:`fastgan.bench.harness.benchmark`.
        out_dir: directory (created if missing).
        png: try to draw the chart.

    Returns:
        Kind (``"json"``, ``"md"``, ``"png"``) -> path of each file written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md")}
    with open(paths["json"], "w") as f:
        # inf (a failed check's error) is not JSON; write null instead.
        json.dump(_finite(rep), f, indent=1, default=_json_default)
        f.write("\n")
    png_path = os.path.join(out_dir, "report.png")
    drew = False
    if png:
        try:
            drew = write_png(rep, png_path)
        except Exception as exc:  # a chart failure must not lose the measurements
            print(f"fastgan bench: could not draw the chart: {exc}", file=sys.stderr)
    if drew:
        paths["png"] = png_path
    with open(paths["md"], "w") as f:
        f.write(render_markdown(rep, "report.png" if drew else None))
    return paths


def _finite(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o
