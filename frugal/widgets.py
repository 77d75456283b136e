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

def format_explorer(fmt: str = "fp16", value: float = 1e-6) -> W.Widget:
    """A format dropdown and a magnitude slider: the format's row of the table, where the value lands, the
    value after a round trip and its relative error, and every format's range on a number line."""
    from frugal import numerics
    import torch
    table = numerics.format_table()
    controls = {
        "fmt": W.Dropdown(options=list(table), value=fmt, description="format"),
        "value": W.FloatLogSlider(value=value, base=10, min=-45, max=38.5, step=0.1, description="|x|",
                                  readout_format=".3g", continuous_update=False),
    }

    def draw(fmt, value):
        f = table[fmt]
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in f.as_dict().items()))
        x = torch.tensor([value], dtype=torch.float64)
        rt = numerics.round_trip(x, f).item()
        s = numerics.format_stats(x, f)
        where = ("overflows" if s.overflow else "rounds to 0" if s.underflow else
                 "is subnormal" if s.subnormal else "is normal")
        err = abs(rt - value) / value
        print(f"{value:.6g} in {fmt} {where}: stored as {rt:.6g} (relative error {err:.2e})")
        display(plots.format_ranges(table, value=value, highlight=fmt))

    return _dashboard(controls, draw)


def precision_dashboard(model: str = "tiny", steps: int = 8, batch_size: int = 8, seq_len: int = 32,
                        loss_divisor: float = 1.0) -> W.Widget:
    """Precision, loss scaler and initial scale in; a few training steps of a live TinyGPT out, with loss,
    step time and memory of every setting tried so far (measured beside estimate.py)."""
    import math
    from frugal import numerics
    from frugal.model import preset
    from frugal.train import PRECISIONS, SCALERS, TrainConfig
    runs: dict[str, dict] = {}
    controls = {
        "precision": W.Dropdown(options=list(PRECISIONS), value="fp32", description="precision"),
        "scaler": W.Dropdown(options=list(SCALERS), value="frugal", description="fp16 scaler"),
        "init_scale": W.FloatLogSlider(value=2.0 ** 16, base=2, min=0, max=40, step=1, description="init scale",
                                       readout_format=".3g", continuous_update=False),
    }

    def draw(precision, scaler, init_scale):
        cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, precision=precision, scaler=scaler,
                          init_scale=init_scale, loss_divisor=loss_divisor, data="corpus")
        name = precision
        if precision == "fp16":
            name = f"fp16/{scaler}" + (f" 2^{math.log2(init_scale):.0f}" if scaler != "none" else "")
        runs[name] = numerics.measure_precision(preset(model), cfg)
        r = runs[name]
        print(f"{name}: final loss {r['loss'][-1]:.3f}, median step {r['step_ms']:.1f} ms, "
              f"{r['memory_kind']} {plots.human_bytes(r['memory_bytes'])} "
              f"(estimate.py: {plots.human_bytes(r['memory_estimate_bytes'])}), skipped steps {r['skipped']}")
        display(plots.precision_runs(runs, title=f"TinyGPT '{model}', {steps} steps per setting"))

    return _dashboard(controls, draw, columns=3)



# ----------------------------------------------------------------------------- lesson 02: activation checkpointing


# ----------------------------------------------------------------------------- lesson 03: data parallel


# ----------------------------------------------------------------------------- lesson 04: sharding


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

