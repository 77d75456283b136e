"""ipywidgets dashboards: the only module that imports ipywidgets.

Widgets only wire controls to functions of plots.py, estimate.py and train.py. They use the inline
backend with an Output widget (interactive_output), so they work on ipywidgets 7.7 (Colab) and 8.
"""
from __future__ import annotations

import ipywidgets as W
import torch
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
        "n_gpus": W.IntSlider(value=n_gpus, min=1, max=4096, description="GPUs", continuous_update=False),
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
        print(f"6·N·D = {cost.flops:.3g} FLOPs = {cost.gpu_hours:,.0f} GPU-hours at MFU {mfu:.0%} of "
              f"{spec.peak_tflops[dtype]:g} TFLOPS ({dtype})")
        print(f"{n_gpus} × {gpu}: {cost.days:,.1f} days, about ${cost.dollars:,.0f} at ${price:g} per GPU-hour")
        plans = {}
        for stage, label in enumerate(["data parallel", "ZeRO-1", "ZeRO-2", "ZeRO-3"]):
            mem = estimate.estimate_training_memory(n_params, seq, micro_batch, precision, recompute=recompute,
                                                    zero_stage=stage, world_size=n_gpus)
            plans[label] = mem.as_dict()
        verdict = [f"{k}: {'fits' if sum(v.values()) <= spec.memory_gb * estimate.GB else 'does not fit'}"
                   for k, v in plans.items()]
        print(f"on one {gpu} ({spec.memory_gb:g} GB): " + ", ".join(verdict))
        display(plots.memory_bars(plans, {g: s.memory_gb for g, s in estimate.GPU_CATALOG.items()},
                                  title=f"Memory per GPU, {n_gpus} GPUs, micro-batch {micro_batch} × {seq} tokens"))
        dollars = {}
        for name, s in estimate.GPU_CATALOG.items():
            d = "fp32" if precision == "fp32" else ("bf16" if "bf16" in s.peak_tflops else "fp16")
            dollars[name] = estimate.estimate_cost(estimate.Plan(n_params, n_tokens, name, n_gpus, mfu, d)).dollars
        display(plots.cost_bars(dollars, title=f"The same run on each GPU (MFU {mfu:.0%}, catalog prices)"))

    return _dashboard(controls, draw, columns=3)


def activation_meter(model, max_batch: int = 32) -> W.Widget:
    """Batch and sequence sliders on a live TinyGPT: the activation bytes estimate.py predicts beside
    the bytes measure.py counts while the model runs one forward."""
    from frugal import data, measure

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
        print(f"predicted {sum(predicted.values()):,.0f} B, counted {counted:,} B "
              f"({(sum(predicted.values()) - counted) / counted:+.2%})")
        display(plots.predicted_vs_measured(predicted, counted, title=f"Saved for backward, B={batch} T={seq}"))

    return _dashboard(controls, draw, columns=2)


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

def vector_add_explorer(n: int = 3000, device: str | None = None) -> W.Widget:
    """Block-size and size sliders: the grid the add launches (programs, masked lanes), run for real, timed."""
    import time
    import torch
    from frugal.device import pick_device
    from frugal.kernels.vector_add import vector_add
    device = pick_device(device)
    controls = {
        "block_size": W.SelectionSlider(options=[2 ** k for k in range(4, 15)], value=1024,
                                        description="BLOCK_SIZE", continuous_update=False),
        "n": W.IntSlider(value=n, min=1, max=20000, step=1, description="elements", continuous_update=False),
    }

    def draw(block_size, n):
        x, y = torch.randn(n, device=device), torch.randn(n, device=device)
        vector_add(x, y, block_size)                                  # warm-up (compile on a GPU)
        t0 = time.perf_counter()
        out = vector_add(x, y, block_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        where = "GPU" if device.type == "cuda" else "CPU, through Triton's interpreter (slow: it runs each program in Python)"
        print(f"{-(-n // block_size)} programs; equals torch.add: {torch.equal(out, x + y)}; "
              f"{dt * 1e3:.2f} ms on {where}")
        display(plots.kernel_grid(n, block_size))

    return _dashboard(controls, draw)


def cross_entropy_memory_explorer(model, device: str | None = None) -> W.Widget:
    """Vocabulary, tokens and width sliders on the head's estimated peak memory, chunked or not; and the
    live TinyGPT's loss through both heads, with the bytes each saves for backward."""
    import torch
    from frugal.kernels.fused_linear_cross_entropy import default_chunk_size, estimate_linear_cross_entropy_memory
    from frugal.measure import count_saved_tensors
    controls = {
        "vocab": W.SelectionSlider(options=[2 ** k for k in range(8, 19)], value=2 ** 16, description="vocab",
                                   continuous_update=False),
        "tokens": W.SelectionSlider(options=[2 ** k for k in range(9, 21)], value=2 ** 13, description="tokens",
                                    continuous_update=False),
        "n_embd": W.Dropdown(options=[256, 768, 1024, 2048, 4096], value=768, description="n_embd"),
    }
    cfg = model.cfg
    x = torch.randint(cfg.vocab_size, (2, 2, min(32, cfg.block_size)), generator=torch.Generator().manual_seed(0))
    x = x.to(next(model.parameters()).device)

    def draw(vocab, tokens, n_embd):
        saved, losses = {}, {}
        for fused in (False, True):
            model.fused_cross_entropy = fused
            with count_saved_tensors(exclude=list(model.parameters())) as rec:
                losses[fused] = model(x[0], x[1])[1].item()
            saved[fused] = rec.nbytes
        model.fused_cross_entropy = False
        print(f"live TinyGPT ({cfg.vocab_size} tokens vocab): loss {losses[False]:.5f} unfused, "
              f"{losses[True]:.5f} chunked; saved for backward {plots.human_bytes(saved[False])} vs "
              f"{plots.human_bytes(saved[True])}")
        vocabs, token_counts = [2 ** k for k in range(8, 19)], [2 ** k for k in range(9, 21)]
        est = lambda t, v, chunk: estimate_linear_cross_entropy_memory(t, v, n_embd, chunk)
        by_vocab = {"unfused": (vocabs, [est(tokens, v, None) for v in vocabs]),
                    "chunked": (vocabs, [est(tokens, v, default_chunk_size(tokens, v, n_embd)) for v in vocabs])}
        by_tokens = {"unfused": (token_counts, [est(t, vocab, None) for t in token_counts]),
                     "chunked": (token_counts, [est(t, vocab, default_chunk_size(t, vocab, n_embd))
                                                for t in token_counts])}
        u, c = est(tokens, vocab, None), est(tokens, vocab, default_chunk_size(tokens, vocab, n_embd))
        print(f"estimate at vocab {vocab}, {tokens} tokens, n_embd {n_embd} (fp32): unfused "
              f"{plots.human_bytes(u)}, chunked {plots.human_bytes(c)} ({c / u:.2f}x)")
        display(plots.cross_entropy_memory(by_vocab, by_tokens))

    return _dashboard(controls, draw, columns=3)



# ----------------------------------------------------------------------------- lesson 07: the recipe


def recipe_dashboard(model: str = "tiny", steps: int = 8, batch_size: int = 8, seq_len: int = 32,
                     mfu: float = 0.4) -> W.Widget:
    """Every TrainConfig switch in; a live TinyGPT trained with them out: tokens/s, memory, MFU and US$ per
    billion tokens at the chosen GPU's price, beside estimate.py's prediction for the same plan (at `mfu`)."""
    from frugal import recipe
    from frugal.measure import measure_cpu_peak_flops
    from frugal.model import preset
    from frugal.train import DATA_PARALLEL, PRECISIONS, SCALERS, TrainConfig
    runs: dict[str, dict] = {}
    cpu_peak: list[float] = []
    cuda = torch.cuda.is_available()
    controls = {
        "precision": W.Dropdown(options=list(PRECISIONS), value="bf16", description="precision"),
        "scaler": W.Dropdown(options=list(SCALERS), value="frugal", description="fp16 scaler"),
        "recompute": W.Dropdown(options=["none", "full", "every:2", "selective", "sqrt"], value="full",
                                description="recompute"),
        "fused_ce": W.Checkbox(value=True, description="fused cross-entropy"),
        "parallel": W.Dropdown(options=list(DATA_PARALLEL), value="bucket", description="parallel"),
        "world_size": W.Dropdown(options=[1, 2], value=1, description="ranks"),
        "gpu": W.Dropdown(options=list(estimate.GPU_CATALOG), value="T4", description="price of"),
    }

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
        got = recipe.measure_recipe(mcfg, cfg, gpu, cpu_peak_flops=cpu_peak[0] if cpu_peak else None)
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

    return _dashboard(controls, draw, columns=4)
