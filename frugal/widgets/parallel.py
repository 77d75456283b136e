"""Lessons 03-05's dashboards: data parallel on live ranks, ZeRO's sharding, pipeline schedules and layouts."""
from __future__ import annotations

import ipywidgets as W
from IPython.display import display

from frugal import estimate, plots
from frugal import pipeline_parallel as pipe
from frugal.measure_training import train_with_reports
from frugal.train import TrainConfig, train
from frugal.units import human_bytes, human_count
from frugal.widgets._common import Progress, _dashboard, _log_slider, _powers_of_two_slider


# ----------------------------------------------------------------------------- lesson 03: data parallel

def data_parallel_trainer(model_cfg, steps: int = 15, batch_size: int = 8) -> W.Widget:
    """World size, flavour and bucket size in; ranks really launched (train()), loss against the
    single-process run on the same global batch, and the last backward's bucket timeline out. While the ranks
    train the controls are disabled and the bar moves with each step and as each rank joins and finishes."""
    single_cache: dict = {}

    controls = {
        "world_size": W.Dropdown(options=[1, 2, 4], value=2, description="ranks"),
        "flavour": W.Dropdown(options=["naive", "bucket", "ddp"], value="bucket", description="flavour"),
        "bucket_cap_mb": _log_slider("bucket MiB", 0.05, 0.005, 25),
    }
    progress = Progress(controls.values())

    def draw(world_size, flavour, bucket_cap_mb):
        kw = dict(steps=steps, batch_size=batch_size, seq_len=32, progress=False)
        # the bar: each step of the single-process reference (once), each rank's join and finish, rank 0's steps
        total = steps * ("loss" not in single_cache) + (2 * world_size if world_size > 1 else 0) + steps
        with progress.running(f"training {steps} steps on {world_size} rank(s)", total) as p:
            if "loss" not in single_cache:
                single_cache["loss"] = train(model_cfg, TrainConfig(**kw), on_step=lambda r: p.step(
                    f"the single-process reference ended step {r.step + 1}")).column("loss")
            run = train_with_reports(model_cfg, TrainConfig(**kw, world_size=world_size, data_parallel=flavour,
                                                            bucket_cap_mb=bucket_cap_mb), p.on_report)
        gap = max(abs(a - b) for a, b in zip(run.column("loss"), single_cache["loss"]))
        print(f"{world_size} rank(s) x {batch_size // world_size} sequences, {flavour}: largest loss gap to "
              f"single-process = {gap:.2e}")
        display(plots.loss_curve({"1 process, whole batch": single_cache["loss"],
                                  f"{world_size} ranks, {flavour}": run.column("loss")}))
        if getattr(run, "timeline", None):
            display(plots.overlap_timeline(run.timeline, run.backward_end_s))

    return _dashboard(controls, draw, columns=3, progress=progress)


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
        "world_size": _powers_of_two_slider("ranks", world_size, 1024),
        "n_params": _log_slider("parameters", n_params, 1e6, 1e12),
        "memory_gb": W.FloatSlider(value=memory_gb, min=8, max=192, step=8, description="GB per rank",
                                   readout_format=".0f", continuous_update=False,
                                   style={"description_width": "initial"}),
        "precision": W.Dropdown(options=["mixed", "fp32"], value="mixed", description="precision"),
    }

    def draw(stage, world_size, n_params, memory_gb, precision):
        plans = _zero_plans(n_params, world_size, precision)
        chosen = list(plans)[stage]
        need = sum(plans[chosen].values())
        grad_bytes = 4 if precision == "fp32" else 2           # what travels: the gradients (and stage 3's weights)
        comm = estimate.estimate_zero_comm_bytes(n_params, stage, world_size, grad_bytes)
        print(f"{chosen}: {human_bytes(need, binary=False)} per rank for {human_count(n_params, 'parameters')} "
              f"on {world_size} ranks ({'fits' if need <= memory_gb * 1e9 else 'does NOT fit'} in {memory_gb:g} GB); "
              f"sends {human_bytes(comm, binary=False)} per step ({'fp32' if grad_bytes == 4 else '16-bit'} values)")
        display(plots.memory_bars(plans, {"memory per rank": memory_gb}, highlight=chosen,
                                  title=f"Training state per rank, {world_size} ranks ({precision} Adam): {chosen}"))
        display(plots.max_model_bars({k: estimate.estimate_max_params(memory_gb, s, world_size, precision)
                                      for s, k in enumerate(plans)}, memory_gb, world_size, highlight=chosen))

    return _dashboard(controls, draw, columns=3)


def sharding_live(run_plans, world_sizes=(2, 3), modes=("ddp", "zero1", "zero2", "zero3")) -> W.Widget:
    """A live TinyGPT: pick ranks and stages, press run; run_plans(world_size, modes, on_report) trains them on
    gloo ranks (passing on_report to dist.launch) and returns a Figure (predicted beside counted bytes).
    A button, because each run takes seconds: disabled while it runs, the bar moving with each rank's report."""
    world = W.Dropdown(options=list(world_sizes), value=world_sizes[0], description="ranks")
    chosen = W.SelectMultiple(options=list(modes), value=tuple(modes), description="plans")
    button = W.Button(description="train and count", button_style="primary")
    progress = Progress([world, chosen, button])
    out = W.Output()

    def on_click(_):
        out.clear_output()
        plans = list(chosen.value)
        with out, progress.running(f"training {len(plans)} plans on {world.value} ranks",
                                   world.value * (len(plans) + 2)) as p:   # each rank: joined, each plan, done
            display(run_plans(world.value, plans, p.on_report))

    button.on_click(on_click)
    return W.VBox([W.HBox([world, chosen, button]), progress.widget, out])


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel

def pipeline_explorer(runs: list[dict]) -> W.Widget:
    """Schedule and micro-batches in; the measured Gantt chart of that run (from pipeline_parallel.gather_runs)
    over the ideal one, with the measured bubble against (p-1)/(m+p-1)."""
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
        name = "ideal (backward = 2 x forward, free communication)"
        display(plots.pipeline_gantt({f"measured ({schedule}, m={m})": tl, name: ideal},
                                     units={name: ("simulation time units (one forward = 1)", 1.0)}))

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
        print(f"{layout.world_size} GPUs; first-stage rank needs {human_bytes(mem.total, binary=False)} of "
              f"{spec.memory_gb:g} GB "
              f"({'fits' if mem.total <= spec.memory_gb * 1e9 else 'does not fit'}); pipeline bubble "
              f"{estimate.pipeline_bubble_fraction(pp, n_micro):.0%}")
        if dp == 1 and zero_stage:
            print(f"ZeRO stage {zero_stage} shards the states over the dp replicas: with dp=1 there is no one to "
                  f"share them with, so it saves nothing (move dp)")
        display(plots.rank_grid(dp, tp, pp))
        display(plots.memory_bars({f"dp{dp} tp{tp} pp{pp}": mem.as_dict()}, {gpu: spec.memory_gb},
                                  title="Memory of one rank on the first stage"))

    return _dashboard(controls, draw, columns=3)
