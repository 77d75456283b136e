"""What every figure shares: a figure that pyplot does not show twice, human units, the colours of memory kinds."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from frugal.units import human_bytes, human_count, human_dollars, human_time  # noqa: F401 - the one formatter


GIB = 2 ** 30
COLORS = {"weights": "#4C72B0", "gradients": "#DD8452", "optimizer": "#55A868", "activations": "#C44E52"}


def new_figure(width: float = 6.4, height: float = 4.0, ncols: int = 1):
    """(fig, axes) of one row of `ncols` panels, closed in pyplot: figures are returned, not shown twice."""
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), layout="constrained")
    plt.close(fig)
    return fig, axes


def _unit_axis(axis, format_value) -> None:
    """Label an axis' ticks with a formatter of frugal.units (a log axis then reads '$1 M', not '10^6')."""
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v)))


def _bytes_log_axis(axis) -> None:
    """A log axis of bytes with ticks at 1, 10 and 100 of each binary unit: '100 MiB', '1 GiB', '10 GiB' (ticks at
    powers of ten bytes would read '95.4 MiB', '954 MiB')."""
    axis.set_major_locator(FixedLocator([m * 1024.0 ** k for k in range(7) for m in (1, 10, 100)]))
    axis.set_minor_locator(NullLocator())
    _unit_axis(axis, human_bytes)
