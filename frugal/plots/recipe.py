"""Lesson 07 (the recipe): the largest model a budget trains, and measured runs beside the estimator."""
from __future__ import annotations

import math

from matplotlib.figure import Figure

from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

from frugal.plots._common import _unit_axis, human_bytes, human_count, human_dollars, new_figure


def model_size_frontiers(curves: dict[str, list[dict]], budget_bytes: float,
                         title: str = "The largest model a budget trains") -> Figure:
    """Estimated training bytes against parameters, one line per plan, the budget as a dashed line.

    curves: plan name -> rows with 'params', 'estimated_bytes' and optionally 'verified' (True: a real step
    trained, False: it ran out of memory) and 'measured_bytes'; the largest size under the budget is starred.
    """
    fig, ax = new_figure()
    for i, (name, rows) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot([r["params"] for r in rows], [r["estimated_bytes"] / 1e9 for r in rows], "-o", ms=3,
                color=color, label=f"{name} (estimated)")
        fitting = [r for r in rows if r["estimated_bytes"] <= budget_bytes]
        if fitting:
            best = max(fitting, key=lambda r: r["params"])
            ax.plot(best["params"], best["estimated_bytes"] / 1e9, "*", ms=14, color=color)
            ax.annotate(human_count(best["params"]), (best["params"], best["estimated_bytes"] / 1e9),
                        textcoords="offset points", xytext=(6, -12), fontsize=8, color=color)
        for r in rows:
            if r.get("verified") is not None:
                y = (r.get("measured_bytes") or r["estimated_bytes"]) / 1e9
                ax.plot(r["params"], y, "s" if r["verified"] else "x", ms=7, color=color, mfc="none")
    ax.axhline(budget_bytes / 1e9, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis, fmt in ((ax.xaxis, human_count), (ax.yaxis, lambda v: human_bytes(v * 1e9, binary=False))):
        lo, hi = axis.get_view_interval()
        # 1-2-5 ticks over a couple of decades; past that only the powers of ten, or '1 billion' runs into '2 billion'
        subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) <= 2.5 else (1.0,)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        _unit_axis(axis, fmt)                       # '500 K' and '20 MB', not 5x10^5 and 2x10^-2
        axis.set_minor_formatter(NullFormatter())
    ax.text(1.0, budget_bytes / 1e9, f"budget {human_bytes(budget_bytes, binary=False)} ", va="bottom", ha="right",
            fontsize=8, color="grey", transform=ax.get_yaxis_transform())
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("bytes per GPU, estimated (log scale)")
    ax.set_title(title + "\n(square: a real step trained, x: out of memory)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def recipe_runs(runs: dict[str, dict], title: str = "The recipe on a live TinyGPT") -> Figure:
    """Measured tokens/s, memory and US$ per billion tokens of each run (bars) beside the estimator's
    prediction for the same plan (black ticks, where given). runs: name -> measure_recipe's dict, optionally
    with 'predicted_tokens_per_s', 'predicted_memory_bytes' and 'predicted_dollars_per_billion_tokens'."""
    fig, axes = new_figure(12.0, 3.8, ncols=3)
    names = list(runs)
    xs = range(len(names))
    big = max(runs[n]["memory_bytes"] for n in names) >= 2 * 2 ** 30      # a GPU's peak reads in GiB
    panels = [("tokens_per_s", "tokens/s (measured here)", 1.0, None, human_count),
              ("memory_bytes", f"memory ({'GiB' if big else 'MiB'})", 2 ** (-30 if big else -20),
               "predicted_memory_bytes", human_bytes),
              ("dollars_per_billion_tokens", "US$ per billion tokens", 1.0, "predicted_dollars_per_billion_tokens",
               human_dollars)]
    for ax, (key, label, scale, predicted, fmt) in zip(axes, panels):
        if key != "memory_bytes":                      # '30 K' tokens/s and '$0.05', not 30000 and 0.05
            _unit_axis(ax.yaxis, fmt)
        ax.bar(xs, [runs[n][key] * scale for n in names], color=[f"C{i}" for i in xs])
        for i, n in enumerate(names):                    # each bar's measured value, in its unit
            ax.text(i, runs[n][key] * scale, fmt(runs[n][key]), ha="center", va="bottom", fontsize=7)
        ax.margins(y=0.12)
        if predicted:
            ys = [(i, runs[n][predicted] * scale) for i, n in enumerate(names) if runs[n].get(predicted) is not None]
            if ys:
                ax.plot([i for i, _ in ys], [y for _, y in ys], "_", color="black", ms=28, mew=2,
                        label="estimator, at its assumed MFU" if key.startswith("dollars") else "estimator")
                ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)  # over
        ax.set_ylabel(label)                                                  # the axes, never on a bar
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    fig.suptitle(title)
    return fig


def recipe_ranking(runs: dict[str, dict], title: str, highlight: dict[str, str] | None = None) -> Figure:
    """Runs ranked fastest first as horizontal bars: tokens/s, peak memory and US$ per billion tokens side by
    side, one row per run (runs: name -> 'tokens_per_s', 'memory_bytes', 'dollars_per_billion_tokens', as
    results.recipe_ranking gives them); highlight: run name -> colour (the live figure's), the others grey."""
    highlight = highlight or {}
    names = sorted(runs, key=lambda n: -runs[n]["tokens_per_s"])
    fig, axes = new_figure(12.0, 1.2 + 0.32 * len(names), ncols=3)
    big = max(runs[n]["memory_bytes"] for n in names) >= 2 * 2 ** 30
    panels = [("tokens_per_s", "tokens/s", 1.0, human_count),
              ("memory_bytes", f"peak memory ({'GiB' if big else 'MiB'})", 2 ** (-30 if big else -20), human_bytes),
              ("dollars_per_billion_tokens", "US$ per billion tokens", 1.0, human_dollars)]
    colors = [highlight.get(n, "#BBBBBB") for n in names]
    for ax, (key, label, scale, fmt) in zip(axes, panels):
        ax.barh(range(len(names)), [runs[n][key] * scale for n in names], color=colors)
        for i, n in enumerate(names):
            ax.text(runs[n][key] * scale, i, f" {fmt(runs[n][key])}", va="center", fontsize=7)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.margins(x=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        if key != "memory_bytes":                      # '300 K', '$2', not 300000 and 2
            _unit_axis(ax.xaxis, fmt)
    fig.suptitle(title, fontsize=10)
    return fig
