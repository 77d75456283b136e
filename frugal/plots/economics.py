"""Lesson 00 (GPU economics): memory by kind, cost per GPU, loss curves, estimate beside count."""
from __future__ import annotations

import math
import textwrap

from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, LogLocator, NullFormatter, NullLocator

from frugal.plots._common import COLORS, human_bytes, human_count, human_dollars, new_figure, _unit_axis


def memory_bars(breakdowns: dict[str, dict[str, float]], gpu_memory_gb: dict[str, float] | None = None,
                title: str = "Training memory per GPU", highlight: str | None = None,
                log: bool | None = None) -> Figure:
    """Stacked bars of bytes by kind (weights, gradients, optimizer, activations) for each named plan, its total
    written on top, with a dashed line at each GPU's memory (named on the right axis). highlight: a plan or a
    GPU drawn bold. log: a log axis (default: when the values span more than 20x, so 79 GB beside 80 GB and
    1.9 GB beside 120 GB both stay readable); every bar then starts at a power of ten and ends at its total."""
    fig, ax = new_figure()
    names = list(breakdowns)
    totals = [sum(breakdowns[n].get(k, 0.0) for k in COLORS) / 1e9 for n in names]
    span = [t for t in totals + list((gpu_memory_gb or {}).values()) if t > 0]
    log = (max(span) / min(span) > 20) if log is None and span else bool(log)
    parts = [v / 1e9 for n in names for k, v in breakdowns[n].items() if k in COLORS and v > 0]
    smallest = max(min(parts + span), max(span) / 1e4) if span else 1.0   # no component hidden under the floor
    floor = 10 ** math.floor(math.log10(min(smallest, min(span) / 2))) if log and span else 0.0
    xs = list(range(len(names)))
    tops = [0.0] * len(names)
    for kind, color in COLORS.items():
        for x, n in enumerate(names):
            lo, hi = tops[x], tops[x] + breakdowns[n].get(kind, 0.0) / 1e9
            tops[x] = hi
            lo, hi = max(lo, floor), max(hi, floor)              # on a log axis: clipped at the floor, never shifted
            ax.bar(x, hi - lo, bottom=lo, color=color, label=kind if x == 0 else None,
                   alpha=1.0 if highlight not in names or highlight == n else 0.35,
                   edgecolor="black" if highlight == n else None)
    for x, total in zip(xs, totals):
        ax.text(x, max(total, floor), human_bytes(total * 1e9, binary=False), ha="center", va="bottom", fontsize=8,
                fontweight="bold" if highlight == names[x] else None, zorder=4,   # over a GPU's line, not under
                bbox=dict(facecolor="white", edgecolor="none", pad=1.0, alpha=0.85))
    by_size: dict[float, list[str]] = {}
    for gpu, gb in (gpu_memory_gb or {}).items():         # one line per size: A100-80GB and H100 share 80 GB
        by_size.setdefault(gb, []).append(gpu)
    for gb, gpus in by_size.items():
        chosen = highlight in gpus
        ax.axhline(gb, color="#C44E52" if chosen else "#444444", ls="--", lw=2 if chosen else 1.2, zorder=3)
    ax.set_xticks(xs, [textwrap.fill(n, 14) for n in names], fontsize=8)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(floor, max(span) * 2)
        _unit_axis(ax.yaxis, lambda v: human_bytes(v * 1e9, binary=False))
    else:
        ax.set_ylim(0, max(span or [1]) * 1.12)
    if by_size:                                           # the GPUs on a right-hand axis: no label sits on a bar
        right = ax.secondary_yaxis("right")
        right.yaxis.set_major_locator(FixedLocator(list(by_size)))
        right.yaxis.set_major_formatter(FixedFormatter([f"{' / '.join(g)} {gb:g} GB" for gb, g in by_size.items()]))
        right.yaxis.set_minor_locator(NullLocator())
        right.tick_params(labelsize=8)
        for label, gpus in zip(right.get_yticklabels(), by_size.values()):
            if highlight in gpus:
                label.set_color("#C44E52")
                label.set_fontweight("bold")
    ax.set_ylabel("GB per GPU (1e9 bytes)" + (", log scale" if log else ""))
    ax.set_title(title, fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=8)
    return fig


def cost_bars(costs: dict[str, float], title: str = "Cost of the run", unit: str = "$",
              highlight: str | None = None) -> Figure:
    """Horizontal bars of one cost per GPU (dollars, days...), cheapest first, on a log axis whose bars start
    at a labelled power of ten below the cheapest; highlight: one GPU drawn in red, the others in blue."""
    fig, ax = new_figure(6.4, 0.9 + 0.45 * len(costs))
    items = sorted(costs.items(), key=lambda kv: kv[1])
    singular = unit[:-1] if unit.endswith("s") else unit                      # '1 day', '10 days'
    fmt = human_dollars if unit == "$" else (lambda v: f"{human_count(v)} {singular if v == 1 else unit}")
    lo, hi = items[0][1], items[-1][1]
    base = 10 ** math.floor(math.log10(lo / 1.5))            # a visible stub for the cheapest bar
    ax.barh([k for k, _ in items], [v - base for _, v in items], left=base,
            color=["#C44E52" if k == highlight else "#4C72B0" for k, _ in items])
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {fmt(v)}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(base, hi * 2.5)                                 # room for the last label
    decades = math.log10(hi * 2.5 / base)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,), numticks=12))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _unit_axis(ax.xaxis, fmt)
    ax.set_xlabel(f"{'US dollars' if unit == '$' else unit}, log scale (each bar starts at {fmt(base)})")
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
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
    """A stacked bar of the prediction by kind beside a bar of the counted total (the legend beside the axes,
    where it hides no bar)."""
    fig, ax = new_figure(6.0, 4.0)
    bottom = 0.0
    for kind, value in predicted.items():
        ax.bar("estimated", value / scale, bottom=bottom, label=kind)
        bottom += value / scale
    ax.bar("counted", measured / scale, color="black")
    ax.text(1, measured / scale, human_bytes(measured), ha="center", va="bottom", fontsize=8)
    ax.text(0, bottom, human_bytes(bottom * scale), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig
