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

def ring_steps(states: list, titles: list[str] | None = None,
               title: str = "Ring all-reduce: whose data each chunk holds") -> Figure:
    """One panel per step of collectives.replay_ring: rows are ranks, columns chunks, the colour and
    the label say which ranks' data a chunk has summed (full sum = darkest)."""
    import numpy as np
    n = len(states[0])
    fig, axes = _figure(1.9 * len(states) + 0.6, 2.2, ncols=len(states))
    axes = np.atleast_1d(axes)
    for t, (ax, state) in enumerate(zip(axes, states)):
        grid = np.array([[len(cell) for cell in row] for row in state])
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=n + 0.5)
        for r in range(n):
            for c in range(n):
                ax.text(c, r, "".join(str(i) for i in sorted(state[r][c])), ha="center", va="center",
                        fontsize=8, color="white" if grid[r, c] == n else "black")
        ax.set_xticks(range(n), [f"c{c}" for c in range(n)], fontsize=7)
        ax.set_yticks(range(n), [f"rank {r}" for r in range(n)] if t == 0 else [], fontsize=7)
        ax.set_title(titles[t] if titles else f"step {t}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def bytes_per_rank(measured: dict[str, list[float]], predicted: dict[str, list[float]],
                   title: str = "Bytes sent per rank by one all-reduce") -> Figure:
    """Grouped bars of bytes each rank sent, per algorithm, with the formula's value as a black tick."""
    fig, ax = _figure()
    names = list(measured)
    n = len(next(iter(measured.values())))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [r + (k - (len(names) - 1) / 2) * width for r in range(n)]
        ax.bar(xs, measured[name], width, label=f"{name} (counted)")
        ax.scatter(xs, predicted[name], marker="_", s=400, color="black",
                   label="formula" if k == 0 else None, zorder=3)
    ax.set_xticks(range(n), [f"rank {r}" for r in range(n)])
    ax.set_ylabel("bytes sent")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def overlap_timeline(timeline: list[tuple], backward_end_s: float,
                     title: str = "Backward compute and bucket all-reduces") -> Figure:
    """Gantt of one backward: compute from 0 to backward_end_s, then one bar per bucket's all-reduce
    from launch to done (timeline rows: (bucket, launched_s, done_s, bytes), as DataParallelBucket keeps)."""
    fig, ax = _figure(6.4, 1.2 + 0.3 * len(timeline))
    ax.barh(0, backward_end_s * 1e3, left=0, color="#55A868", label="backward (compute)")
    for i, (b, t0, t1, nbytes) in enumerate(timeline, start=1):
        ax.barh(i, (t1 - t0) * 1e3, left=t0 * 1e3, color="#DD8452",
                label="all-reduce (communication)" if i == 1 else None)
        ax.text(t1 * 1e3, i, f" {human_bytes(nbytes)}", va="center", fontsize=7)
    ax.axvline(backward_end_s * 1e3, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(timeline) + 1), ["compute"] + [f"bucket {t[0]}" for t in timeline], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms after forward")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    ax.margins(x=0.15)
    return fig


def scaling(tokens_per_s: dict[str, dict[int, float]], title: str = "Data parallel scaling",
            ideal_from: str | None = None) -> Figure:
    """tokens/s against world size, one line per flavour, with the ideal N x (one rank) dashed."""
    fig, ax = _figure()
    for name, by_n in tokens_per_s.items():
        ns = sorted(by_n)
        ax.plot(ns, [by_n[n] for n in ns], marker="o", label=name)
    base_name = ideal_from or next(iter(tokens_per_s))
    base = tokens_per_s[base_name]
    if 1 in base:
        ns = sorted({n for by_n in tokens_per_s.values() for n in by_n})
        ax.plot(ns, [base[1] * n for n in ns], ls="--", color="grey", label=f"ideal ({base_name} x N)")
    ax.set_xlabel("ranks (world size)")
    ax.set_ylabel("tokens / s")
    ax.set_xticks(sorted({n for by_n in tokens_per_s.values() for n in by_n}))
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def bus_bandwidth(rows: list[dict], title: str = "All-reduce bus bandwidth") -> Figure:
    """Bars of busbw (GB/s) per algorithm, from collectives.benchmark_all_reduce rows."""
    fig, ax = _figure(5.5, 3.5)
    names = [r["algorithm"] for r in rows]
    values = [r["busbw_GBps"] for r in rows]
    ax.bar(names, values, color=["#4C72B0", "#C44E52", "#55A868"][: len(rows)])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("bus bandwidth, GB/s  (S/t x 2(n-1)/n)")
    ax.set_title(title)
    return fig



# ----------------------------------------------------------------------------- lesson 04: sharding


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

