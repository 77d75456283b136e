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

PIPE_COLORS = {"F": "#4C72B0", "B": "#DD8452"}


def pipeline_gantt(timelines: dict[str, list[list[dict]]], unit: str = "ms", scale: float = 1e3) -> Figure:
    """One panel per named timeline: a row per stage, a bar per forward (F) or backward (B) event, labelled by
    micro-batch; white space is the bubble. Times are shifted so the step starts at 0."""
    n = len(timelines)
    rows = max(len(tl) for tl in timelines.values())
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 0.6 + (0.45 * rows + 0.6) * n), layout="constrained", squeeze=False)
    plt.close(fig)
    for ax, (name, tl) in zip(axes[:, 0], timelines.items()):
        t0 = min(e["start"] for stage in tl for e in stage)
        for s, stage in enumerate(tl):
            for e in stage:
                x, w = (e["start"] - t0) * scale, (e["end"] - e["start"]) * scale
                ax.barh(s, w, left=x, color=PIPE_COLORS[e["kind"]], edgecolor="white", height=0.8)
                ax.text(x + w / 2, s, f"{e['kind']}{e['mb']}", ha="center", va="center", fontsize=7, color="white")
        ax.set_yticks(range(len(tl)), [f"stage {s}" for s in range(len(tl))])
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(unit)
    return fig


def bubble_vs_formula(measured: dict[str, dict[int, float]], n_stages: int) -> Figure:
    """Measured bubble fraction per schedule against the number of micro-batches m, over (p-1)/(m+p-1)."""
    fig, ax = _figure(5.5, 3.6)
    ms = sorted({m for per_m in measured.values() for m in per_m})
    grid = [m / 4 for m in range(4, 4 * max(ms) + 1)]
    ax.plot(grid, [(n_stages - 1) / (m + n_stages - 1) for m in grid], color="grey", label="(p-1)/(m+p-1)")
    for (name, per_m), marker in zip(measured.items(), "os^v"):
        ax.plot(sorted(per_m), [per_m[m] for m in sorted(per_m)], marker, label=f"{name} measured")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.set_xlabel("micro-batches m")
    ax.set_ylabel("bubble fraction")
    ax.set_ylim(0, 1)
    ax.set_title(f"Pipeline bubble, p={n_stages} stages")
    ax.legend(fontsize=8)
    return fig


def activation_per_stage(values: dict[str, list[float]], ylabel: str = "saved activations (MiB)",
                         scale: float = 2 ** 20) -> Figure:
    """Grouped bars: peak activation memory held by each stage under each schedule."""
    fig, ax = _figure(5.5, 3.6)
    names = list(values)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [s + (k - (len(names) - 1) / 2) * width for s in range(len(values[name]))]
        ax.bar(xs, [v / scale for v in values[name]], width, label=name)
    ax.set_xticks(range(len(values[names[0]])), [f"stage {s}" for s in range(len(values[names[0]]))])
    ax.set_ylabel(ylabel)
    ax.set_title("Peak activation memory per stage")
    ax.legend(fontsize=8)
    return fig


def rank_grid(dp: int, tp: int, pp: int) -> Figure:
    """The dp x tp x pp ranks as boxes: one panel per data-parallel replica, a column per pipeline stage,
    a row per tensor-parallel shard; rank = (stage * dp + dp_rank) * tp + tp_rank, Megatron's order (tp innermost,
    so a layer's shards share a server's NVLink; pipeline outermost)."""
    shown = min(dp, 4)
    fig, axes = plt.subplots(1, shown, figsize=(min(2.0 + 1.1 * pp * shown, 12), 0.9 + 0.5 * tp),
                             layout="constrained", squeeze=False)
    plt.close(fig)
    for d, ax in enumerate(axes[0]):
        for s in range(pp):
            for t in range(tp):
                rank = (s * dp + d) * tp + t
                ax.add_patch(plt.Rectangle((s, t), 0.9, 0.9, color=plt.cm.tab10(s % 10), alpha=0.35 + 0.5 * t / max(tp, 1)))
                ax.text(s + 0.45, t + 0.45, str(rank), ha="center", va="center", fontsize=8)
        ax.set_xlim(-0.1, pp)
        ax.set_ylim(tp, -0.1)
        ax.set_xticks([s + 0.45 for s in range(pp)], [f"stage {s}" for s in range(pp)], fontsize=7)
        ax.set_yticks([t + 0.45 for t in range(tp)], [f"tp {t}" for t in range(tp)], fontsize=7)
        ax.set_title(f"replica {d}" + (f"  (of {dp})" if d == shown - 1 and dp > shown else ""), fontsize=9)
        ax.set_frame_on(False)
    fig.suptitle(f"dp={dp} x tp={tp} x pp={pp} = {dp * tp * pp} ranks", fontsize=10)
    return fig



# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

