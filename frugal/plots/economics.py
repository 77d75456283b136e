"""Lesson 00 (GPU economics): memory by kind, cost per GPU, loss curves, estimate beside count."""
from __future__ import annotations

import math
import textwrap

from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter

from frugal.plots._common import COLORS, human_bytes, human_count, human_dollars, new_figure, unit_axis


def memory_bars(breakdowns: dict[str, dict[str, float]], gpu_memory_gb: dict[str, float] | None = None,
                title: str = "Training memory per GPU", highlight: str | None = None,
                log: bool | None = None) -> Figure:
    """Stacked bars of bytes by kind (weights, gradients, optimizer, activations) for each named plan, its total
    written on top, with a dashed line at each GPU's memory. highlight: a plan or GPU drawn bold, the rest faded.
    log: a log axis (default: when the totals span more than 20x, so 79 GB beside 80 GB stays readable)."""
    fig, ax = new_figure()
    names = list(breakdowns)
    totals = [sum(breakdowns[n].get(k, 0.0) for k in COLORS) / 1e9 for n in names]
    lines = {gb: gpu for gpu, gb in (gpu_memory_gb or {}).items()}
    span = [t for t in totals + list(lines) if t > 0]
    log = (max(span) / min(span) > 20) if log is None and span else bool(log)
    floor = 10 ** math.floor(math.log10(min(span) / 2)) if log and span else 0.0   # where every bar starts
    xs = range(len(names))
    bottoms = [floor] * len(names)
    for kind, color in COLORS.items():
        values = [breakdowns[n].get(kind, 0.0) / 1e9 for n in names]
        alphas = [1.0 if highlight in (None, n) else 0.35 for n in names]
        for x, v, b, a in zip(xs, values, bottoms, alphas):
            ax.bar(x, v, bottom=b, color=color, alpha=a, label=kind if x == 0 else None,
                   edgecolor="black" if highlight == names[x] else None)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for x, total in zip(xs, totals):
        ax.text(x, floor + total, f"{total:,.3g} GB", ha="center", va="bottom", fontsize=8,
                fontweight="bold" if highlight == names[x] else None)
    by_size: dict[float, list[str]] = {}
    for gpu, gb in (gpu_memory_gb or {}).items():         # one line per size: A100-80GB and H100 share 80 GB
        by_size.setdefault(gb, []).append(gpu)
    for gb, gpus in by_size.items():
        chosen = highlight in gpus
        ax.axhline(gb, color="#C44E52" if chosen else "grey", ls="--", lw=2 if chosen else 1)
        ax.text(len(names) - 0.5, gb, f" {' / '.join(gpus)} {gb:g} GB", va="bottom", ha="right",
                fontsize=8, color="#C44E52" if chosen else "grey", fontweight="bold" if chosen else None)
    ax.set_xticks(list(xs), [textwrap.fill(n, 14) for n in names], fontsize=8)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        unit_axis(ax.yaxis, lambda v: f"{v:,.4g} GB")
    ax.set_ylabel("GB per GPU (1e9 bytes)" + (", log scale" if log else ""))
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)   # outside: the bars may reach the top
    return fig


def cost_bars(costs: dict[str, float], title: str = "Cost of the run", unit: str = "$",
              highlight: str | None = None) -> Figure:
    """Horizontal bars of one cost per GPU (dollars, days...), cheapest first, on a log axis whose bars start
    at a labelled power of ten below the cheapest; highlight: one GPU drawn in red, the others in blue."""
    fig, ax = new_figure(6.4, 0.9 + 0.45 * len(costs))
    items = sorted(costs.items(), key=lambda kv: kv[1])
    fmt = human_dollars if unit == "$" else (lambda v: f"{human_count(v)} {unit}")
    lo, hi = items[0][1], items[-1][1]
    base = 10 ** math.floor(math.log10(lo / 1.5))            # a visible stub for the cheapest bar
    ax.barh([k for k, _ in items], [v - base for _, v in items], left=base,
            color=["#C44E52" if k == highlight else "#4C72B0" for k, _ in items])
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {fmt(v)}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(base, hi * 4)                                 # room for the last label
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
    ax.xaxis.set_minor_formatter(NullFormatter())
    unit_axis(ax.xaxis, fmt)
    ax.set_xlabel(f"{'US dollars' if unit == '$' else unit}, log scale (each bar starts at {fmt(base)})")
    ax.set_title(title)
    return fig


def loss_curve(series: dict[str, list[float]], title: str = "Training loss", ylabel: str = "loss") -> Figure:
    """One line per named run: loss against step."""
    fig, ax = new_figure()
    for name, values in series.items():
        ax.plot(range(len(values)), values, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    return fig


def predicted_vs_measured(predicted: dict[str, float], measured: float, title: str = "Activation memory",
                          unit: str = "MiB", scale: float = 2 ** 20) -> Figure:
    """A stacked bar of the prediction by kind beside a bar of the measured total."""
    fig, ax = new_figure(5.0, 4.0)
    bottom = 0.0
    for kind, value in predicted.items():
        ax.bar("estimated", value / scale, bottom=bottom, label=kind)
        bottom += value / scale
    ax.bar("measured", measured / scale, color="black")
    ax.text(1, measured / scale, human_bytes(measured), ha="center", va="bottom", fontsize=8)
    ax.text(0, bottom, human_bytes(bottom * scale), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    return fig
