"""Lesson 07 (the recipe): the largest model a budget trains, and measured runs beside the estimator."""
from __future__ import annotations

from matplotlib.figure import Figure

from frugal.plots._common import human_count, new_figure


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
    fig, axes = new_figure(12.0, 3.8, ncols=3)
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
