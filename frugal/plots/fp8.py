"""Lesson 01's fp8 figures: a tensor against e4m3's and e5m2's ranges, scaled or not; where fp8 pays on a GPU."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter

from frugal.plots._common import _unit_axis, new_figure
from frugal.plots.precision import FORMAT_COLORS


def _log2_magnitudes(values) -> np.ndarray:
    v = np.abs(np.asarray(values, dtype=np.float64).ravel())
    return np.log2(v[v > 0])


def fp8_distribution(values, formats: dict, scales: dict[str, float] | None = None,
                     title: str = "A tensor against fp8's ranges") -> Figure:
    """One panel per format (name -> numerics.Format): histogram of log2|x| (grey) and of log2|x·scale| (colour)
    over the format's subnormal (light) and normal (dark) range; the legend counts what rounds to 0 or clamps."""
    fig, axes = new_figure(6.0 * len(formats), 3.4, ncols=len(formats))
    axes = np.atleast_1d(axes)
    raw = _log2_magnitudes(values)
    for ax, (name, fmt) in zip(axes, formats.items()):
        color = FORMAT_COLORS.get(name, "grey")
        lo, mid, hi = (math.log2(getattr(fmt, k)) for k in ("smallest_subnormal", "smallest_normal", "max"))
        ax.axvspan(lo, mid, color=color, alpha=0.12)
        ax.axvspan(mid, hi, color=color, alpha=0.25)
        s = (scales or {}).get(name)
        series = [("x as it is", raw, "grey")] + ([(f"x · {s:.3g}", raw + math.log2(s), color)] if s else [])
        edges = np.linspace(min(lo, *(d.min() for _, d, _ in series)) - 1, max(hi, *(d.max() for _, d, _ in series)) + 1,
                            80)
        for label, data, c in series:
            zero = float(np.mean(data < lo - 1)) * 100                  # below half the smallest subnormal: 0
            over = float(np.mean(data > hi)) * 100                      # above max: clamps (saturates)
            ax.hist(data, bins=edges, color=c, alpha=0.6, label=f"{label}: {zero:.1f}% to 0, {over:.1f}% clamp")
        ax.set_title(f"{name}: max {fmt.max:g}")
        ax.set_xlabel("log2 |x|   (band: light subnormal, dark normal)")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("values")
    fig.suptitle(title)
    return fig


def fp8_speedup(rows: list[dict], device: str, when: str | None = None,
                ops: tuple[str, ...] = ("Float8Linear forward (speed path)", "Float8Linear forward (eager core)",
                                        "Float8Linear forward", "torch._scaled_mm alone")) -> Figure:
    """Speed-up over bf16 against square matrix size, one line per fp8 path found in the benchmark's rows (from
    frugal.bench.fp8), timed from Python; dashed in the same colour, the GPU's time alone where the rows have it
    (a CUDA graph's replay). Below the line at 1x fp8 does not pay."""
    fig, ax = new_figure(6.4, 3.8)
    markers = iter("osD^v")
    for op in ops:
        pts = sorted((r["size"], r["speedup_vs_bf16"]) for r in rows if r.get("op") == op and "speedup_vs_bf16" in r)
        if pts:
            line, = ax.plot(*zip(*pts), marker=next(markers), label=op)
            gpu = sorted((r["size"], r["GPU speedup_vs_bf16"]) for r in rows
                         if r.get("op") == op and "GPU speedup_vs_bf16" in r)
            if gpu:
                ax.plot(*zip(*gpu), marker=line.get_marker(), color=line.get_color(), ls="--", mfc="none",
                        label=f"{op}, GPU time alone")
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.text(0.01, 1.02, "bf16 (below: fp8 does not pay)", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_xscale("log", base=2)
    sizes = sorted({r["size"] for r in rows if "size" in r and "speedup_vs_bf16" in r})
    if sizes:                                                    # the measured sizes, as numbers (not 2^k)
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
    ax.set_xlabel("M = K = N")
    ax.set_ylabel("speed-up over bf16 (x)")
    ax.set_title(f"fp8 matmul on {device}" + (f", measured {when}" if when else ""), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def crossover_size(rows: list[dict], op: str, key: str = "speedup_vs_bf16") -> int | None:
    """The smallest measured size from which op is faster than bf16 at every larger size, or None; key
    "GPU speedup_vs_bf16" judges by the GPU's time alone."""
    pts = sorted((r["size"], r[key]) for r in rows if r.get("op") == op and key in r)
    paying = None
    for size, speedup in reversed(pts):
        if speedup <= 1.0:
            break
        paying = size
    return paying


def recipe_trace(amaxes: list[float], fill: list[float], clamped: list[float], recipe: str) -> Figure:
    """Two panels over steps: the tensor's amax, and how full the scale makes fp8 (amax·scale / max: above 1
    the largest values clamp), with the share of values clamped."""
    fig, (ax_a, ax_f) = new_figure(11.0, 3.4, ncols=2)
    steps = range(len(amaxes))
    ax_a.plot(steps, amaxes, color="grey")
    ax_a.set_yscale("log")
    ax_a.set_xlabel("step")
    ax_a.set_ylabel("amax of the tensor")
    ax_f.plot(steps, fill, color=FORMAT_COLORS["fp8_e4m3"], label="amax · scale / max")
    ax_f.axhline(1.0, color="black", lw=1, ls="--")
    ax_f.set_yscale("log")
    ax_f.set_xlabel("step")
    ax_f.set_ylabel("amax · scale / max")
    twin = ax_f.twinx()
    twin.bar(steps, clamped, color="black", alpha=0.3, label="% clamped")
    twin.set_ylabel("% of values clamped")
    ax_f.set_title(f"recipe '{recipe}': 1 = the largest value lands on max")
    for ax in (ax_a, ax_f):                           # '0.5' and '2', not 5x10^-1 and 2x10^0
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        _unit_axis(ax.yaxis, lambda v: f"{v:g}")
        ax.yaxis.set_minor_formatter(NullFormatter())
    return fig
