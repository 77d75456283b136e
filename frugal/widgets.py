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


# ----------------------------------------------------------------------------- lesson 03: data parallel


# ----------------------------------------------------------------------------- lesson 04: sharding

def _zero_plans(n_params: float, world_size: int, precision: str) -> dict[str, dict[str, float]]:
    return {("DP" if s == 0 else f"stage {s}"):
            estimate.estimate_state_memory(n_params, precision, "adam", s, world_size).as_dict() for s in range(4)}


def sharding_explorer(n_params: float = 7e9, world_size: int = 8, memory_gb: float = 80.0) -> W.Widget:
    """Stage, world size, model size and memory per rank in; per-rank memory of DP and stages 1-3, the bytes
    each rank sends, and the largest model that fits out (all from estimate.py)."""
    controls = {
        "stage": W.Dropdown(options=[("DP", 0), ("stage 1", 1), ("stage 2", 2), ("stage 3", 3)], value=3,
                            description="stage"),
        "world_size": W.IntSlider(value=world_size, min=1, max=1024, description="ranks", continuous_update=False),
        "n_params": _log_slider("parameters", n_params, 1e6, 1e12),
        "memory_gb": W.FloatSlider(value=memory_gb, min=8, max=192, step=8, description="GB per rank",
                                   continuous_update=False, style={"description_width": "initial"}),
        "precision": W.Dropdown(options=["mixed", "fp32"], value="mixed", description="precision"),
    }

    def draw(stage, world_size, n_params, memory_gb, precision):
        plans = _zero_plans(n_params, world_size, precision)
        chosen = list(plans)[stage]
        need = sum(plans[chosen].values())
        comm = estimate.estimate_zero_comm_bytes(n_params, stage, world_size, 2)
        print(f"{chosen}: {need / 1e9:,.1f} GB per rank for {n_params:.3g} parameters on {world_size} ranks "
              f"({'fits' if need <= memory_gb * 1e9 else 'does NOT fit'} in {memory_gb:g} GB); "
              f"sends {comm / 1e9:,.2f} GB per step (bf16)")
        display(plots.memory_bars(plans, {f"{memory_gb:g} GB": memory_gb},
                                  title=f"Training state per rank, {world_size} ranks ({precision} Adam)"))
        display(plots.max_model_bars({k: estimate.estimate_max_params(memory_gb, s, world_size, precision)
                                      for s, k in enumerate(plans)}, memory_gb, world_size))

    return _dashboard(controls, draw, columns=3)


def sharding_live(run_plans, world_sizes=(2, 3), modes=("ddp", "zero1", "zero2", "zero3")) -> W.Widget:
    """A live TinyGPT: pick ranks and stages, press run; run_plans(world_size, modes) trains them on gloo
    ranks and returns a Figure (predicted beside counted bytes). A button, because each run takes seconds."""
    world = W.Dropdown(options=list(world_sizes), value=world_sizes[0], description="ranks")
    chosen = W.SelectMultiple(options=list(modes), value=tuple(modes), description="plans")
    button = W.Button(description="train and count", button_style="primary")
    out = W.Output()

    def on_click(_):
        out.clear_output()
        with out:
            display(run_plans(world.value, list(chosen.value)))

    button.on_click(on_click)
    return W.VBox([W.HBox([world, chosen, button]), out])



# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

