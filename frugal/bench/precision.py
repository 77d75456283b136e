"""Lesson 01: one TinyGPT step in fp32 (TF32 off), tf32, bf16, fp16 + our LossScaler and fp16 + torch's GradScaler."""
from __future__ import annotations

import statistics

import torch

from frugal import device as dev
from frugal import estimate, measure, plots, train
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, meta_model, section
from frugal.data import synthetic_batch
from frugal.model import preset

SETTINGS = [("fp32", "fp32", "none"), ("tf32", "tf32", "none"), ("bf16", "bf16", "none"),   # (label, precision,
            ("fp16+LossScaler", "fp16", "frugal"), ("fp16+GradScaler", "fp16", "torch")]   # loss scaler)

TABLES = [
    Table("{model}, batch {batch} x {seq} tokens", [
        Column("setting", "setting"), Column("step_ms", "step, back to back (ms)", "ms"),
        Column("step_ms_synced_each_step", "step, synced each step (ms)", "ms"),
        Column("tokens_per_s", "tokens/s", "tok/s"), Column("peak_memory_bytes", "peak CUDA memory (GB)", "GB"),
        Column("mfu", "MFU", "%"), Column("peak_source", "MFU against"), Column("repeats", "repeats")],
        where=lambda r: r.get("setting") != "ratios",
        note="Back to back: the steady state of a training loop. Synced each step: the GPU also waits for the "
             "first kernels Python enqueues, which shows once a step is short."),
    Table("Ratios of step times", [
        Column("bf16_speedup_over_fp32", "bf16 over fp32", "x"),
        Column("bf16_speedup_synced_each_step", "bf16 over fp32, synced each step", "x"),
        Column("tf32_speedup_over_fp32", "tf32 over fp32", "x"),
        Column("losscaler_over_gradscaler", "LossScaler step / GradScaler step", "x")],
        where=lambda r: r.get("setting") == "ratios"),
]


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    ms = {r["setting"]: r for r in rows if "step_ms" in r}
    if "fp32" not in ms or "bf16" not in ms:
        return []
    fp32, bf16 = ms["fp32"], ms["bf16"]
    return [(f"bf16 step vs fp32 step (TF32 off), {bf16['model']} B={bf16['batch']}",
             f"{bf16['step_ms']:.1f} vs {fp32['step_ms']:.1f} ms ({fp32['step_ms'] / bf16['step_ms']:.1f}× faster)")]


@section("precision", TABLES, headlines)
def bench_precision(ctx: BenchContext) -> dict:
    """Step time, tokens/s, peak memory and MFU of each setting; rounds alternate between settings so drift hits
    all alike. GPT-2 small on a GPU. step_ms is the steady state; step_ms_synced_each_step adds the launch gap."""
    on_gpu = ctx.device.type == "cuda"
    name = "gpt2-small" if on_gpu and not ctx.quick else "tiny"
    cfg = preset(name)
    batch, seq = (8, 1024) if name == "gpt2-small" else (4, 32)
    x, y = synthetic_batch(cfg.vocab_size, batch, seq, torch.Generator().manual_seed(0), ctx.device)
    steps, peaks = {}, {}
    for label, precision, scaler_name in SETTINGS:
        tcfg = train.TrainConfig(batch_size=batch, seq_len=seq, precision=precision, scaler=scaler_name,
                                 progress=False, grad_clip=None, device=str(ctx.device))
        model, opt, _, device = train.build(cfg, tcfg)
        scaler = train.make_scaler(tcfg, device)
        steps[label] = (lambda m=model, o=opt, c=tcfg, s=scaler: train.train_step(m, o, x, y, c, s))
        peaks[label] = measure.measure_peak_memory(steps[label], ctx.device)
    # Two clocks: the steady state (5 steps back to back per reading, as a training loop runs) and a sync after
    # every step, where the GPU starts each step idle while Python enqueues its first kernels (the launch gap).
    rounds, repeats, inner = (1, 2, 2) if ctx.quick else (3, 6, 5)
    times = {label: [] for label in steps}
    synced = {label: [] for label in steps}
    for _ in range(rounds):
        for label in steps:
            times[label] += measure.measure_time(steps[label], ctx.device, warmup=1 if ctx.quick else 3,
                                                 repeats=repeats, inner=inner).times_s
            synced[label] += measure.measure_time(steps[label], ctx.device, warmup=1, repeats=repeats).times_s
    fpt = measure.model_flops_per_token(meta_model(cfg), seq)
    gpu = dev.catalog_name() if on_gpu else None
    cpu_peak = None if gpu else measure.measure_cpu_peak_flops()
    rows = []
    for label, precision, _ in SETTINGS:
        t = statistics.median(times[label])
        if gpu and precision in estimate.get_gpu(gpu).peak_tflops:   # MFU against the peak of the matmuls' format
            peak, src = estimate.get_gpu(gpu).peak_flops(precision), f"{gpu} {precision} data sheet"
        elif gpu:                                    # e.g. bf16 on a T4: emulated, no data-sheet peak
            peak, src = None, f"{gpu} has no native {precision}"
        else:
            peak, src = cpu_peak, "measured fp32 matmul"
        rows.append({"setting": label, "model": name, "batch": batch, "seq": seq, "step_ms": t * 1e3,
                     "step_ms_synced_each_step": statistics.median(synced[label]) * 1e3,
                     "tokens_per_s": batch * seq / t, "peak_memory_bytes": peaks[label],
                     "mfu": measure.mfu(batch * seq / t, fpt, peak) if peak else None, "peak_source": src,
                     "repeats": len(times[label])})
    ms = {r["setting"]: r["step_ms"] for r in rows}
    ms_synced = {r["setting"]: r["step_ms_synced_each_step"] for r in rows}
    rows.append({"setting": "ratios", "bf16_speedup_over_fp32": ms["fp32"] / ms["bf16"],
                 "bf16_speedup_synced_each_step": ms_synced["fp32"] / ms_synced["bf16"],
                 "tf32_speedup_over_fp32": ms["fp32"] / ms["tf32"],
                 "losscaler_over_gradscaler": ms["fp16+LossScaler"] / ms["fp16+GradScaler"]})
    fig = plots.step_time_bars(ms, ms_synced, title=f"{name}, B={batch} T={seq} on {dev.describe(ctx.device).name}")
    return {"rows": rows, "figures": {"step_time": fig}}
