"""Lesson 01's dashboards: where a value lands in each number format, and training in each precision."""
from __future__ import annotations

import math

import ipywidgets as W
import torch
from IPython.display import display

from frugal import numerics, plots
from frugal.model import preset
from frugal.measure_training import measure_precision
from frugal.train import PRECISIONS, SCALERS, TrainConfig
from frugal.widgets._common import _dashboard, _enabled_when


def format_explorer(fmt: str = "fp16", value: float = 1e-6) -> W.Widget:
    """A format dropdown and a magnitude slider: the format's row of the table, where the value lands, the
    value after a round trip and its relative error, and every format's range on a number line."""
    table = numerics.format_table()
    controls = {
        "fmt": W.Dropdown(options=list(table), value=fmt, description="format"),
        "value": W.FloatLogSlider(value=value, base=10, min=-45, max=38.5, step=0.1, description="|x|",
                                  readout_format=".2e", continuous_update=False),   # 1.00e-6 fits; 0.000001 not
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
    runs: dict[str, dict] = {}
    controls = {
        "precision": W.Dropdown(options=[p for p in PRECISIONS if p != "fp8"], value="fp32", description="precision"),
        "scaler": W.Dropdown(options=list(SCALERS), value="frugal", description="fp16 scaler"),
        "init_scale": W.FloatLogSlider(value=2.0 ** 16, base=2, min=0, max=40, step=1, description="init scale",
                                       readout_format=".3g", continuous_update=False),
    }

    _enabled_when(controls, ("scaler", "init_scale"), "precision", lambda p: p == "fp16")   # the scaler is fp16's

    def draw(precision, scaler, init_scale):
        cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, precision=precision, scaler=scaler,
                          init_scale=init_scale, loss_divisor=loss_divisor, data="corpus")
        name = precision
        if precision == "fp16":
            name = f"fp16/{scaler}" + (f" 2^{math.log2(init_scale):.0f}" if scaler != "none" else "")
        runs[name] = measure_precision(preset(model), cfg)
        r = runs[name]
        print(f"{name}: final loss {r['loss'][-1]:.3f}, median step {r['step_ms']:.1f} ms, "
              f"{r['memory_kind']} {plots.human_bytes(r['memory_bytes'])} "
              f"(estimate.py: {plots.human_bytes(r['memory_estimate_bytes'])}), skipped steps {r['skipped']}")
        display(plots.precision_runs(runs, title=f"TinyGPT '{model}', {steps} steps per setting"))

    return _dashboard(controls, draw, columns=3)
