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

@section("zero")
def bench_zero(ctx: BenchContext) -> dict:
    """Torch DDP, our ZeRO stages 1-3 and torch FSDP on every visible GPU (NCCL; 2 gloo CPU ranks otherwise):
    tokens/s, per-rank peak memory beside the estimator, bytes sent; then a model over 2x what DP holds,
    trained with stage 3 under an emulated per-GPU memory cap."""
    from frugal import estimate, plots
    from frugal.dist import launch
    from frugal.model import TinyGPT, preset
    from frugal.zero import ZeroRun, run_many

    gpus = dev.gpu_count() if ctx.device.type == "cuda" else 0
    multi = gpus >= 2
    world = min(gpus, 4) if multi else 2
    big = multi and not ctx.quick
    model, dtype, batch, seq = ("gpt2-small", "bf16", 8, 1024) if big else ("tiny", "fp32", 4, 32)
    steps, warmup = (15, 5) if big else (4, 1)
    backend = "nccl" if multi else "gloo"
    modes = ("ddp", "zero1", "zero2", "zero3", "fsdp")
    base = dict(model=model, dtype=dtype, batch_size=batch, seq_len=seq, steps=steps, warmup=warmup)
    results = launch(run_many, world, {m: ZeroRun(mode=m, **base) for m in modes}, backend=backend,
                     timeout=600)
    cfg = preset(model)
    with torch.device("meta"):
        n_params = TinyGPT(cfg).num_params()
    precision = "mixed" if dtype != "fp32" else "fp32"
    act_bytes = 2 if dtype != "fp32" else 4
    act_pred = sum(estimate.estimate_activation_bytes(cfg, batch, seq, act_bytes=act_bytes).values())
    label = lambda m: {"ddp": "DDP", "fsdp": "FSDP"}.get(m) or f"stage {m[-1]}"
    stage_of = lambda m: {"ddp": 0, "fsdp": 3}.get(m) if m in ("ddp", "fsdp") else int(m[-1])
    rows, predicted, observed, comm_pred, comm_counted = [], {}, {}, {}, {}
    for m in modes:
        per_rank = [r[m] for r in results]
        if "error" in per_rank[0]:
            rows.append({"plan": label(m), "error": per_rank[0]["error"][:200]})
            continue
        state = estimate.estimate_state_memory(n_params, precision, "adam", stage_of(m), world)
        peak = max(r["peak_memory_bytes"] or 0 for r in per_rank) or None
        counted = per_rank[0]["state_bytes"]
        row = {"plan": label(m), "world_size": world, "model": model, "n_params": n_params, "dtype": dtype,
               "tokens_per_s": min(r["tokens_per_s"] for r in per_rank),      # the slowest rank sets the pace
               "step_ms": max(r["step_s"] for r in per_rank) * 1e3,
               "state_bytes_predicted": state.total, "state_bytes_counted": sum(counted.values()),
               "activation_bytes_predicted": act_pred,
               "peak_bytes_predicted": state.total + act_pred, "peak_bytes_measured": peak,
               "peak_over_predicted": peak / (state.total + act_pred) if peak else None,
               "comm_bytes_per_step": per_rank[0]["comm_bytes_per_step"] if m != "fsdp" else None,
               "final_loss": per_rank[0]["losses"][-1]}
        rows.append(row)
        predicted[label(m)] = {**state.as_dict(), "activations": act_pred}
        # measured: counted state by kind; on a GPU the rest of the peak (activations and temporaries) on top
        rest = (peak - sum(counted.values())) if peak else act_pred
        observed[label(m)] = {**counted, "activations": rest}
        if m != "fsdp":
            comm_pred[label(m)] = estimate.estimate_zero_comm_bytes(n_params, stage_of(m), world, act_bytes)
            comm_counted[label(m)] = row["comm_bytes_per_step"]
    figures = {
        "memory": plots.sharding_memory_bars(
            predicted, observed, unit=2 ** 30 if big else 2 ** 20, unit_name="GiB" if big else "MiB",
            title=f"Per-rank memory, {model} {dtype}, {world} x {ctx.slug}: predicted vs "
                  f"{'peak CUDA' if multi else 'counted'}"),
        "comm": plots.comm_volume_bars(comm_pred, comm_counted),
    }
    if big:
        rows += _zero_memory_cap(world, dtype, n_params)
    return {"rows": rows, "figures": figures}


def _zero_memory_cap(world: int, dtype: str, small_params: int) -> list[dict]:
    """Cap each GPU's memory between what gpt2-medium needs under stage 3 and under DP (estimator), then
    train it both ways; gpt2-small under DP is the control that the cap leaves room for."""
    from frugal import estimate
    from frugal.dist import RankError, launch
    from frugal.model import TinyGPT, preset
    from frugal.zero import ZeroRun, run_rank

    batch, seq = 2, 1024
    cfg = preset("gpt2-medium")
    with torch.device("meta"):
        n_big = TinyGPT(cfg).num_params()
    act = lambda c: sum(estimate.estimate_activation_bytes(c, batch, seq, act_bytes=2).values())
    need = lambda n, s, c: estimate.estimate_state_memory(n, "mixed", "adam", s, world).total + act(c)
    cap = (need(n_big, 0, cfg) + need(n_big, 3, cfg)) / 2
    fraction = cap / torch.cuda.get_device_properties(0).total_memory
    rows = []
    for name, mode, n in (("gpt2-small", "ddp", small_params), ("gpt2-medium", "ddp", n_big),
                          ("gpt2-medium", "zero3", n_big)):
        run = ZeroRun(mode=mode, model=name, dtype=dtype, batch_size=batch, seq_len=seq, steps=3,
                      memory_fraction=fraction)
        try:
            out = launch(run_rank, world, run, backend="nccl", timeout=120)
            fits, peak = True, max(r["peak_memory_bytes"] for r in out)
        except RankError as e:
            fits, peak = False, None
            if "out of memory" not in str(e).lower() and "OutOfMemoryError" not in str(e):
                raise
        rows.append({"plan": f"cap {cap / 2**30:.1f} GiB: {name} {mode}", "n_params": n,
                     "params_over_control": n / small_params, "memory_cap_bytes": cap, "fits": fits,
                     "peak_bytes_measured": peak})
    return rows



# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

