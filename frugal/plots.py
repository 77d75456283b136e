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


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

def model_size_frontiers(curves: dict[str, list[dict]], budget_bytes: float,
                         title: str = "The largest model a budget trains") -> Figure:
    """Estimated training bytes against parameters, one line per plan, the budget as a dashed line.

    curves: plan name -> rows with 'params', 'estimated_bytes' and optionally 'verified' (True: a real step
    trained, False: it ran out of memory) and 'measured_bytes'; the largest size under the budget is starred.
    """
    fig, ax = _figure()
    for i, (name, rows) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot([r["params"] for r in rows], [r["estimated_bytes"] / 1e9 for r in rows], "-o", ms=3,
                color=color, label=f"{name} (estimated)")
        fitting = [r for r in rows if r["estimated_bytes"] <= budget_bytes]
        if fitting:
            best = max(fitting, key=lambda r: r["params"])
            ax.plot(best["params"], best["estimated_bytes"] / 1e9, "*", ms=14, color=color)
            ax.annotate(f"{best['params'] / 1e6:,.0f}M", (best["params"], best["estimated_bytes"] / 1e9),
                        textcoords="offset points", xytext=(6, -12), fontsize=8, color=color)
        for r in rows:
            if r.get("verified") is not None:
                y = (r.get("measured_bytes") or r["estimated_bytes"]) / 1e9
                ax.plot(r["params"], y, "s" if r["verified"] else "x", ms=7, color=color, mfc="none")
    ax.axhline(budget_bytes / 1e9, color="grey", ls="--", lw=1)
    ax.text(ax.get_xlim()[0], budget_bytes / 1e9, f" budget {budget_bytes / 1e9:g} GB", va="bottom",
            fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("GB per GPU (1e9 bytes)")
    ax.set_title(title + "\n(square: a real step trained, x: out of memory)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return fig

