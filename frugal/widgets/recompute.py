"""Lesson 02's dashboards: bytes saved for backward as blocks are checkpointed, and the largest batch that fits."""
from __future__ import annotations

import ipywidgets as W
from IPython.display import display

from frugal import estimate, measure, plots
from frugal.recompute import Recompute
from frugal.units import human_bytes
from frugal.widgets._common import _dashboard


def checkpoint_slider(model, x, y, measured: list[int] | None = None) -> W.Widget:
    """Checkpointed blocks 0..L on a live TinyGPT: counts the bytes it saves for backward, against the
    estimate (measured: bytes already counted for 0..L, to draw the bars without re-running every point)."""
    L = model.cfg.n_layer
    B, T = x.shape
    act = next(model.parameters()).element_size()     # activations in the weights' dtype (no autocast here)
    predicted = [sum(estimate.estimate_recompute_activation_bytes(model.cfg, B, T, k, act_bytes=act).values())
                 for k in range(L + 1)]
    controls = {"k": W.IntSlider(value=L // 2, min=0, max=L, description="checkpointed blocks",
                                 continuous_update=False, style={"description_width": "initial"})}

    def draw(k):
        model.recompute = Recompute("first", k) if k else None
        try:
            counted = measure.measure_activation_bytes(model, x, y)
        finally:
            model.recompute = None
        print(f"{k} of {L} blocks checkpointed: {plots.human_bytes(counted)} saved for backward "
              f"(estimated {plots.human_bytes(predicted[k])})")
        bars = list(measured) if measured is not None else None
        if bars is not None:
            bars[k] = counted
        display(plots.saved_bytes_by_block(predicted, bars, k, title=f"TinyGPT, B={B} T={T}"))

    return _dashboard(controls, draw, columns=1)


def largest_batch_explorer(cfg, seq: int = 1024, gpu: str = "H100", n_params: float | None = None) -> W.Widget:
    """A memory budget in, the largest batch that fits with no, selective, every-other and full recompute out."""
    controls = {
        "budget_gb": W.FloatSlider(value=estimate.get_gpu(gpu).memory_gb, min=1, max=160, step=1,
                                   description="budget (GB)", continuous_update=False),
        "act_bytes": W.Dropdown(options=[("bf16", 2), ("fp32", 4)], value=2, description="activations"),
    }
    L = cfg.n_layer

    def draw(budget_gb, act_bytes):
        n = n_params if n_params is not None else 12 * L * cfg.n_embd ** 2 + cfg.vocab_size * cfg.n_embd
        state = estimate.estimate_state_memory(n, precision="mixed" if act_bytes == 2 else "fp32").total
        plans = {"none": (0, False), "every other block": ((L + 1) // 2, False),
                 "selective": (L, True), "all blocks": (L, False)}
        batches = {name: estimate.largest_batch(cfg, seq, budget_gb * estimate.GB, k, sel, act_bytes, state)
                   for name, (k, sel) in plans.items()}
        print(f"weights + grads + Adam: {human_bytes(state, binary=False)}; the rest of {budget_gb:g} GB is for "
              f"activations")
        display(plots.largest_batch_bars(batches, title=f"Largest batch, T={seq}, {budget_gb:g} GB"))

    return _dashboard(controls, draw)
