"""Matplotlib figures for the lessons: pure functions, data in, Figure out (so tests can call them).

One section per lesson; a lesson adds its figures under its own heading.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

GIB = 2 ** 30
COLORS = {"weights": "#4C72B0", "gradients": "#DD8452", "optimizer": "#55A868", "activations": "#C44E52"}


def _figure(width: float = 6.4, height: float = 4.0, ncols: int = 1):
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), layout="constrained")
    plt.close(fig)  # figures are returned, not shown twice by pyplot
    return fig, axes


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


# ----------------------------------------------------------------------------- lesson 00: economics

def memory_bars(breakdowns: dict[str, dict[str, float]], gpu_memory_gb: dict[str, float] | None = None,
                title: str = "Training memory per GPU") -> Figure:
    """Stacked bars of bytes by kind (weights, gradients, optimizer, activations) for each named plan,
    with a dashed line at each GPU's memory."""
    fig, ax = _figure()
    names = list(breakdowns)
    bottoms = [0.0] * len(names)
    for kind, color in COLORS.items():
        values = [breakdowns[n].get(kind, 0.0) / 1e9 for n in names]
        ax.bar(names, values, bottom=bottoms, color=color, label=kind)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for gpu, gb in (gpu_memory_gb or {}).items():
        ax.axhline(gb, color="grey", ls="--", lw=1)
        ax.text(len(names) - 0.5, gb, f" {gpu} {gb:g} GB", va="bottom", ha="right", fontsize=8, color="grey")
    ax.set_ylabel("GB (1e9 bytes)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def cost_bars(costs: dict[str, float], title: str = "Cost of the run", unit: str = "$") -> Figure:
    """Horizontal bars of one cost per GPU (dollars, days...), cheapest first."""
    fig, ax = _figure(6.4, 0.5 + 0.45 * len(costs))
    items = sorted(costs.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4C72B0")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {unit}{v:,.0f}" if unit == "$" else f" {v:,.1f} {unit}", va="center", fontsize=8)
    ax.set_title(title)
    ax.set_xscale("log")
    return fig


def loss_curve(series: dict[str, list[float]], title: str = "Training loss", ylabel: str = "loss") -> Figure:
    """One line per named run: loss against step."""
    fig, ax = _figure()
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
    fig, ax = _figure(5.0, 4.0)
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


# ----------------------------------------------------------------------------- lesson 01: mixed precision


# ----------------------------------------------------------------------------- lesson 02: activation checkpointing


# ----------------------------------------------------------------------------- lesson 03: data parallel


# ----------------------------------------------------------------------------- lesson 04: sharding

def sharding_memory_bars(predicted: dict[str, dict[str, float]], measured: dict[str, dict[str, float]] | None = None,
                         title: str = "Memory per rank", unit: float = 2 ** 20, unit_name: str = "MiB") -> Figure:
    """For each plan (DP, stage 1-3): a stacked bar of the predicted bytes by kind, and beside it (hatched)
    the measured or counted bytes, so prediction and observation stand side by side."""
    fig, ax = _figure(7.0, 4.2)
    names = list(predicted)
    width = 0.38 if measured else 0.7
    for j, (series, offset, hatch) in enumerate(((predicted, -width / 2 if measured else 0.0, None),
                                                 (measured or {}, width / 2, "//"))):
        if not series:
            continue
        bottoms = [0.0] * len(names)
        xs = [i + offset for i in range(len(names))]
        for kind, color in COLORS.items():
            values = [series.get(n, {}).get(kind, 0.0) / unit for n in names]
            ax.bar(xs, values, width, bottom=bottoms, color=color, hatch=hatch, edgecolor="white",
                   label=kind if j == 0 else None)
            bottoms = [b + v for b, v in zip(bottoms, values)]
        for x, b in zip(xs, bottoms):
            ax.text(x, b, "pred." if j == 0 else "meas.", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(unit_name)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def comm_volume_bars(predicted: dict[str, float], counted: dict[str, float] | None = None,
                     title: str = "Bytes each rank sends per step") -> Figure:
    """Predicted (and counted) communication per step for each plan, labelled as a multiple of the first (DP)."""
    fig, ax = _figure(6.4, 3.8)
    names = list(predicted)
    width = 0.38 if counted else 0.7
    base = predicted[names[0]]
    for series, offset, label, color in ((predicted, -width / 2 if counted else 0.0, "predicted", "#8172B3"),
                                         (counted or {}, width / 2, "counted", "#937860")):
        if not series:
            continue
        xs = [i + offset for i in range(len(names))]
        values = [series.get(n, 0.0) / 2 ** 20 for n in names]
        ax.bar(xs, values, width, label=label, color=color)
        for x, n, v in zip(xs, names, values):
            ax.text(x, v, f"{series.get(n, 0.0) / base:.2f}×", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("MiB per step")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def max_model_bars(max_params: dict[str, float], memory_gb: float, world_size: int) -> Figure:
    """The largest model (parameters) whose training state fits memory_gb per rank, for each plan."""
    fig, ax = _figure(6.4, 3.6)
    names = list(max_params)
    values = [max_params[n] / 1e9 for n in names]
    ax.bar(names, values, color="#4C72B0")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3g} B", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("parameters (billions)")
    ax.set_title(f"Largest model that fits {memory_gb:g} GB per rank, {world_size} ranks")
    return fig



# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

