"""Lesson 00 (GPU economics): memory by kind, cost per GPU, loss curves, estimate beside count."""
from __future__ import annotations

from matplotlib.figure import Figure

from frugal.plots._common import COLORS, new_figure


def memory_bars(breakdowns: dict[str, dict[str, float]], gpu_memory_gb: dict[str, float] | None = None,
                title: str = "Training memory per GPU") -> Figure:
    """Stacked bars of bytes by kind (weights, gradients, optimizer, activations) for each named plan,
    with a dashed line at each GPU's memory."""
    fig, ax = new_figure()
    names = list(breakdowns)
    bottoms = [0.0] * len(names)
    for kind, color in COLORS.items():
        values = [breakdowns[n].get(kind, 0.0) / 1e9 for n in names]
        ax.bar(names, values, bottom=bottoms, color=color, label=kind)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    by_size: dict[float, list[str]] = {}
    for gpu, gb in (gpu_memory_gb or {}).items():         # one line per size: A100-80GB and H100 share 80 GB
        by_size.setdefault(gb, []).append(gpu)
    for gb, gpus in by_size.items():
        ax.axhline(gb, color="grey", ls="--", lw=1)
        ax.text(len(names) - 0.5, gb, f" {' / '.join(gpus)} {gb:g} GB", va="bottom", ha="right",
                fontsize=8, color="grey")
    ax.set_ylabel("GB (1e9 bytes)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def cost_bars(costs: dict[str, float], title: str = "Cost of the run", unit: str = "$") -> Figure:
    """Horizontal bars of one cost per GPU (dollars, days...), cheapest first."""
    fig, ax = new_figure(6.4, 0.5 + 0.45 * len(costs))
    items = sorted(costs.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4C72B0")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {unit}{v:,.0f}" if unit == "$" else f" {v:,.1f} {unit}", va="center", fontsize=8)
    ax.set_title(title)
    ax.set_xscale("log")
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
    ax.text(1, measured / scale, f"{measured / scale:.3g}", ha="center", va="bottom")
    ax.text(0, bottom, f"{bottom:.3g}", ha="center", va="bottom")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    return fig
