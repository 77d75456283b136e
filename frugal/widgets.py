"""ipywidgets dashboards: the only module that imports ipywidgets.

Widgets only wire controls to functions of plots.py, estimate.py and train.py. They use the inline
backend with an Output widget (interactive_output), so they work on ipywidgets 7.7 (Colab) and 8.
"""
from __future__ import annotations

import ipywidgets as W
from IPython.display import display

from frugal import estimate, plots


def _dashboard(controls: dict, draw, columns: int = 2) -> W.Widget:
    """Controls above an Output that re-runs draw(**values) whenever one changes."""
    out = W.interactive_output(draw, controls)
    items = list(controls.values())
    rows = [W.HBox(items[i:i + columns]) for i in range(0, len(items), columns)]
    return W.VBox([*rows, out])


def _log_slider(description: str, value: float, lo: float, hi: float, fmt: str = ".3g") -> W.FloatLogSlider:
    import math
    return W.FloatLogSlider(value=value, base=10, min=math.log10(lo), max=math.log10(hi), step=0.05,
                            description=description, readout_format=fmt, continuous_update=False,
                            style={"description_width": "initial"})


# ----------------------------------------------------------------------------- lesson 00: economics

def cost_calculator(n_params: float = 7e9, n_tokens: float = 2e11, gpu: str = "H100", mfu: float = 0.4) -> W.Widget:
    """Parameters, tokens, GPU, GPU count, MFU and precision in; days, dollars and memory bars out."""
    controls = {
        "n_params": _log_slider("parameters", n_params, 1e6, 1e12),
        "n_tokens": _log_slider("tokens", n_tokens, 1e8, 2e13),
        "gpu": W.Dropdown(options=list(estimate.GPU_CATALOG), value=gpu, description="GPU"),
        "n_gpus": W.IntSlider(value=8, min=1, max=1024, description="GPUs", continuous_update=False),
        "mfu": W.FloatSlider(value=mfu, min=0.05, max=0.8, step=0.05, description="MFU", continuous_update=False),
        "precision": W.Dropdown(options=["mixed", "fp32"], value="mixed", description="precision"),
    }

    def draw(n_params, n_tokens, gpu, n_gpus, mfu, precision):
        spec = estimate.get_gpu(gpu)
        dtype = "bf16" if precision == "mixed" and "bf16" in spec.peak_tflops else (
            "fp16" if precision == "mixed" else "fp32")
        cost = estimate.estimate_cost(estimate.Plan(n_params, n_tokens, gpu, n_gpus, mfu, dtype))
        print(f"{cost.flops:.3g} FLOPs = {cost.gpu_hours:,.0f} GPU-hours: {cost.days:,.1f} days on "
              f"{n_gpus} × {gpu} ({dtype}, MFU {mfu:.0%}), about ${cost.dollars:,.0f} at ${spec.price_per_hour}/h")
        mem = estimate.estimate_state_memory(n_params, precision=precision).as_dict()
        display(plots.memory_bars({f"{n_params:.3g} params": mem},
                                  {g: s.memory_gb for g, s in estimate.GPU_CATALOG.items()},
                                  title="Weights, gradients and Adam states (one GPU, no sharding)"))

    return _dashboard(controls, draw, columns=3)


# ----------------------------------------------------------------------------- lesson 01: mixed precision


# ----------------------------------------------------------------------------- lesson 02: activation checkpointing

def checkpoint_slider(model, x, y, measured: list[int] | None = None) -> W.Widget:
    """Checkpointed blocks 0..L on a live TinyGPT: counts the bytes it saves for backward, against the
    estimate (measured: bytes already counted for 0..L, to draw the bars without re-running every point)."""
    from frugal import measure
    from frugal.recompute import Recompute
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
        print(f"weights + grads + Adam: {state / 1e9:.2f} GB; the rest of {budget_gb:g} GB is for activations")
        display(plots.largest_batch_bars(batches, title=f"Largest batch, T={seq}, {budget_gb:g} GB"))

    return _dashboard(controls, draw)



# ----------------------------------------------------------------------------- lesson 03: data parallel


# ----------------------------------------------------------------------------- lesson 04: sharding


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

