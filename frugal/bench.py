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

@section("precision")
def bench_precision(ctx: BenchContext) -> dict:
    """TinyGPT step time, tokens/s, peak memory and MFU in fp32 (TF32 off), tf32, bf16, fp16 + LossScaler and
    fp16 + GradScaler; rounds alternate between settings so drift hits all alike. GPT-2 small on a GPU."""
    import statistics
    from frugal import estimate, measure, plots
    from frugal.data import synthetic_batch
    from frugal.model import TinyGPT, preset
    from frugal.train import TrainConfig, make_optimizer, make_scaler, train_step

    on_gpu = ctx.device.type == "cuda"
    name = "gpt2-small" if on_gpu and not ctx.quick else "tiny"
    cfg = preset(name)
    batch, seq = (8, 1024) if name == "gpt2-small" else (4, 32)
    settings = [("fp32", "fp32", "none"), ("tf32", "tf32", "none"), ("bf16", "bf16", "none"),
                ("fp16+LossScaler", "fp16", "frugal"), ("fp16+GradScaler", "fp16", "torch")]
    x, y = synthetic_batch(cfg.vocab_size, batch, seq, torch.Generator().manual_seed(0), ctx.device)
    steps, times, peaks = {}, {}, {}
    for label, precision, scaler_name in settings:
        torch.manual_seed(0)
        model = TinyGPT(cfg).to(ctx.device)
        tcfg = TrainConfig(batch_size=batch, seq_len=seq, precision=precision, scaler=scaler_name,
                           progress=False, grad_clip=None)
        opt, scaler = make_optimizer(model, tcfg), make_scaler(tcfg, ctx.device)
        steps[label] = (lambda m=model, o=opt, c=tcfg, s=scaler: train_step(m, o, x, y, c, s))
        times[label] = []
        peaks[label] = measure.measure_peak_memory(steps[label], ctx.device)
    rounds, repeats = (1, 3) if ctx.quick else (3, 10)
    for _ in range(rounds):
        for label in steps:
            times[label] += measure.measure_time(steps[label], ctx.device, warmup=3, repeats=repeats).times_s
    fpt = measure.model_flops_per_token(_meta_model(cfg), seq)
    gpu = dev.catalog_name() if on_gpu else None
    cpu_peak = None if gpu else measure.measure_cpu_peak_flops()
    rows = []
    for label, precision, _ in settings:
        t = statistics.median(times[label])
        dtype = precision                            # MFU against the peak of the format the matmuls run in
        if gpu and dtype in estimate.get_gpu(gpu).peak_tflops:
            peak, src = estimate.get_gpu(gpu).peak_flops(dtype), f"{gpu} {dtype} data sheet"
        elif gpu:                                    # e.g. bf16 on a T4: emulated, no data-sheet peak
            peak, src = None, f"{gpu} has no native {dtype}"
        else:
            peak, src = cpu_peak, "measured fp32 matmul"
        rows.append({"setting": label, "model": name, "batch": batch, "seq": seq, "step_ms": t * 1e3,
                     "tokens_per_s": batch * seq / t, "peak_memory_bytes": peaks[label],
                     "mfu": measure.mfu(batch * seq / t, fpt, peak) if peak else None, "peak_source": src,
                     "repeats": len(times[label])})
    ms = {r["setting"]: r["step_ms"] for r in rows}
    rows.append({"setting": "ratios", "bf16_speedup_over_fp32": ms["fp32"] / ms["bf16"],
                 "tf32_speedup_over_fp32": ms["fp32"] / ms["tf32"],
                 "losscaler_over_gradscaler": ms["fp16+LossScaler"] / ms["fp16+GradScaler"]})
    fig, ax = plots._figure(6.4, 3.6)
    ax.bar(list(ms), list(ms.values()), color=[plots.FORMAT_COLORS.get(k.split("+")[0], "grey") for k in ms])
    ax.set_ylabel("median step (ms)")
    ax.set_title(f"{name}, B={batch} T={seq} on {dev.describe(ctx.device).name}")
    ax.tick_params(axis="x", labelsize=8)
    return {"rows": rows, "figures": {"step_time": fig}}


def _meta_model(cfg):
    """A TinyGPT on the meta device: its parameter counts without allocating memory."""
    from frugal.model import TinyGPT
    with torch.device("meta"):
        return TinyGPT(cfg)



# ----------------------------------------------------------------------------- lesson 02: activation checkpointing


# ----------------------------------------------------------------------------- lesson 03: data parallel


# ----------------------------------------------------------------------------- lesson 04: sharding


# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel


# ----------------------------------------------------------------------------- lesson 06: Triton kernels


# ----------------------------------------------------------------------------- lesson 07: the recipe

