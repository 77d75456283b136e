"""Lesson 07's dashboard: every TrainConfig switch on a live TinyGPT, measured beside the estimator."""
from __future__ import annotations

import ipywidgets as W
import torch
from IPython.display import display

from frugal import estimate, plots, recipe
from frugal.measure import measure_cpu_peak_flops
from frugal.model import preset
from frugal.train import DATA_PARALLEL, PRECISIONS, SCALERS, TrainConfig
from frugal.widgets._common import Progress, _dashboard, _enabled_when


def recipe_dashboard(model: str = "tiny", steps: int = 8, batch_size: int = 8, seq_len: int = 32,
                     mfu: float = 0.4) -> W.Widget:
    """Every TrainConfig switch in; a live TinyGPT trained with them out: tokens/s, memory, MFU and US$ per
    billion tokens at the chosen GPU's price, beside estimate.py's prediction for the same plan (at `mfu`).
    While it trains the controls are disabled and the bar moves with each step and as each rank joins and finishes."""
    runs: dict[str, dict] = {}
    cpu_peak: list[float] = []
    cuda = torch.cuda.is_available()
    controls = {
        "precision": W.Dropdown(options=[p for p in PRECISIONS if p != "fp8"], value="bf16", description="precision"),
        "scaler": W.Dropdown(options=list(SCALERS), value="frugal", description="fp16 scaler"),
        "recompute": W.Dropdown(options=["none", "full", "every:2", "selective", "sqrt"], value="full",
                                description="recompute"),
        "fused_ce": W.Checkbox(value=True, description="fused cross-entropy"),
        "parallel": W.Dropdown(options=list(DATA_PARALLEL), value="bucket", description="parallel"),
        "world_size": W.Dropdown(options=[1, 2], value=1, description="ranks"),
        "gpu": W.Dropdown(options=list(estimate.GPU_CATALOG), value="T4", description="price of"),
    }
    progress = Progress(controls.values())

    # greyed out where moving them would retrain the same plan
    _enabled_when(controls, ("scaler",), "precision", lambda p: p == "fp16")
    _enabled_when(controls, ("parallel",), "world_size", lambda n: n > 1)

    def draw(precision, scaler, recompute, fused_ce, parallel, world_size, gpu):
        try:
            cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, precision=precision,
                              scaler=scaler, recompute=recompute, fused_cross_entropy=fused_ce,
                              data_parallel=parallel, world_size=world_size, data="corpus", progress=False)
        except ValueError as e:
            print(f"not a valid plan: {e}")
            return
        if not cuda and not cpu_peak:
            cpu_peak.append(measure_cpu_peak_flops(0.3))
        mcfg = preset(model, block_size=max(seq_len, preset(model).block_size))
        what = f"training {steps} steps on {world_size} rank(s)"
        with progress.running(what, steps + (2 * world_size if world_size > 1 else 0)) as p:  # steps; joined, done
            got = recipe.measure_recipe(mcfg, cfg, gpu, cpu_peak_flops=cpu_peak[0] if cpu_peak else None,
                                        on_report=p.on_report)
        pred = recipe.estimate_recipe(mcfg, cfg, gpu, mfu)
        got["predicted_memory_bytes"] = pred["total_bytes"] if cuda else pred["activation_bytes"]
        got["predicted_dollars_per_billion_tokens"] = pred["dollars_per_billion_tokens"]
        par = f"{world_size}x{parallel}" if world_size > 1 else "1 rank"
        name = f"{precision} {recompute}{' fusedCE' if fused_ce else ''} {par}"
        runs[name] = got
        print(f"{name}: {got['tokens_per_s']:,.0f} tokens/s, MFU {got['mfu']:.1%} ({got['peak_source']}), "
              f"final loss {got['loss'][-1]:.3f}")
        print(f"  memory: {got['memory_kind']} {plots.human_bytes(got['memory_bytes'])}; estimator "
              f"{plots.human_bytes(got['predicted_memory_bytes'])}"
              f" ({'whole step' if cuda else 'activations'}, per rank)")
        print(f"  US$ per billion tokens on {world_size} {gpu}: {got['dollars_per_billion_tokens']:,.3g} "
              f"({'measured speed' if cuda else 'the MFU measured here, at ' + gpu + ' peak'}); estimator at "
              f"MFU {mfu:.0%}: {pred['dollars_per_billion_tokens']:,.3g}")
        display(plots.recipe_runs(runs, title=f"TinyGPT '{model}', {steps} steps, batch {batch_size}x{seq_len}"))

    return _dashboard(controls, draw, columns=4, progress=progress)
