"""Lessons 00 and 07: what the money buys. Validation loss of several runs overlaid, and loss against dollars
on the way to a target loss."""
from __future__ import annotations

from matplotlib.figure import Figure

from frugal.plots._common import _unit_axis, human_dollars, new_figure


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
            # below and left of the point: the curve arrives from the upper left and goes on to the lower right,
            # and the target's label sits above the line at the right edge
            ax.annotate(human_dollars(hit[0]), hit, textcoords="offset points", xytext=(-6, -12), ha="right",
                        fontsize=8, color=line.get_color())
    ax.margins(x=0.08, y=0.12)                        # room under the lowest point for its label
    ax.axhline(target, color="grey", ls="--", lw=1)
    ax.text(ax.get_xlim()[1], target, f"target {target:g} ", ha="right", va="bottom", fontsize=8, color="grey")
    _unit_axis(ax.xaxis, human_dollars)               # '$0.00003', not 3 under a '1e-5' in the corner
    ax.set_xlabel("US$ spent (training time x price per hour)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def parity_gaps(rows: list[dict], title: str = "Final validation loss against fp32's") -> Figure:
    """One bar per technique: its gap to fp32's final validation loss in percent, over a band of its
    tolerance (grey), green within it and red outside; the rerun of fp32 itself is the noise floor."""
    rows = [r for r in rows if r["technique"] != "fp32"]
    fig, ax = new_figure()
    ys = range(len(rows))
    for y, r in zip(ys, rows):
        tol = 100 * r["tolerance"]
        ax.barh(y, 2 * tol, left=-tol, height=0.8, color="0.88", zorder=0)
        ax.barh(y, 100 * r["rel_diff"], height=0.5, color="tab:green" if r["within"] else "tab:red", zorder=2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(list(ys), [f"{r['technique']} (±{100 * r['tolerance']:.2g}%)" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("gap to fp32's final validation loss (%); grey: the tolerance")
    ax.set_title(title, fontsize=10)
    return fig
