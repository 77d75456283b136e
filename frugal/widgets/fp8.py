"""Lesson 01's fp8 dashboard: current or delayed scaling on a tensor whose amax drifts and spikes."""
from __future__ import annotations

import ipywidgets as W
import torch
from IPython.display import display

from frugal import fp8, plots
from frugal.widgets._common import _dashboard, _enabled_when


def amax_profile(steps: int = 60, spike: float = 20.0, spike_at: int = 30) -> list[float]:
    """A gradient's amax over steps: a slow drift down (as training settles) with one spike of `spike` times."""
    return [(0.5 ** (t / 20)) * (spike if t == spike_at else 1.0) for t in range(steps)]


def run_recipe(recipe: str, history: int, profile: list[float], dtype=fp8.E5M2, n: int = 4096, seed: int = 0):
    """Scale a tensor drawn at each step's amax with frugal.fp8's recipe; (fill, % clamped) per step."""
    gen = torch.Generator().manual_seed(seed)
    hist = torch.zeros(history)
    fill, clamped = [], []
    for a in profile:
        x = torch.randn(n, generator=gen)
        x = x / x.abs().max() * a                                        # amax exactly a
        s = fp8.delayed_scale(x, dtype, hist) if recipe == "delayed" else fp8.compute_scale(x, dtype)
        fill.append(float(a * s) / fp8.fp8_max(dtype))
        over = (x * s).abs() > fp8.fp8_max(dtype) * (1 + 2 ** -10)           # beyond rounding at the top
        clamped.append(float(over.float().mean()) * 100)
    return fill, clamped


def fp8_recipe_explorer(recipe: str = "delayed", history: int = 16, spike: float = 20.0) -> W.Widget:
    """Recipe, history length and spike size in; the scale each step gets and what clamps, out."""
    controls = {
        "recipe": W.Dropdown(options=list(fp8.RECIPES), value=recipe, description="recipe"),
        "history": W.IntSlider(value=history, min=1, max=32, description="history", continuous_update=False),
        "spike": W.FloatLogSlider(value=spike, base=10, min=0, max=3, step=0.1, description="spike x",
                                  continuous_update=False),
    }

    _enabled_when(controls, ("history",), "recipe", lambda r: r == "delayed")   # current scaling keeps no history

    def draw(recipe, history, spike):
        profile = amax_profile(spike=spike)
        fill, clamped = run_recipe(recipe, history, profile)
        n = sum(c > 0 for c in clamped)
        print(f"recipe={recipe}: {n} step{'' if n == 1 else 's'} clamp{'s' if n == 1 else ''} some values "
              f"(max {max(clamped):.2f}%); "
              f"the emptiest step uses {min(fill):.2g} of e5m2's range at its top")
        display(plots.recipe_trace(profile, fill, clamped, recipe))

    return _dashboard(controls, draw, columns=3)
