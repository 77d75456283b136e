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


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel

def pipeline_explorer(runs: list[dict]) -> W.Widget:
    """Schedule and micro-batches in; the measured Gantt chart of that run (from pipeline_parallel.gather_runs)
    over the ideal one, with the measured bubble against (p-1)/(m+p-1)."""
    from frugal import pipeline_parallel as pipe
    by_key = {(r["schedule"], r["m"]): r for r in runs}
    schedules = sorted({r["schedule"] for r in runs})
    ms = sorted({r["m"] for r in runs})
    controls = {
        "schedule": W.Dropdown(options=schedules, value=schedules[-1], description="schedule"),
        "m": W.SelectionSlider(options=ms, value=ms[len(ms) // 2], description="micro-batches",
                               continuous_update=False, style={"description_width": "initial"}),
    }

    def draw(schedule, m):
        run = by_key[(schedule, m)]
        tl = run["timelines"][-1]
        p = len(tl)
        measured = pipe.measure_bubble(tl)
        print(f"{schedule}, p={p}, m={m}: measured bubble {measured:.2f}, formula (p-1)/(m+p-1) = "
              f"{estimate.pipeline_bubble_fraction(p, m):.2f}; micro-batches in flight per stage {run['in_flight']}")
        ideal = pipe.simulate(schedule, p, m, 1.0, 2.0)
        display(plots.pipeline_gantt({f"measured ({schedule}, m={m})": tl,
                                      "ideal (backward = 2 x forward, free communication)": ideal}))

    return _dashboard(controls, draw)


def layout_explorer(n_layer: int = 96, hidden: int = 12288, heads: int = 96, vocab: int = 51200,
                    seq: int = 2048, gpu: str = "H100") -> W.Widget:
    """dp, tp, pp, micro-batches and schedule in; the grid of ranks and the estimated memory per rank out
    (defaults: GPT-3 175B, Brown et al. 2020)."""
    divisors = lambda n: [d for d in range(1, min(n, 64) + 1) if n % d == 0]
    controls = {
        "dp": W.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64], value=1, description="dp"),
        "tp": W.SelectionSlider(options=[d for d in divisors(heads) if d <= 16], value=1, description="tp"),
        "pp": W.SelectionSlider(options=divisors(n_layer), value=1, description="pp"),
        "n_micro": W.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64], value=8, description="micro-batches",
                                     style={"description_width": "initial"}),
        "schedule": W.Dropdown(options=["1f1b", "gpipe"], value="1f1b", description="schedule"),
        "zero_stage": W.Dropdown(options=[0, 1, 2, 3], value=1, description="ZeRO stage"),
    }

    def draw(dp, tp, pp, n_micro, schedule, zero_stage):
        layout = estimate.ParallelLayout(dp, tp, pp)
        mem = estimate.estimate_parallel_memory(n_layer, hidden, heads, vocab, seq, 1, layout, n_micro, schedule,
                                                zero_stage=zero_stage)
        spec = estimate.get_gpu(gpu)
        print(f"{layout.world_size} GPUs; first-stage rank needs {mem.total / 1e9:,.1f} GB of {spec.memory_gb} GB "
              f"({'fits' if mem.total <= spec.memory_gb * 1e9 else 'does not fit'}); pipeline bubble "
              f"{estimate.pipeline_bubble_fraction(pp, n_micro):.0%}")
        display(plots.rank_grid(dp, tp, pp))
        display(plots.memory_bars({f"dp{dp} tp{tp} pp{pp}": mem.as_dict()}, {gpu: spec.memory_gb},
                                  title="Memory of one rank on the first stage"))

    return _dashboard(controls, draw, columns=3)



# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

