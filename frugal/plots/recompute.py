"""Lesson 02 (activation checkpointing): saved bytes against step time, bytes by checkpointed block, batch."""
from __future__ import annotations

from matplotlib.figure import Figure

from frugal.plots._common import new_figure

MIB, GIB = 2 ** 20, 2 ** 30


def _tradeoff_panel(ax, series: dict, alternatives: dict, key: str, label: str, title: str) -> None:
    """One panel of recompute_tradeoff: `key` (bytes) against the median step time, the repeats' min-max as a
    horizontal bar through each point where measured, one label where two series' points coincide."""
    everything = [p for pts in (*series.values(), *alternatives.values()) for p in pts if p.get(key) is not None]
    scale, unit = (GIB, "GiB") if max(p[key] for p in everything) >= 2 * GIB else (MIB, "MiB")
    xs = [p["step_s"] * 1e3 for p in everything]
    ys = [p[key] / scale for p in everything]
    near = (0.05 * (max(xs) - min(xs) or 1), 0.05 * (max(ys) - min(ys) or 1))
    placed: list[tuple] = []
    drawn = [(n, pts, "-") for n, pts in series.items()] + [(n, pts, "none") for n, pts in alternatives.items()]
    spread_labelled = False
    for (name, pts, line), marker in zip(drawn, "os^Dv*"):
        pts = [p for p in pts if p.get(key) is not None]
        px, py = [p["step_s"] * 1e3 for p in pts], [p[key] / scale for p in pts]
        (drawn_line,) = ax.plot(px, py, marker=marker, linestyle=line, label=name, alpha=0.8)
        spread = [p for p in pts if p.get("step_min_s") is not None and p.get("step_max_s") is not None]
        if spread:                                   # min and max of the repeats around the median
            ax.errorbar([p["step_s"] * 1e3 for p in spread], [p[key] / scale for p in spread],
                        xerr=[[(p["step_s"] - p["step_min_s"]) * 1e3 for p in spread],
                              [(p["step_max_s"] - p["step_s"]) * 1e3 for p in spread]],
                        fmt="none", ecolor=drawn_line.get_color(), elinewidth=1, capsize=2, alpha=0.6,
                        label=None if spread_labelled else "min-max of the repeats")
            spread_labelled = True
        for p, x, y in zip(pts, px, py):
            if any(t == p["label"] and abs(x - qx) < near[0] and abs(y - qy) < near[1] for t, qx, qy in placed):
                continue
            placed.append((p["label"], x, y))
            ax.annotate(p["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("step time (ms, median)")
    ax.set_ylabel(f"{label} ({unit})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def recompute_tradeoff(series: dict[str, list[dict]], title: str = "Memory for time",
                       alternatives: dict[str, list[dict]] | None = None,
                       reference: dict | None = None) -> Figure:
    """Saved-activation bytes (and, when measured, peak CUDA memory) against step time, one line per
    implementation; each point is a dict with 'label', 'step_s', 'saved_bytes' and optional 'peak_memory_bytes',
    'step_min_s' and 'step_max_s' (the spread of the repeats, drawn as a bar through the point).
    alternatives: points that are separate choices, not steps along a curve (what selective recompute keeps),
    drawn as markers without a line. reference: {'title', 'series', 'alternatives'} measured elsewhere (the
    committed GPU run), drawn as one more panel of saved bytes against its step time."""
    alternatives = alternatives or {}
    everything = [p for pts in (*series.values(), *alternatives.values()) for p in pts]
    has_peak = any(p.get("peak_memory_bytes") for p in everything)
    keys = [("saved_bytes", "saved activations")] + ([("peak_memory_bytes", "peak CUDA memory")] if has_peak else [])
    ncols = len(keys) + (reference is not None)
    fig, axes = new_figure(5.6 * ncols if ncols > 1 else 6.4, 4.2, ncols=ncols)
    axes = list(axes) if ncols > 1 else [axes]
    for ax, (key, label) in zip(axes, keys):
        _tradeoff_panel(ax, series, alternatives, key, label, f"{title}: {label}")
    if reference is not None:
        _tradeoff_panel(axes[-1], reference["series"], reference.get("alternatives") or {}, "saved_bytes",
                        "saved activations", reference["title"])
    return fig


def saved_bytes_by_block(predicted: list[float], measured: list[float] | None, n_checkpointed: int,
                         title: str = "Saved activations") -> Figure:
    """Bars of measured saved bytes for 0..L checkpointed blocks, the prediction as a line, the current choice marked."""
    fig, ax = new_figure(6.4, 3.8)
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
    fig, ax = new_figure(6.4, 0.6 + 0.45 * len(batches))
    names = list(batches)
    ax.barh(names, [batches[n] for n in names], color="#4C72B0")
    for i, n in enumerate(names):
        ax.text(batches[n], i, f" {batches[n]:,}", va="center", fontsize=8)
    ax.set_xlabel("sequences per step")
    ax.set_title(title)
    ax.invert_yaxis()
    return fig
