"""What every figure shares: a figure that pyplot does not show twice, byte units, the colours of memory kinds."""
from __future__ import annotations

import matplotlib.pyplot as plt


GIB = 2 ** 30
COLORS = {"weights": "#4C72B0", "gradients": "#DD8452", "optimizer": "#55A868", "activations": "#C44E52"}


def new_figure(width: float = 6.4, height: float = 4.0, ncols: int = 1):
    """(fig, axes) of one row of `ncols` panels, closed in pyplot: figures are returned, not shown twice."""
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), layout="constrained")
    plt.close(fig)
    return fig, axes


def human_bytes(n: float) -> str:
    """Bytes in binary units: 3 * 2**20 -> '3 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"
