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

FORMAT_COLORS = {"fp32": "#4C72B0", "tf32": "#8172B3", "fp16": "#DD8452", "bf16": "#55A868",
                 "fp8_e4m3": "#C44E52", "fp8_e5m2": "#937860"}


def _fmt_get(fmt, key: str) -> float:
    """A field of a numerics.Format or of its as_dict() row."""
    return fmt[key.replace("_", " ")] if isinstance(fmt, dict) else getattr(fmt, key)


def format_ranges(table: dict, value: float | None = None, highlight: str | None = None,
                  title: str = "What each format can hold (log2 scale)") -> Figure:
    """One lane per format on a log2 axis: subnormals (light), normals (dark), up to max; a line at `value`."""
    import math
    fig, ax = _figure(7.0, 0.6 + 0.45 * len(table))
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
        ax.text(math.log2(value), -0.6, f" {value:.3g}", fontsize=8, va="bottom")
    ax.set_xlabel("log2 |x|   (light: subnormal, dark: normal; left of the bar rounds to 0, right overflows)")
    ax.set_title(title)
    return fig


def gradient_histogram(magnitudes, table: dict, formats: tuple = ("fp16", "bf16", "fp8_e5m2"),
                       title: str = "Gradient magnitudes of one TinyGPT step vs each format's range") -> Figure:
    """Histogram of log2 |g| (nonzero values) with each format's underflow edge (half its smallest subnormal,
    solid) and smallest normal (dashed); the fraction of gradients below each edge is in the legend."""
    import numpy as np
    g = np.asarray(magnitudes, dtype=np.float64).ravel()
    g = g[(g > 0) & np.isfinite(g)]
    fig, ax = _figure(7.0, 4.0)
    ax.hist(np.log2(g), bins=80, color="#999999")
    for name in formats:
        if name not in table:
            continue
        fmt, color = table[name], FORMAT_COLORS.get(name, "black")
        edge = _fmt_get(fmt, "smallest_subnormal") / 2
        frac = float((g <= edge).mean()) if g.size else 0.0
        ax.axvline(np.log2(edge), color=color, lw=2, label=f"{name}: {frac:.1%} round to 0")
        ax.axvline(np.log2(_fmt_get(fmt, "smallest_normal")), color=color, lw=1, ls="--")
    ax.set_xlabel("log2 |gradient|")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def scale_history(scales: list[float], skipped: list[int] | None = None,
                  title: str = "Loss scale over training") -> Figure:
    """log2 of the loss scale per step, with the skipped steps (inf/NaN gradients) marked."""
    import math
    fig, ax = _figure(6.4, 3.2)
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
    fig, (ax_loss, ax_time, ax_mem) = _figure(12.0, 3.6, ncols=3)
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



# ----------------------------------------------------------------------------- lesson 02: activation checkpointing

def recompute_tradeoff(series: dict[str, list[dict]], title: str = "Memory for time",
                       alternatives: dict[str, list[dict]] | None = None) -> Figure:
    """Saved-activation bytes (and, when measured, peak CUDA memory) against step time, one line per
    implementation; each point is a dict with 'label', 'step_s', 'saved_bytes' and optional 'peak_memory_bytes'.
    alternatives: points that are separate choices, not steps along a curve (what selective recompute keeps),
    drawn as markers without a line."""
    alternatives = alternatives or {}
    everything = [p for pts in (*series.values(), *alternatives.values()) for p in pts]
    has_peak = any(p.get("peak_memory_bytes") for p in everything)
    fig, axes = _figure(11.0 if has_peak else 6.4, 4.2, ncols=2 if has_peak else 1)
    axes = list(axes) if has_peak else [axes]
    keys = [("saved_bytes", "saved activations")] + ([("peak_memory_bytes", "peak CUDA memory")] if has_peak else [])
    drawn = [(name, pts, "-") for name, pts in series.items()] + [(name, pts, "none") for name, pts in alternatives.items()]
    for ax, (key, label) in zip(axes, keys):
        xs = [p["step_s"] * 1e3 for p in everything if p.get(key) is not None]
        ys = [p[key] / 2 ** 20 for p in everything if p.get(key) is not None]
        near = (0.03 * (max(xs) - min(xs) or 1), 0.03 * (max(ys) - min(ys) or 1))
        placed: list[tuple] = []                     # one label where two series' points coincide
        for (name, pts, line), marker in zip(drawn, "os^Dv*"):
            pts = [p for p in pts if p.get(key) is not None]
            ax.plot([p["step_s"] * 1e3 for p in pts], [p[key] / 2 ** 20 for p in pts], marker=marker,
                    linestyle=line, label=name, alpha=0.8)
            for p in pts:
                x, y = p["step_s"] * 1e3, p[key] / 2 ** 20
                if any(t == p["label"] and abs(x - px) < near[0] and abs(y - py) < near[1] for t, px, py in placed):
                    continue
                placed.append((p["label"], x, y))
                ax.annotate(p["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("step time (ms, median)")
        ax.set_ylabel(f"{label} (MiB)")
        ax.set_title(f"{title}: {label}")
        ax.legend(fontsize=8)
    return fig


def saved_bytes_by_block(predicted: list[float], measured: list[float] | None, n_checkpointed: int,
                         title: str = "Saved activations") -> Figure:
    """Bars of measured saved bytes for 0..L checkpointed blocks, the prediction as a line, the current choice marked."""
    fig, ax = _figure(6.4, 3.8)
    xs = list(range(len(predicted)))
    if measured is not None:
        ax.bar(xs, [m / 2 ** 20 for m in measured], color=["#C44E52" if i == n_checkpointed else "#BBBBBB" for i in xs],
               label="counted")
    ax.plot(xs, [p / 2 ** 20 for p in predicted], "k.--", label="estimated")
    ax.set_xlabel("checkpointed blocks")
    ax.set_ylabel("MiB saved for backward")
    ax.set_xticks(xs)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def largest_batch_bars(batches: dict[str, int], title: str = "Largest batch that fits") -> Figure:
    """One horizontal bar per recompute policy: the largest batch its predicted memory allows."""
    fig, ax = _figure(6.4, 0.6 + 0.45 * len(batches))
    names = list(batches)
    ax.barh(names, [batches[n] for n in names], color="#4C72B0")
    for i, n in enumerate(names):
        ax.text(batches[n], i, f" {batches[n]:,}", va="center", fontsize=8)
    ax.set_xlabel("sequences per step")
    ax.set_title(title)
    ax.invert_yaxis()
    return fig



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

def sharding_memory_bars(predicted: dict[str, dict[str, float]], measured: dict[str, dict[str, float]] | None = None,
                         title: str = "Memory per rank", unit: float = 2 ** 20, unit_name: str = "MiB") -> Figure:
    """For each plan (DP, stage 1-3): a stacked bar of the predicted bytes by kind, and beside it (hatched)
    the measured or counted bytes, so prediction and observation stand side by side."""
    fig, ax = _figure(7.6, 4.2)
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

def kernel_grid(n: int, block_size: int, programs: int | None = None, max_shown: int = 4096) -> Figure:
    """Which program of the grid handles each element of an n-element add: one colour per program,
    grey for the masked lanes past the end of the last block."""
    import numpy as np
    n_blocks = max(1, -(-n // block_size))
    grid = n_blocks if programs is None else max(1, min(programs, n_blocks))
    lanes = n_blocks * block_size
    shown = min(lanes, max_shown)
    owner = (np.arange(shown) // block_size) % grid                       # grid-stride: block b -> program b % grid
    fig, ax = _figure(8.0, 1.8)
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
    """GB/s against elements (log x) for each named implementation; a dashed line at a peak, if given."""
    fig, ax = _figure()
    for name, (sizes, values) in series.items():
        ax.plot(sizes, values, marker="o", label=name)
    if peak_gbps:
        ax.axhline(peak_gbps, color="grey", ls="--", lw=1)
        ax.text(ax.get_xlim()[0], peak_gbps, f" {peak_gbps:,.0f} GB/s", va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("elements (float32)")
    ax.set_ylabel("GB/s (bytes read + written / time)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def fused_vs_unfused(times_ms: dict[str, float], bytes_moved: dict[str, float],
                     title: str = "Fused against eager, forward + backward") -> Figure:
    """Two bar panels, one bar per implementation: time (ms) and bytes moved (MiB)."""
    fig, (ax_t, ax_b) = _figure(8.0, 3.6, ncols=2)
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
                         title: str = "Output head + cross-entropy: peak memory") -> Figure:
    """Peak bytes of the head with and without chunking, against vocabulary (left) and tokens (right)."""
    fig, axes = _figure(9.0, 3.6, ncols=2)
    for ax, series, xlabel in ((axes[0], by_vocab, "vocabulary size"), (axes[1], by_tokens, "tokens per step")):
        for name, (xs, ys) in series.items():
            ax.plot(xs, [y / GIB for y in ys], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("GiB")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig



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



def recipe_runs(runs: dict[str, dict], title: str = "The recipe on a live TinyGPT") -> Figure:
    """Measured tokens/s, memory and US$ per billion tokens of each run (bars) beside the estimator's
    prediction for the same plan (black ticks, where given). runs: name -> measure_recipe's dict, optionally
    with 'predicted_tokens_per_s', 'predicted_memory_bytes' and 'predicted_dollars_per_billion_tokens'."""
    fig, axes = _figure(12.0, 3.8, ncols=3)
    names = list(runs)
    xs = range(len(names))
    panels = [("tokens_per_s", "tokens/s (measured here)", 1.0, None),
              ("memory_bytes", "memory (MiB)", 2 ** -20, "predicted_memory_bytes"),
              ("dollars_per_billion_tokens", "US$ per billion tokens", 1.0, "predicted_dollars_per_billion_tokens")]
    for ax, (key, label, scale, predicted) in zip(axes, panels):
        ax.bar(xs, [runs[n][key] * scale for n in names], color=[f"C{i}" for i in xs])
        if predicted:
            ys = [(i, runs[n][predicted] * scale) for i, n in enumerate(names) if runs[n].get(predicted) is not None]
            if ys:
                ax.plot([i for i, _ in ys], [y for _, y in ys], "_", color="black", ms=28, mew=2,
                        label="estimator")
                ax.legend(fontsize=8)
        ax.set_ylabel(label)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    fig.suptitle(title)
    return fig
