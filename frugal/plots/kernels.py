"""Lesson 06 (Triton kernels): which program owns each element, bandwidth, fused against eager, head memory."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from frugal.plots._common import _bytes_log_axis, new_figure, _unit_axis
from frugal.units import human_rate


def kernel_grid(n: int, block_size: int, programs: int | None = None, max_shown: int = 4096) -> Figure:
    """Which program of the grid handles each element of an n-element add: one colour per program,
    grey for the masked lanes past the end of the last block."""
    n_blocks = max(1, -(-n // block_size))
    grid = n_blocks if programs is None else max(1, min(programs, n_blocks))
    lanes = n_blocks * block_size
    shown = min(lanes, max_shown)
    owner = (np.arange(shown) // block_size) % grid                       # grid-stride: block b -> program b % grid
    fig, ax = new_figure(8.0, 1.8)
    colors = plt.get_cmap("tab20")(owner % 20)
    colors[np.arange(shown) >= n] = (0.85, 0.85, 0.85, 1.0)
    ax.imshow(colors[None, :, :], aspect="auto", interpolation="nearest", extent=(0, shown, 0, 1))
    ax.set_yticks([])
    ax.set_xlabel("element index" + (f" (first {shown} of {lanes} lanes)" if shown < lanes else ""))
    ax.set_title(f"n={n}, BLOCK_SIZE={block_size}: {n_blocks} blocks on {grid} programs, "
                 f"{lanes - n} masked lanes (grey)", fontsize=9)
    return fig


def bandwidth_vs_size(series: dict[str, tuple[list[int], list[float]]], peak_gbps: float | None = None,
                      title: str = "Vector add bandwidth") -> Figure:
    """GB/s against elements, both axes log (an interpreter's 0.001 GB/s and a GPU's 3,000 GB/s on one plot),
    one line per named implementation, its last point labelled; a dashed line at a peak, if given."""
    fig, ax = new_figure()
    ends = []
    for name, (sizes, values) in series.items():
        line, = ax.plot(sizes, values, marker="o", label=name)
        ends.append((values[-1], sizes[-1], line.get_color()))
    # each line's last point labelled (the largest size, where it levels off); labels of lines that end close
    # together (ours beside torch.add on a GPU) are stacked a line apart instead of printed on top of each other
    previous, dy = None, -3
    for value, size, color in sorted(ends, key=lambda e: e[0], reverse=True):
        dy = dy - 9 if previous is not None and np.log10(previous / value) < 0.15 else -3
        ax.annotate(human_rate(value * 1e9), (size, value), textcoords="offset points", xytext=(6, dy),
                    fontsize=7, color=color)
        previous = value
    if peak_gbps:
        ax.axhline(peak_gbps, color="grey", ls="--", lw=1)
        ax.text(min(min(s) for s, _ in series.values()), peak_gbps, f" peak {human_rate(peak_gbps * 1e9)}",
                va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _unit_axis(ax.yaxis, lambda v: human_rate(v * 1e9))
    ax.set_xlabel("elements (float32)")
    ax.set_ylabel("bandwidth (bytes read + written / time), log scale")
    ax.margins(x=0.15, y=0.2)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def fused_vs_unfused(times_ms: dict[str, float], bytes_moved: dict[str, float],
                     title: str = "Fused against eager, forward + backward") -> Figure:
    """Two bar panels, one bar per implementation: time (ms) and bytes moved (MiB)."""
    fig, (ax_t, ax_b) = new_figure(8.0, 3.6, ncols=2)
    names = list(times_ms)
    colors = ["#C44E52" if "ours" in n or "fused" in n else "#4C72B0" for n in names]
    ax_t.bar(names, [times_ms[n] for n in names], color=colors)
    ax_t.set_ylabel("ms")
    ax_t.set_title("time")
    ax_b.bar(names, [bytes_moved[n] / 2 ** 20 for n in names], color=colors)
    ax_b.set_ylabel("MiB read + written")
    ax_b.set_title("bytes moved")
    for ax in (ax_t, ax_b):
        ax.tick_params(axis="x", labelsize=8, rotation=15)
    fig.suptitle(title)
    return fig


def cross_entropy_memory(by_vocab: dict[str, tuple[list[int], list[float]]],
                         by_tokens: dict[str, tuple[list[int], list[float]]],
                         title: str = "Output head + cross-entropy: peak memory",
                         vocab: int | None = None, tokens: int | None = None) -> Figure:
    """Peak bytes of the head with and without chunking, against vocabulary (left) and tokens (right); the
    chosen vocab and tokens marked on each panel (each panel holds the other one fixed at its value)."""
    fig, axes = new_figure(9.0, 3.6, ncols=2)
    panels = ((axes[0], by_vocab, "vocabulary size", vocab, f"at {tokens:,} tokens" if tokens else ""),
              (axes[1], by_tokens, "tokens per step", tokens, f"at vocab {vocab:,}" if vocab else ""))
    for ax, series, xlabel, chosen, fixed in panels:
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=name)
        if chosen:
            ax.axvline(chosen, color="black", lw=1, ls=":", label=f"chosen: {chosen:,}")
        if fixed:
            ax.set_title(fixed, fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _bytes_log_axis(ax.yaxis)                       # '100 MiB', '10 GiB', not 10^-1 and 10^1
        ax.set_xlabel(xlabel)
        ax.set_ylabel("peak bytes (log scale)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig
