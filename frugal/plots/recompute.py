"""Lesson 02 (activation checkpointing): saved bytes against step time, bytes by checkpointed block, batch."""
from __future__ import annotations

from matplotlib.figure import Figure

from frugal.plots._common import new_figure


def recompute_tradeoff(series: dict[str, list[dict]], title: str = "Memory for time",
                       alternatives: dict[str, list[dict]] | None = None) -> Figure:
    """Saved-activation bytes (and, when measured, peak CUDA memory) against step time, one line per
    implementation; each point is a dict with 'label', 'step_s', 'saved_bytes' and optional 'peak_memory_bytes'.
    alternatives: points that are separate choices, not steps along a curve (what selective recompute keeps),
    drawn as markers without a line."""
    alternatives = alternatives or {}
    everything = [p for pts in (*series.values(), *alternatives.values()) for p in pts]
    has_peak = any(p.get("peak_memory_bytes") for p in everything)
    fig, axes = new_figure(11.0 if has_peak else 6.4, 4.2, ncols=2 if has_peak else 1)
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
