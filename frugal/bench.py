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

@section("data_parallel")
def bench_data_parallel(ctx: BenchContext) -> dict:
    """tokens/s against ranks for torch DDP, DataParallelNaive and DataParallelBucket (one GPU per rank,
    NCCL; 2 gloo ranks on CPU), and all-reduce bus bandwidth of our ring, our naive one and NCCL's."""
    from frugal import collectives, data_parallel, plots
    from frugal.dist import launch

    on_gpu = ctx.device.type == "cuda"
    n_max = dev.gpu_count() if on_gpu else 2
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        name, batch, seq, steps, warmup, bf16 = "gpt2-small", 8, 1024, (5 if ctx.quick else 20), 5, True
        nbytes, repeats = (2 ** 24 if ctx.quick else 256 * 2 ** 20), (5 if ctx.quick else 20)
    else:
        name, batch, seq, steps, warmup, bf16 = "tiny", 4, 64, (4 if ctx.quick else 20), 2, False
        nbytes, repeats = (2 ** 20 if ctx.quick else 2 ** 24), (3 if ctx.quick else 10)
    flavours = ["none", "ddp", "naive", "bucket"]
    worlds = sorted({1, *[2 ** k for k in range(1, 8) if 2 ** k <= n_max], n_max})
    rows = []
    for n in worlds:
        flv = flavours if n == 1 else flavours[1:]
        rows += launch(data_parallel.benchmark_rank, n, name, flv, batch, seq, steps, warmup, 25.0, bf16,
                       backend=backend, timeout=300)[0]
    one = {r["flavour"]: r["tokens_per_s"] for r in rows if r["world_size"] == 1}
    for r in rows:
        r["scaling_efficiency"] = r["tokens_per_s"] / (r["world_size"] * one[r["flavour"]])
        ddp = next(q for q in rows if q["flavour"] == "ddp" and q["world_size"] == r["world_size"])
        r["vs_ddp"] = r["tokens_per_s"] / ddp["tokens_per_s"]
    bw_rows = []
    if n_max > 1:                                  # one rank sends nothing: no bandwidth to measure
        bw_rows = launch(collectives.benchmark_all_reduce, n_max, nbytes, repeats, 3, backend=backend,
                         timeout=300)[0]
        ref = next(r for r in bw_rows if r["algorithm"] == "dist.all_reduce")["busbw_GBps"]
        for r in bw_rows:
            r["vs_dist_all_reduce"] = r["busbw_GBps"] / ref
    by_flavour = {f: {r["world_size"]: r["tokens_per_s"] for r in rows if r["flavour"] == f} for f in flavours[1:]}
    hw = dev.gpu_name() if on_gpu else "CPU, gloo"
    figs = {"scaling": plots.scaling(by_flavour, title=f"{name}, {batch}x{seq} tokens per rank, {hw}",
                                     ideal_from="ddp"),
            **({"busbw": plots.bus_bandwidth(bw_rows, title=f"All-reduce of {nbytes / 2 ** 20:g} MiB on {n_max} "
                                                          f"ranks, {hw}")} if bw_rows else {})}
    return {"rows": rows + bw_rows, "figures": figs}



# ----------------------------------------------------------------------------- lesson 04: sharding


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

