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

def data_parallel_trainer(model_cfg, steps: int = 15, batch_size: int = 8) -> W.Widget:
    """World size, flavour and bucket size in; ranks really launched (train()), loss against the
    single-process run on the same global batch, and the last backward's bucket timeline out."""
    from frugal.train import TrainConfig, train
    single_cache: dict = {}

    controls = {
        "world_size": W.Dropdown(options=[1, 2, 4], value=2, description="ranks"),
        "flavour": W.Dropdown(options=["naive", "bucket", "ddp"], value="bucket", description="flavour"),
        "bucket_cap_mb": _log_slider("bucket MiB", 0.05, 0.005, 25),
    }

    def draw(world_size, flavour, bucket_cap_mb):
        kw = dict(steps=steps, batch_size=batch_size, seq_len=32, progress=False)
        if "loss" not in single_cache:
            single_cache["loss"] = train(model_cfg, TrainConfig(**kw)).column("loss")
        run = train(model_cfg, TrainConfig(**kw, world_size=world_size, data_parallel=flavour,
                                           bucket_cap_mb=bucket_cap_mb))
        gap = max(abs(a - b) for a, b in zip(run.column("loss"), single_cache["loss"]))
        print(f"{world_size} rank(s) x {batch_size // world_size} sequences, {flavour}: largest loss gap to "
              f"single-process = {gap:.2e}")
        display(plots.loss_curve({"1 process, whole batch": single_cache["loss"],
                                  f"{world_size} ranks, {flavour}": run.column("loss")}))
        if getattr(run, "timeline", None):
            display(plots.overlap_timeline(run.timeline, run.backward_end_s))

    return _dashboard(controls, draw, columns=3)



# ----------------------------------------------------------------------------- lesson 04: sharding


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

