"""Lesson 00's dashboards: what a training run costs, and the activation bytes of a live model."""
from __future__ import annotations

import ipywidgets as W
import torch
from IPython.display import display

from frugal import data, estimate, measure, plots
from frugal.units import human_bytes, human_flops
from frugal.widgets._common import _dashboard, _log_slider, _powers_of_two_slider


def cost_calculator(n_params: float = 7e9, n_tokens: float = 2e12, gpu: str = "H100", mfu: float = 0.4,
                    n_gpus: int = 64, recompute: str = "selective") -> W.Widget:
    """Parameters, tokens, GPU, GPU count, MFU, price, precision, sequence and micro-batch in;
    days and dollars out, with memory bars per GPU (plain data parallel and ZeRO 1-3) against each GPU's memory."""
    estimate.get_gpu(gpu)                                   # an unknown name fails here, listing the known ones
    style = {"description_width": "initial"}
    controls = {
        "n_params": _log_slider("parameters", n_params, 1e6, 1e12),
        "n_tokens": _log_slider("tokens", n_tokens, 1e8, 2e13),
        "gpu": W.Dropdown(options=list(estimate.GPU_CATALOG), value=gpu, description="GPU"),
        "n_gpus": _powers_of_two_slider("GPUs", n_gpus, 4096),
        "mfu": W.FloatSlider(value=mfu, min=0.05, max=0.8, step=0.05, description="MFU", continuous_update=False),
        "price": W.BoundedFloatText(value=estimate.get_gpu(gpu).price_per_hour, min=0.01, max=100.0, step=0.05,
                                    description="$ per GPU-hour", style=style),
        "precision": W.Dropdown(options=["mixed", "fp32"], value="mixed", description="precision"),
        "seq": W.Dropdown(options=[512, 1024, 2048, 4096, 8192], value=4096, description="sequence"),
        "micro_batch": W.IntSlider(value=1, min=1, max=64, description="micro-batch", continuous_update=False),
        "recompute": W.Dropdown(options=["none", "selective", "full"], value=recompute, description="recompute"),
    }

    def on_gpu(change):                                      # a new GPU brings its catalog price; edit it after
        controls["price"].value = estimate.get_gpu(change["new"]).price_per_hour
    controls["gpu"].observe(on_gpu, names="value")

    def draw(n_params, n_tokens, gpu, n_gpus, mfu, price, precision, seq, micro_batch, recompute):
        spec = estimate.get_gpu(gpu)
        dtype = "fp32" if precision == "fp32" else ("bf16" if "bf16" in spec.peak_tflops else "fp16")
        cost = estimate.estimate_cost(estimate.Plan(n_params, n_tokens, gpu, n_gpus, mfu, dtype, price))
        print(f"6·N·D = {human_flops(cost.flops)} = {cost.gpu_hours:,.0f} GPU-hours at MFU {mfu:.0%} of "
              f"{human_flops(spec.peak_flops(dtype), per_second=True)} ({dtype})")
        print(f"{n_gpus} × {gpu}: {cost.days:,.1f} days, about ${cost.dollars:,.0f} at ${price:g} per GPU-hour")
        plans = {}
        for stage, label in enumerate(["data parallel", "ZeRO-1", "ZeRO-2", "ZeRO-3"]):
            mem = estimate.estimate_training_memory(n_params, seq, micro_batch, precision, recompute=recompute,
                                                    zero_stage=stage, world_size=n_gpus)
            plans[label] = mem.as_dict()
        verdict = [f"{k}: {'fits' if sum(v.values()) <= spec.memory_gb * estimate.GB else 'does not fit'}"
                   for k, v in plans.items()]
        print(f"on one {gpu} ({spec.memory_gb:g} GB): " + ", ".join(verdict))
        display(plots.memory_bars(plans, {g: s.memory_gb for g, s in estimate.GPU_CATALOG.items()}, highlight=gpu,
                                  title=f"Memory per GPU, {n_gpus} GPUs, micro-batch {micro_batch} × {seq} tokens; "
                                        f"{gpu}'s {spec.memory_gb:g} GB in red"))
        dollars = {}
        for name, s in estimate.GPU_CATALOG.items():
            d = "fp32" if precision == "fp32" else ("bf16" if "bf16" in s.peak_tflops else "fp16")
            at = price if name == gpu else s.price_per_hour      # the chosen GPU at the price typed above
            dollars[name] = estimate.estimate_cost(estimate.Plan(n_params, n_tokens, name, n_gpus, mfu, d, at)).dollars
        display(plots.cost_bars(dollars, highlight=gpu,
                                title=f"The same run on each GPU (MFU {mfu:.0%}; {gpu} in red at ${price:g}/h, "
                                      f"the others at catalog prices)"))

    return _dashboard(controls, draw, columns=3)


def activation_meter(model, max_batch: int = 32) -> W.Widget:
    """Batch and sequence sliders on a live TinyGPT: the activation bytes estimate.py predicts beside
    the bytes measure.py counts while the model runs one forward."""
    cfg = model.cfg
    device = next(model.parameters()).device
    controls = {
        "batch": W.IntSlider(value=min(8, max_batch), min=1, max=max_batch, description="batch",
                             continuous_update=False),
        "seq": W.IntSlider(value=cfg.block_size, min=1, max=cfg.block_size, description="sequence",
                           continuous_update=False),
    }

    def draw(batch, seq):
        x, y = data.synthetic_batch(cfg.vocab_size, batch, seq, torch.Generator().manual_seed(0), device)
        predicted = estimate.estimate_activation_bytes(cfg, batch, seq)
        counted = measure.measure_activation_bytes(model, x, y)
        print(f"predicted {human_bytes(sum(predicted.values()))}, counted {human_bytes(counted)} "
              f"({(sum(predicted.values()) - counted) / counted:+.2%})")
        display(plots.predicted_vs_measured(predicted, counted, title=f"Saved for backward, B={batch} T={seq}"))

    return _dashboard(controls, draw, columns=2)
