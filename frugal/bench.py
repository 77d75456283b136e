"""`python -m frugal bench`: each lesson's headline measurement on this machine's hardware.

Every section is a function of a BenchContext that returns rows (dicts, printed as a table and saved)
and figures. Results go to results/<device>.json, merged with the sections already there, and
results/<device>_<section>_<figure>.png.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Callable

import torch

from frugal import device as dev

SECTIONS: dict[str, Callable[["BenchContext"], dict]] = {}


def section(name: str):
    """Register a benchmark section under `name` (order of registration = order of the run)."""
    def wrap(fn):
        SECTIONS[name] = fn
        return fn
    return wrap


@dataclass
class BenchContext:
    device: torch.device
    slug: str            # results/<slug>.json
    out_dir: Path
    quick: bool          # smaller sizes and fewer repeats (tests and CI use this)


def _print_table(name: str, rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    widths = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print(f"\n== {name}")
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).ljust(widths[c]) for c in cols))


def run(sections: list[str] | None = None, out_dir: str | Path = "results", quick: bool = False,
        device: str | None = None) -> dict:
    """Run the named sections (all by default), print their tables, write JSON and figures."""
    unknown = set(sections or []) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}: pick from {list(SECTIONS)}")
    ctx = BenchContext(dev.pick_device(device), dev.device_slug(device), Path(out_dir), quick)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.out_dir / f"{ctx.slug}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["device"] = asdict(dev.describe(ctx.device))
    results["host"] = {"cpu_count": torch.get_num_threads(), "platform": platform.platform()}
    results.setdefault("sections", {})
    for name in sections or list(SECTIONS):
        t0 = time.perf_counter()
        out = SECTIONS[name](ctx)
        figures = out.pop("figures", {})
        files = []
        for fig_name, fig in figures.items():
            f = ctx.out_dir / f"{ctx.slug}_{name}_{fig_name}.png"
            fig.savefig(f, dpi=110)
            files.append(f.name)
        out["figures"] = files
        out["seconds"] = round(time.perf_counter() - t0, 1)
        out["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["sections"][name] = out
        _print_table(name, out.get("rows", []))
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return results


# ----------------------------------------------------------------------------- lesson 00: baseline

@section("baseline")
def bench_baseline(ctx: BenchContext) -> dict:
    """TinyGPT in fp32 (TF32 off): step time by measure.py and by torch.utils.benchmark, tokens/s, MFU,
    activation bytes estimated against counted."""
    import torch.utils.benchmark as tbench
    from frugal import estimate, measure, plots
    from frugal.data import synthetic_batch
    from frugal.model import TinyGPT, preset
    from frugal.train import TrainConfig, make_optimizer, train_step

    on_gpu = ctx.device.type == "cuda"
    name = "tiny" if ctx.quick else dev.default_model_size(ctx.device)
    cfg = preset(name)
    batch, seq = 8, cfg.block_size
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = TinyGPT(cfg).to(ctx.device)
    tcfg = TrainConfig(batch_size=batch, seq_len=seq, progress=False, grad_clip=None)
    opt = make_optimizer(model, tcfg)
    x, y = synthetic_batch(cfg.vocab_size, batch, seq, torch.Generator().manual_seed(0), ctx.device)
    step = lambda: train_step(model, opt, x, y, tcfg)
    repeats = 5 if ctx.quick else 20
    ours = measure.measure_time(step, ctx.device, warmup=3, repeats=repeats)
    timer = tbench.Timer(stmt="step()", globals={"step": step})
    ref = timer.timeit(repeats) if ctx.quick else timer.blocked_autorange(min_run_time=2.0)
    tokens_per_s = batch * seq / ours.median_s
    fpt = measure.model_flops_per_token(model, seq)
    if on_gpu and dev.catalog_name():
        peak, peak_src = estimate.get_gpu(dev.catalog_name()).peak_flops("fp32"), f"{dev.catalog_name()} fp32 data sheet"
    else:
        peak, peak_src = measure.measure_cpu_peak_flops(), "measured fp32 matmul"
    predicted = estimate.estimate_activation_bytes(cfg, batch, seq, act_bytes=4)
    counted = measure.measure_activation_bytes(model, x, y)
    peak_mem = measure.measure_peak_memory(step, ctx.device)
    row = {
        "model": name, "params": model.num_params(), "batch": batch, "seq": seq,
        "step_ms (measure.py)": ours.median_s * 1e3, "step_ms (torch.utils.benchmark)": ref.median * 1e3,
        "timing_gap": abs(ours.median_s - ref.median) / ref.median,
        "tokens_per_s": tokens_per_s, "tflops": tokens_per_s * fpt / 1e12,
        "mfu": measure.mfu(tokens_per_s, fpt, peak), "peak_source": peak_src,
        "act_bytes_estimated": sum(predicted.values()), "act_bytes_counted": counted,
        "act_error": abs(sum(predicted.values()) - counted) / counted,
        "peak_memory_bytes": peak_mem,
    }
    fig = plots.predicted_vs_measured(predicted, counted, title=f"Activation bytes, {name}, B={batch} T={seq} fp32")
    return {"rows": [row], "figures": {"activations": fig}}


# ----------------------------------------------------------------------------- lesson 01: mixed precision


# ----------------------------------------------------------------------------- lesson 02: activation checkpointing


# ----------------------------------------------------------------------------- lesson 03: data parallel


# ----------------------------------------------------------------------------- lesson 04: sharding


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel

@section("model_parallel")
def bench_model_parallel(ctx: BenchContext) -> dict:
    """Pipeline: measured bubble of GPipe and 1F1B per micro-batch count m against (p-1)/(m+p-1), and the
    first stage's peak activations. Tensor parallel: step time, tokens/s and all-reduce traffic of a block stack.
    One GPU per rank over NCCL when there are 2+ GPUs (up to 4), else 2 gloo ranks on CPU."""
    import statistics
    from frugal import estimate, plots
    from frugal import pipeline_parallel as pp
    from frugal import tensor_parallel as tp
    from frugal.dist import launch
    from frugal.model import GPTConfig

    on_gpu = ctx.device.type == "cuda" and dev.gpu_count() >= 2
    p = min(dev.gpu_count(), 4) if on_gpu else 2
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu and not ctx.quick:
        cfg = GPTConfig(vocab_size=256, block_size=512, n_layer=4 * p, n_head=16, n_embd=1024)
        batch, seq, ms, repeats = 32, 512, [1, 2, 4, 8, 16], 5
    else:
        cfg = GPTConfig(vocab_size=256, block_size=32, n_layer=2 * p, n_head=4, n_embd=64)
        batch, seq, ms, repeats = 8, 32, [1, 2, 4], 2
    threads = None if on_gpu else 1
    runs = [(s, m) for s in ("gpipe", "1f1b") for m in ms]
    res = pp.gather_runs(launch(pp.pipeline_rank, p, cfg, batch, seq, runs, 0, repeats + 1, False, threads,
                                backend=backend, timeout=300))
    rows, measured, gantt = [], {"gpipe": {}, "1f1b": {}}, {}
    for r in res:
        tls = r["timelines"][1:]                                      # the first repeat warms up
        bubbles = [pp.measure_bubble(tl) for tl in tls]
        steps = [max(e["end"] for st in tl for e in st) - min(e["start"] for st in tl for e in st) for tl in tls]
        measured[r["schedule"]][r["m"]] = statistics.median(bubbles)
        if r["m"] == min(4, max(ms)):
            gantt[f"{r['schedule']}, m={r['m']}"] = tls[len(tls) // 2]
        rows.append({"part": "pipeline", "backend": backend, "ranks": p, "schedule": r["schedule"], "m": r["m"],
                     "bubble_measured": statistics.median(bubbles), "bubble_formula": estimate.pipeline_bubble_fraction(p, r["m"]),
                     "step_ms": statistics.median(steps) * 1e3, "stage0_in_flight": r["in_flight"][0],
                     "stage0_activation_bytes": r["activation_bytes"][0]})
    tp_cfg = GPTConfig(vocab_size=256, block_size=seq, n_layer=cfg.n_layer // p if on_gpu else 2,
                       n_head=cfg.n_head, n_embd=cfg.n_embd)
    tp_batch = 8 if on_gpu and not ctx.quick else 4
    for w in sorted({1, p}):
        out = launch(tp.tp_stack_step_rank, w, tp_cfg, tp_batch, seq, 3, 10 if on_gpu else 3, threads,
                     backend=backend, timeout=300)[0]
        rows.append({"part": "tensor", "backend": backend, "ranks": w, "layers": tp_cfg.n_layer,
                     "step_ms": out["step_s"] * 1e3, "tokens_per_s": tp_batch * seq / out["step_s"],
                     "all_reduces_per_step": out["all_reduces"], "comm_bytes_per_step": out["comm_bytes"],
                     "all_reduce_ms": out["all_reduce_s"] * 1e3,
                     "comm_share_est": out["all_reduces"] * out["all_reduce_s"] / out["step_s"] if w > 1 else 0.0,
                     "params_per_rank": out["params_per_rank"]})
    return {"rows": rows, "figures": {"bubble": plots.bubble_vs_formula(measured, p),
                                      "gantt": plots.pipeline_gantt(gantt)}}



# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

