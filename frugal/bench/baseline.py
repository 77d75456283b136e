"""Lesson 00: TinyGPT in fp32 (TF32 off): step time by measure.py and by torch.utils.benchmark, tokens/s, MFU,
activation bytes estimated against counted."""
from __future__ import annotations

import torch
import torch.utils.benchmark as tbench

from frugal import device as dev
from frugal import estimate, measure, plots, train
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, section
from frugal.data import synthetic_batch
from frugal.model import preset

TABLES = [
    Table("One fp32 optimizer step (TF32 off), {model}, batch {batch} x {seq} tokens", [
        Column("params", "params", "M"),
        Column("step_ms (measure.py)", "step, measure.py (ms)", "ms"),
        Column("step_ms (torch.utils.benchmark)", "step, torch.utils.benchmark (ms)", "ms"),
        Column("timing_gap", "gap", "%"), Column("tokens_per_s", "tokens/s", "tok/s"),
        Column("tflops", "TFLOP/s"), Column("mfu", "MFU", "%"), Column("peak_source", "MFU against")]),
    Table("Activation memory, {model}, batch {batch} x {seq} tokens, fp32", [
        Column("act_bytes_estimated", "estimate.py (GB)", "GB"), Column("act_bytes_counted", "counted (GB)", "GB"),
        Column("act_error", "error", "%"), Column("peak_memory_bytes", "peak CUDA memory (GB)", "GB")]),
]


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    r = rows[0] if rows else None
    if not r:
        return []
    return [(f"fp32 step (TF32 off), {r['model']} B={r['batch']}: measure.py vs torch.utils.benchmark",
             f"{r['step_ms (measure.py)']:.1f} vs {r['step_ms (torch.utils.benchmark)']:.1f} ms")]


@section("baseline", TABLES, headlines)
def bench_baseline(ctx: BenchContext) -> dict:
    """TinyGPT in fp32 (TF32 off, restored afterwards): two clocks on one step, tokens/s, MFU, activation bytes."""
    on_gpu = ctx.device.type == "cuda"
    name = "tiny" if ctx.quick else dev.default_model_size(ctx.device)
    cfg = preset(name)
    batch, seq = 8, cfg.block_size
    tcfg = train.TrainConfig(batch_size=batch, seq_len=seq, precision="fp32", progress=False, grad_clip=None,
                             device=str(ctx.device))
    model, opt, _, device = train.build(cfg, tcfg)
    x, y = synthetic_batch(cfg.vocab_size, batch, seq, torch.Generator().manual_seed(0), device)
    step = lambda: train.train_step(model, opt, x, y, tcfg)
    repeats = 5 if ctx.quick else 20
    with train.matmul_precision(tcfg):           # the counted forward below runs the same fp32 matmuls
        ours = measure.measure_time(step, device, warmup=3, repeats=repeats)
        timer = tbench.Timer(stmt="step()", globals={"step": step})
        ref = timer.timeit(repeats) if ctx.quick else timer.blocked_autorange(min_run_time=2.0)
        predicted = estimate.estimate_activation_bytes(cfg, batch, seq, act_bytes=4)
        counted = measure.measure_activation_bytes(model, x, y)
        peak_mem = measure.measure_peak_memory(step, device)
    tokens_per_s = batch * seq / ours.median_s
    fpt = measure.model_flops_per_token(model, seq)
    if on_gpu and dev.catalog_name():
        peak, peak_src = estimate.get_gpu(dev.catalog_name()).peak_flops("fp32"), f"{dev.catalog_name()} fp32 data sheet"
    else:
        peak, peak_src = measure.measure_cpu_peak_flops(), "measured fp32 matmul"
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
