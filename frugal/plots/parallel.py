"""Lessons 03-05 (data parallel, sharding, tensor and pipeline parallel): who holds what, who sends what, when."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from frugal.plots._common import COLORS, _unit_axis, human_bytes, human_count, new_figure
from frugal.units import human_rate


# ----------------------------------------------------------------------------- lesson 03: data parallel

def ring_steps(states: list, titles: list[str] | None = None,
               title: str = "Ring all-reduce: whose data each chunk holds") -> Figure:
    """One panel per step of collectives.replay_ring: rows are ranks, columns chunks, the colour and
    the label say which ranks' data a chunk has summed (full sum = darkest)."""
    n = len(states[0])
    fig, axes = new_figure(1.9 * len(states) + 0.6, 2.2, ncols=len(states))
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
    fig, ax = new_figure()
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


FLAVOUR_NAMES = {"naive": "ours, naive\n(after backward)", "bucket": "ours, bucketed\n(during backward)",
                 "ddp": "torch DDP"}


def _exposed_panel(ax, alone_ms: float, steps_ms: dict[str, float], title: str) -> None:
    """One bar per data-parallel flavour: its step on N GPUs split into one GPU's step alone (compute) and the
    rest, the communication that backward did not hide, written in ms."""
    names = ["1 GPU alone\n(no communication)"] + [FLAVOUR_NAMES.get(f, f) for f in steps_ms]
    totals = [alone_ms] + list(steps_ms.values())
    ys = range(len(names))
    ax.barh(ys, [min(t, alone_ms) for t in totals], color="#55A868", label="one GPU's step (compute)")
    ax.barh(ys, [max(t - alone_ms, 0) for t in totals], left=alone_ms, color="#DD8452",
            label="communication not hidden")
    for y, t in zip(ys, totals):
        ax.text(t, y, f" {t:.1f} ms" + (f" (+{t - alone_ms:.1f})" if y else ""), va="center", fontsize=7)
    ax.set_yticks(list(ys), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("step time (ms, median)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=2)
    ax.margins(x=0.25)


def overlap_timeline(timeline: list[tuple], backward_end_s: float,
                     title: str = "Backward compute and bucket all-reduces", reference: dict | None = None) -> Figure:
    """Gantt of one backward: compute from 0 to backward_end_s, then one bar per bucket's all-reduce
    from launch to done (timeline rows: (bucket, launched_s, done_s, bytes), as DataParallelBucket keeps).
    reference: {'title', 'alone_ms', 'steps_ms'} of a committed GPU run (results.data_parallel_steps), drawn
    beside as each flavour's step against one GPU's alone: what overlap hides where it can."""
    height = 1.2 + 0.3 * max(len(timeline), 2 + 2 * len(reference["steps_ms"]) if reference else 0)
    fig, axes = new_figure(12.0 if reference else 6.4, height, ncols=2 if reference else 1)
    ax = axes[0] if reference else axes
    ax.barh(0, backward_end_s * 1e3, left=0, color="#55A868", label="backward (compute)")
    for i, (b, t0, t1, nbytes) in enumerate(timeline, start=1):
        ax.barh(i, (t1 - t0) * 1e3, left=t0 * 1e3, color="#DD8452",
                label="all-reduce (communication)" if i == 1 else None)
        ax.text(t1 * 1e3, i, f" {human_bytes(nbytes)}", va="center", fontsize=7)
    ax.axvline(backward_end_s * 1e3, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(timeline) + 1), ["compute"] + [f"bucket {t[0]}" for t in timeline], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms after forward")
    ax.set_title(title, fontsize=10 if reference else None)
    ax.legend(fontsize=7, loc="upper right")
    ax.margins(x=0.15)
    if reference:
        _exposed_panel(axes[1], reference["alone_ms"], reference["steps_ms"], reference["title"])
    return fig


def scaling(tokens_per_s: dict[str, dict[int, float]], title: str = "Data parallel scaling",
            ideal_from: str | None = None) -> Figure:
    """tokens/s against world size, one line per flavour, with the ideal N x (one rank) dashed."""
    fig, ax = new_figure()
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
    _unit_axis(ax.yaxis, human_count)                 # '550 K', not 550000
    ax.set_xticks(sorted({n for by_n in tokens_per_s.values() for n in by_n}))
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def bus_bandwidth(rows: list[dict], title: str = "All-reduce bus bandwidth") -> Figure:
    """Bars of busbw (GB/s) per algorithm, from collectives.benchmark_all_reduce rows."""
    fig, ax = new_figure(5.5, 3.5)
    names = [r["algorithm"] for r in rows]
    values = [r["busbw_GBps"] for r in rows]
    ax.bar(names, values, color=["#4C72B0", "#C44E52", "#55A868"][: len(rows)])
    for i, v in enumerate(values):
        ax.text(i, v, human_rate(v * 1e9), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("bus bandwidth, GB/s  (S/t x 2(n-1)/n)")
    ax.set_title(title)
    return fig


# ----------------------------------------------------------------------------- lesson 04: sharding


def sharding_memory_bars(predicted: dict[str, dict[str, float]], measured: dict[str, dict[str, float]] | None = None,
                         title: str = "Memory per rank", unit: float = 2 ** 20, unit_name: str = "MiB") -> Figure:
    """For each plan (DP, stage 1-3): a stacked bar of the predicted bytes by kind, and beside it (hatched)
    the measured or counted bytes, so prediction and observation stand side by side."""
    fig, ax = new_figure(7.6, 4.2)
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
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel(unit_name)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)   # outside: the bars reach the top
    return fig


def comm_volume_bars(predicted: dict[str, float], counted: dict[str, float] | None = None,
                     title: str = "Bytes each rank sends per step") -> Figure:
    """Predicted (and counted) communication per step for each plan, labelled as a multiple of the first (DP)."""
    fig, ax = new_figure(6.4, 3.8)
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


def zero_on_gpus(plans: dict[str, dict], title: str) -> Figure:
    """A committed multi-GPU run of the sharding plans: tokens/s per plan (labelled against the first, DDP), and
    each plan's per-rank peak memory measured (bar) beside the prediction (black tick). plans: name -> a row with
    tokens_per_s, peak_bytes_measured and peak_bytes_predicted."""
    fig, (ax_s, ax_m) = new_figure(11.0, 3.4, ncols=2)
    names = list(plans)
    ys = range(len(names))
    base = plans[names[0]]["tokens_per_s"]
    speed = [plans[n]["tokens_per_s"] for n in names]
    ax_s.barh(ys, speed, color=["#4C72B0" if i == 0 else "#8172B3" for i in ys])
    for y, v in zip(ys, speed):
        ax_s.text(v, y, f" {human_count(v)} ({v / base:.2f}× {names[0]})", va="center", fontsize=7)
    ax_s.set_yticks(list(ys), names, fontsize=8)
    ax_s.invert_yaxis()
    ax_s.margins(x=0.35)
    _unit_axis(ax_s.xaxis, human_count)
    ax_s.set_xlabel("tokens/s, all ranks together")
    measured = [(plans[n].get("peak_bytes_measured") or 0) / 2 ** 30 for n in names]
    predicted = [(plans[n].get("peak_bytes_predicted") or 0) / 2 ** 30 for n in names]
    ax_m.barh(ys, measured, color=COLORS["activations"], alpha=0.8, label="measured peak per rank")
    ax_m.plot(predicted, list(ys), "|", color="black", ms=16, mew=2, label="predicted")
    for y, m, p in zip(ys, measured, predicted):
        if m and p:
            ax_m.text(m, y, f" {human_bytes(m * 2 ** 30)} ({m / p - 1:+.1%})", va="center", fontsize=7)
    ax_m.set_yticks(list(ys), [])
    ax_m.invert_yaxis()
    ax_m.margins(x=0.3)
    ax_m.set_xlabel("peak memory per rank (GiB)")
    ax_m.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def max_model_bars(max_params: dict[str, float], memory_gb: float, world_size: int,
                   highlight: str | None = None) -> Figure:
    """The largest model (parameters) whose training state fits memory_gb per rank, for each plan;
    highlight: the chosen plan drawn in red."""
    fig, ax = new_figure(6.4, 3.6)
    names = list(max_params)
    values = [max_params[n] / 1e9 for n in names]
    ax.bar(names, values, color=["#C44E52" if n == highlight else "#4C72B0" for n in names])
    for i, n in enumerate(names):
        ax.text(i, values[i], human_count(max_params[n]), ha="center", va="bottom", fontsize=8,
                fontweight="bold" if n == highlight else None)
    ax.set_ylabel("parameters (billions)")
    ax.margins(y=0.12)
    ax.set_title(f"Largest model that fits {memory_gb:g} GB per rank, {world_size} ranks")
    return fig


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


PIPE_COLORS = {"F": "#4C72B0", "B": "#DD8452"}


def pipeline_gantt(timelines: dict[str, list[list[dict]]], unit: str = "ms", scale: float = 1e3,
                   units: dict[str, tuple[str, float]] | None = None) -> Figure:
    """One panel per named timeline: a row per stage, a bar per forward (F) or backward (B) event, labelled by
    micro-batch; white space is the bubble. Times are shifted so the step starts at 0. Each panel's axis is in
    `unit` (seconds times `scale`), or in units[name] = (unit, scale) for a timeline in other units (a simulation)."""
    n = len(timelines)
    rows = max(len(tl) for tl in timelines.values())
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 0.6 + (0.45 * rows + 0.7) * n), layout="constrained", squeeze=False)
    plt.close(fig)
    for ax, (name, tl) in zip(axes[:, 0], timelines.items()):
        label, k = (units or {}).get(name, (unit, scale))
        t0 = min(e["start"] for stage in tl for e in stage)
        for s, stage in enumerate(tl):
            for e in stage:
                x, w = (e["start"] - t0) * k, (e["end"] - e["start"]) * k
                ax.barh(s, w, left=x, color=PIPE_COLORS[e["kind"]], edgecolor="white", height=0.8)
                ax.text(x + w / 2, s, f"{e['kind']}{e['mb']}", ha="center", va="center", fontsize=7, color="white")
        ax.set_yticks(range(len(tl)), [f"stage {s}" for s in range(len(tl))])
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(label)
    return fig


def _bubble_panel(ax, measured: dict[str, dict[int, float]], n_stages: int, title: str) -> None:
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
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def bubble_vs_formula(measured: dict[str, dict[int, float]], n_stages: int, title: str | None = None,
                      reference: dict | None = None) -> Figure:
    """Measured bubble fraction per schedule against the number of micro-batches m, over (p-1)/(m+p-1).
    reference: {'title', 'measured', 'n_stages'} of a committed GPU run, drawn as a panel beside."""
    fig, axes = new_figure(11.0 if reference else 5.5, 3.6, ncols=2 if reference else 1)
    ax = axes[0] if reference else axes
    _bubble_panel(ax, measured, n_stages, title or f"Pipeline bubble, p={n_stages} stages")
    if reference:
        _bubble_panel(axes[1], reference["measured"], reference["n_stages"], reference["title"])
    return fig


def activation_per_stage(values: dict[str, list[float]], ylabel: str = "saved activations (MiB)",
                         scale: float = 2 ** 20) -> Figure:
    """Grouped bars: peak activation memory held by each stage under each schedule."""
    fig, ax = new_figure(5.5, 3.6)
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
