"""Lesson 01 (mixed precision): the range of each number format, gradients against it, the loss scale, runs."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from frugal.plots._common import new_figure


FORMAT_COLORS = {"fp32": "#4C72B0", "tf32": "#8172B3", "fp16": "#DD8452", "bf16": "#55A868",
                 "fp8_e4m3": "#C44E52", "fp8_e5m2": "#937860"}


def _fmt_get(fmt, key: str) -> float:
    """A field of a numerics.Format or of its as_dict() row."""
    return fmt[key.replace("_", " ")] if isinstance(fmt, dict) else getattr(fmt, key)


def format_ranges(table: dict, value: float | None = None, highlight: str | None = None,
                  title: str = "What each format can hold (log2 scale)") -> Figure:
    """One lane per format on a log2 axis: subnormals (light), normals (dark), up to max; a line at `value`."""
    fig, ax = new_figure(7.0, 0.6 + 0.45 * len(table))
    for i, (name, fmt) in enumerate(table.items()):
        lo, mid, hi = (math.log2(_fmt_get(fmt, k)) for k in ("smallest_subnormal", "smallest_normal", "max"))
        color = FORMAT_COLORS.get(name, "grey")
        alpha = 1.0 if highlight in (None, name) else 0.35
        ax.barh(i, mid - lo, left=lo, color=color, alpha=0.35 * alpha, height=0.6)
        ax.barh(i, hi - mid, left=mid, color=color, alpha=alpha, height=0.6)
    ax.set_yticks(range(len(table)), list(table))
    ax.invert_yaxis()
    if value is not None and value > 0:
        ax.axvline(math.log2(value), color="black", lw=1.5)
        ax.text(math.log2(value), len(table) - 0.42, f" |x| = {value:.3g}", fontsize=8, va="center",
                bbox=dict(facecolor="white", edgecolor="none", pad=1.0, alpha=0.85))   # inside, under the lanes
    ax.set_ylim(len(table) - 0.2, -0.5)
    ax.set_xlabel("log2 |x|   (light: subnormal, dark: normal; left of the bar rounds to 0, right overflows)")
    top = ax.secondary_xaxis("top", functions=(lambda b: b / math.log2(10), lambda d: d * math.log2(10)))
    top.set_xticks(range(-40, 40, 10), [f"1e{k}" if k else "1" for k in range(-40, 40, 10)], fontsize=8)
    top.set_xlabel("|x| in powers of ten", fontsize=8)
    ax.set_title(title)
    return fig


def gradient_histogram(magnitudes, table: dict, formats: tuple = ("fp16", "bf16", "fp8_e5m2"),
                       title: str = "Gradient magnitudes of one TinyGPT step vs each format's range") -> Figure:
    """Histogram of log2 |g| (nonzero values) with each format's underflow edge (half its smallest subnormal,
    solid) and smallest normal (dashed). The legend's fractions are of all values, zeros included, as
    numerics.stats_table counts them; the exact zeros (no log) are not drawn, and the title says how many."""
    g_all = np.asarray(magnitudes, dtype=np.float64).ravel()
    g_all = g_all[np.isfinite(g_all)]
    g = g_all[g_all > 0]
    total = max(g_all.size, 1)
    fig, ax = new_figure(7.0, 4.0)
    ax.hist(np.log2(g), bins=80, color="#999999")
    for name in formats:
        if name not in table:
            continue
        fmt, color = table[name], FORMAT_COLORS.get(name, "black")
        edge = _fmt_get(fmt, "smallest_subnormal") / 2
        frac = float((g <= edge).sum()) / total
        ax.axvline(np.log2(edge), color=color, lw=2, label=f"{name}: {frac:.1%} round to 0")
        ax.axvline(np.log2(_fmt_get(fmt, "smallest_normal")), color=color, lw=1, ls="--")
    zeros = g_all.size - g.size
    ax.set_xlabel("log2 |gradient|")
    ax.set_ylabel("count")
    ax.set_title(f"{title}\n{g_all.size:,} values, {zeros / total:.1%} exactly 0 (not drawn); "
                 f"fractions are of all values", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def scale_history(scales: list[float], skipped: list[int] | None = None,
                  title: str = "Loss scale over training") -> Figure:
    """log2 of the loss scale per step, with the skipped steps (inf/NaN gradients) marked."""
    fig, ax = new_figure(6.4, 3.2)
    ax.step(range(len(scales)), [math.log2(s) for s in scales], where="post", color="#4C72B0", label="scale")
    for i, s in enumerate(skipped or []):
        ax.axvline(s, color="#C44E52", lw=1, alpha=0.6, label="skipped step" if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("log2 scale")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def precision_runs(runs: dict[str, dict], title: str = "Precision on a live TinyGPT") -> Figure:
    """Three panels per named run: loss curve; median step time (ms); memory measured vs estimated.

    Each run is a dict with 'loss' (list), 'step_ms', 'memory_bytes', 'memory_estimate_bytes' (or None)
    and 'memory_kind' (what was measured: peak CUDA memory or saved activations).
    """
    fig, (ax_loss, ax_time, ax_mem) = new_figure(12.0, 3.6, ncols=3)
    names = list(runs)
    for name, r in runs.items():
        ax_loss.plot(range(len(r["loss"])), r["loss"], label=name)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7)
    ax_time.bar(names, [runs[n]["step_ms"] for n in names], color="#4C72B0")
    ax_time.set_ylabel("median step (ms)")
    xs = range(len(names))
    ax_mem.bar([x - 0.2 for x in xs], [runs[n]["memory_bytes"] / 2 ** 20 for n in names], 0.4, label="measured")
    est = [runs[n].get("memory_estimate_bytes") for n in names]
    ax_mem.bar([x + 0.2 for x in xs], [(e or 0) / 2 ** 20 for e in est], 0.4, label="estimate.py", color="#DD8452")
    ax_mem.set_xticks(list(xs), names)
    kinds = sorted({runs[n].get("memory_kind", "memory") for n in names})
    ax_mem.set_ylabel("MiB (" + ", ".join(kinds) + ")")
    ax_mem.legend(fontsize=7)
    for ax in (ax_time, ax_mem):
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle(title)
    return fig


def step_time_bars(steady_ms: dict[str, float], synced_ms: dict[str, float],
                   title: str = "Step time by precision") -> Figure:
    """Two bars per setting: the median step run back to back (a training loop's steady state) and with a
    sync after every step (the GPU waits for Python's first kernels each time); coloured by number format."""
    fig, ax = new_figure(6.4, 3.6)
    names = list(steady_ms)
    xs = range(len(names))
    colors = [FORMAT_COLORS.get(n.split("+")[0], "grey") for n in names]
    ax.bar([x - 0.2 for x in xs], [steady_ms[n] for n in names], width=0.4, color=colors,
           label="steady state (back to back)")
    ax.bar([x + 0.2 for x in xs], [synced_ms[n] for n in names], width=0.4, color=colors, alpha=0.45, hatch="//",
           label="synchronized after every step")
    ax.set_xticks(list(xs), names)
    ax.legend(fontsize=8)
    ax.set_ylabel("median step (ms)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)
    return fig
