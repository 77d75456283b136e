"""Lesson 07: candidate recipes, each a TrainConfig trained by train.train_step, against plain bf16: speed, MFU,
memory and US$ per billion tokens; then recompute + fused cross-entropy against plain bf16 at one batch."""
from __future__ import annotations

from dataclasses import replace

import torch

from frugal import device as dev
from frugal import estimate, measure, plots
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, section
from frugal.data import synthetic_batch
from frugal.model import TinyGPT, preset
from frugal.recompute import from_spec
from frugal.train import TrainConfig, autocast, build, train_step

_CANDIDATE = lambda r: "mfu" in r
_USD = lambda r: next((v for k, v in r.items() if k.startswith("usd_per_billion_tokens")), None)
TABLES = [
    Table("Candidates, {model}, {seq} tokens per sequence: speed", [
        Column("recipe", "recipe"), Column("step_ms", "step (ms)", "ms"), Column("tokens_per_s", "tokens/s", "tok/s"),
        Column("mfu", "MFU", "%"), Column(_USD, "US$ per billion tokens"), Column("best", "best MFU"),
        Column("peak_source", "MFU against")],
        where=_CANDIDATE, note="US$ at the on-demand hourly price in frugal/estimate.py's catalog for the GPU "
                               "measured (an H100's for a CPU run). The lesson aims at 40% MFU on a GPU."),
    Table("Candidates: memory", [
        Column("recipe", "recipe"), Column("peak_memory_bytes", "peak CUDA memory (GB)", "GB"),
        Column("peak_above_states_bytes", "peak above weights and Adam (GB)", "GB"),
        Column("saved_activation_bytes", "saved activations (GB)", "GB")],
        where=_CANDIDATE),
    Table("Recompute + fused cross-entropy against plain bf16 at one batch", [
        Column("recipe", "pair"), Column("activation_bytes_less", "fewer activation bytes", "%"),
        Column("step_time_more", "step time", "+%"),
        Column("peak_above_states_less", "less peak above weights and Adam", "%")],
        where=lambda r: r.get("recipe", "").startswith("pair:"),
        note="The lesson's target: 70% fewer activation bytes for at most 25% more step time."),
    Table("Candidates that failed", [Column("recipe", "recipe"), Column("error", "error")],
          where=lambda r: "error" in r),
]


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    ok = [r for r in rows if _CANDIDATE(r)]
    if not ok:
        return []
    best = max(ok, key=lambda r: r["mfu"])
    plain = max((r for r in ok if r["recipe"].startswith("plain")), key=lambda r: r["batch"], default=None)
    than = f" ({plain['recipe']}: {100 * plain['mfu']:.1f}%)" if plain and plain is not best else ""
    return [(f"best MFU of the candidate recipes, {best['model']}: {best['recipe']}", f"{100 * best['mfu']:.1f}%{than}")]


@section("recipe", TABLES, headlines)
def bench_recipe(ctx: BenchContext) -> dict:
    """GPT-2 small (tiny on CPU): plain bf16 against candidate recipes, each a TrainConfig: tokens/s, MFU
    (6N + 12·L·d·T per token against the catalog's dense bf16 peak), peak memory, saved activation bytes, US$ per
    billion tokens; the best is marked. Then checkpointing + fused cross-entropy against plain bf16 at one batch."""
    on_gpu = ctx.device.type == "cuda"
    big = on_gpu and not ctx.quick
    name = "gpt2-small" if big else "tiny"
    cfg = preset(name)
    seq = cfg.block_size if big else 32
    small_b, large_b = (8, 32) if big else (4, 8)
    gpu = dev.catalog_name() if on_gpu else None
    price_gpu = gpu or "H100"
    peak = estimate.get_gpu(gpu).peak_flops("bf16") if gpu else measure.measure_cpu_peak_flops()
    peak_src = f"{gpu} dense bf16 data sheet" if gpu else "this CPU's measured fp32 matmul peak"
    base = TrainConfig(batch_size=small_b, seq_len=seq, precision="bf16", progress=False, grad_clip=1.0,
                       data="synthetic", device=str(ctx.device))
    big_b = replace(base, batch_size=large_b)
    candidates = {
        f"plain bf16 B{small_b}": base,
        f"plain bf16 B{large_b}": big_b,
        f"fused CE B{large_b}": replace(big_b, fused_cross_entropy=True),
        f"compile blocks + fused CE B{large_b}": replace(big_b, fused_cross_entropy=True, compile="blocks"),
        f"compile model B{large_b}": replace(big_b, compile="model"),
        f"recompute full + fused CE B{large_b}": replace(big_b, recompute="full", fused_cross_entropy=True),
        f"recompute full + compile blocks + fused CE B{large_b}": replace(big_b, recompute="full",
                                                                        fused_cross_entropy=True, compile="blocks"),
        f"selective + fused CE B{large_b}": replace(big_b, recompute="selective", fused_cross_entropy=True),
        f"sqrt + fused CE B{large_b}": replace(big_b, recompute="sqrt", fused_cross_entropy=True),
        f"recompute full + fused CE B{small_b}": replace(base, recompute="full", fused_cross_entropy=True),
    }
    if not on_gpu:                                 # compiling costs a minute per graph on a CPU: GPU sweep only
        candidates = {k: v for k, v in candidates.items() if v.compile == "none"}
    warmup, repeats = (5, 15) if big else (1, 3)
    rows = []
    for label, tcfg in candidates.items():
        row = {"recipe": label, "model": name, "batch": tcfg.batch_size, "seq": seq, "precision": tcfg.precision,
               "recompute": tcfg.recompute, "fused_ce": tcfg.fused_cross_entropy, "compile": tcfg.compile}
        model = opt = None
        try:
            model, opt, _, device = build(cfg, tcfg)
            x, y = synthetic_batch(cfg.vocab_size, tcfg.batch_size, seq, torch.Generator().manual_seed(0), device)
            step = lambda: train_step(model, opt, x, y, tcfg)
            timing = measure.measure_time(step, device, warmup=warmup, repeats=repeats)
            if on_gpu:                             # activations + gradients + temporaries above the weights and Adam
                measure.synchronize(device)
                before = torch.cuda.memory_allocated(device)
                peak_mem = measure.measure_peak_memory(step, device)
                row.update(peak_memory_bytes=peak_mem, peak_above_states_bytes=peak_mem - before)
            counter = TinyGPT(cfg).to(device)      # eager copy: saved-tensor hooks see what autograd keeps
            counter.recompute, counter.fused_cross_entropy = from_spec(tcfg.recompute), tcfg.fused_cross_entropy
            with autocast(tcfg, device):
                row["saved_activation_bytes"] = measure.measure_activation_bytes(counter, x, y)
            del counter
            tps = tcfg.batch_size * seq / timing.median_s
            fpt = measure.model_flops_per_token(model, seq)
            row.update(step_ms=timing.median_s * 1e3, tokens_per_s=tps, mfu=measure.mfu(tps, fpt, peak),
                       peak_source=peak_src, repeats=repeats,
                       **{f"usd_per_billion_tokens ({price_gpu})": estimate.dollars_per_token(tps, price_gpu) * 1e9})
        except Exception as e:  # noqa: BLE001 - one candidate failing (OOM, compile) must not lose the others
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            del model, opt
            if on_gpu:
                torch.cuda.empty_cache()
        rows.append(row)
    ok = [r for r in rows if "mfu" in r]
    if ok:
        best = max(ok, key=lambda r: r["mfu"])
        for r in ok:
            r["best"] = r is best
    by = {r["recipe"]: r for r in ok}
    for b in (small_b, large_b):                  # each recompute + fused CE recipe against plain bf16, equal batch
        plain = by.get(f"plain bf16 B{b}")
        for label in (f"recompute full + fused CE B{b}", f"selective + fused CE B{b}", f"sqrt + fused CE B{b}"):
            pair = by.get(label)
            if plain is None or pair is None:
                continue
            less = 1 - pair["saved_activation_bytes"] / plain["saved_activation_bytes"]
            slower = pair["step_ms"] / plain["step_ms"] - 1
            row = {"recipe": f"pair: {label} vs plain bf16 B{b}", "batch": b,
                   "activation_bytes_less": less, "step_time_more": slower}
            if on_gpu:
                row["peak_above_states_less"] = 1 - pair["peak_above_states_bytes"] / plain["peak_above_states_bytes"]
            rows.append(row)
    runs = {r["recipe"]: {"tokens_per_s": r["tokens_per_s"], "dollars_per_billion_tokens":
                          r[f"usd_per_billion_tokens ({price_gpu})"],
                          "memory_bytes": r.get("peak_memory_bytes") or r["saved_activation_bytes"]} for r in ok}
    fig = plots.recipe_runs(runs, title=f"{name}, T={seq} on {dev.describe(ctx.device).name} "
                                        f"({'peak memory' if on_gpu else 'saved activations'}; price: {price_gpu})")
    return {"rows": rows, "figures": {"candidates": fig}}
