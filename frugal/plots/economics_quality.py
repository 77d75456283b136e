"""Lessons 00 and 07: what the money buys. Validation loss of several runs overlaid, and loss against dollars
on the way to a target loss."""
from __future__ import annotations

from matplotlib.figure import Figure

from frugal.plots._common import new_figure


def val_loss_overlay(curves: dict[str, list[tuple[float, float]]], title: str = "Validation loss",
                     xlabel: str = "tokens trained on", ylabel: str = "validation loss (nats/token)") -> Figure:
    """One line per named run: validation loss against tokens (or any x); runs that match lie on top of
    each other, so exact techniques are drawn dashed over the first run."""
    fig, ax = new_figure()
    for i, (name, points) in enumerate(curves.items()):
        xs, ys = zip(*points) if points else ((), ())
        ax.plot(xs, ys, label=name, ls="-" if i == 0 else "--", lw=2.5 if i == 0 else 1.2, marker=".", ms=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def dollars_to_target(runs: dict[str, list[tuple[float, float]]], target: float,
                      title: str = "Dollars to the target loss") -> Figure:
    """Validation loss against dollars spent, one line per plan, with the target as a dashed line and each
    plan's dollars at the point it reached the target."""
    fig, ax = new_figure()
    for name, points in runs.items():
        xs, ys = zip(*points) if points else ((), ())
        line, = ax.plot(xs, ys, label=name, marker=".", ms=4)
        hit = next(((x, y) for x, y in points if y <= target), None)
        if hit is not None:
            ax.plot(*hit, marker="o", ms=8, color=line.get_color())
            ax.annotate(f"${hit[0]:.3g}", hit, textcoords="offset points", xytext=(6, 6), fontsize=8,
                        color=line.get_color())
    ax.axhline(target, color="grey", ls="--", lw=1)
    ax.text(ax.get_xlim()[1], target, f"target {target:g} ", ha="right", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("US$ spent (training time x price per hour)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
