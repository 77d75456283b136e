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
    _size_axis(ax, sorted({r["size"] for r in rows if "size" in r and "speedup_vs_bf16" in r}))
    ax.set_ylabel("speed-up over bf16 (x)")
    ax.set_title(f"fp8 matmul on {device}" + (f", measured {when}" if when else ""), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def _size_axis(ax, sizes: list[int]) -> None:
    """A log2 x axis of square matmul sizes, ticked at the measured ones as numbers (1,024, not 2^10)."""
    ax.set_xscale("log", base=2)
    if sizes:
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
    ax.set_xlabel("M = K = N")


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


# bench.fp8's rows of gelu(x) Wᵀ (GELU a pass of its own, then inside the cast), which it labels from here
CAST_ROWS = {"GELU, then Float8Linear forward (speed path, delayed)": "GELU, then the cast",
             "Float8Linear forward, GELU fused into its cast (speed path, delayed)": "GELU inside the cast"}


def cast_placement(passes: dict[str, list[tuple[str, int]]], rows: list[dict] | None = None,
                   device: str | None = None, when: str | None = None) -> Figure:
    """Left: bytes per element each way of casting an MLP's activation moves, stacked by pass (passes: label ->
    frugal.fp8_fused.cast_passes). Right, where the benchmark's rows have them: gelu(x) Wᵀ's GPU time against
    _scaled_mm alone plus the GELU (the work any fp8 path must do), by size; 0.95 marks "within 5%"."""
    fig, (ax_b, ax_t) = new_figure(11.0, 3.6, ncols=2)
    names = list(passes)
    kinds = list(dict.fromkeys(name for p in passes.values() for name, _ in p))
    family = {"eager": "#bbbbbb", "amax": "#4c72b0", "cast": "#dd8452"}    # a pass's first word: its colour
    left = np.zeros(len(names))
    for kind in kinds:
        widths = np.array([sum(b for n, b in passes[name] if n == kind) for name in names], dtype=float)
        ax_b.barh(names, widths, left=left, color=family.get(kind.split()[0], "#8172b2"), label=kind,
                  hatch="//" if "gelu" in kind.lower() and not kind.startswith("eager") else None, edgecolor="white")
        left += widths
    for i, total in enumerate(left):
        ax_b.text(total + 0.1, i, f"{total:.0f}", va="center", fontsize=8)
    ax_b.invert_yaxis()
    ax_b.set_xlim(0, max(left) * 1.5)                          # room for the legend beside the short bars
    ax_b.set_xlabel("bytes moved per element (bf16 in, fp8 and its transpose out)")
    ax_b.set_title("casting gelu(x) to fp8: the passes, counted", fontsize=10)
    ax_b.legend(fontsize=7, loc="lower right")
    measured = False
    for op, label in CAST_ROWS.items():
        pts = sorted((r["size"], r["GPU vs_scaled_mm"]) for r in rows or [] if r.get("op") == op
                     and "GPU vs_scaled_mm" in r)
        if pts:
            measured = True
            ax_t.plot(*zip(*pts), marker="o", label=label)
    if measured:
        ax_t.axhline(1.0, color="black", lw=1)
        ax_t.axhline(0.95, color="black", lw=1, ls="--")
        ax_t.text(0.01, 0.955, "within 5%", fontsize=8, transform=ax_t.get_yaxis_transform())
        _size_axis(ax_t, sorted({r["size"] for r in rows if r.get("op") in CAST_ROWS}))
        ax_t.set_ylabel("x of (_scaled_mm alone + GELU)")
        ax_t.set_title(f"gelu(x) Wᵀ on {device}, GPU time" + (f"\nmeasured {when}" if when else ""), fontsize=10)
        ax_t.legend(fontsize=8)
    else:
        ax_t.set_axis_off()
        ax_t.text(0.5, 0.5, "no committed GPU run of the GELU rows:\n`python -m frugal bench --section fp8`",
                  ha="center", va="center", fontsize=9, transform=ax_t.transAxes)
    return fig


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
