"""Lesson 05: the measured pipeline bubble of GPipe and 1F1B against (p-1)/(m+p-1), and a tensor-parallel block
stack's step time and all-reduce traffic."""
from __future__ import annotations

import statistics

from frugal import device as dev
from frugal import estimate, plots
from frugal import pipeline_parallel as pp
from frugal import tensor_parallel as tp
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, rank_counts, section
from frugal.dist import launch
from frugal.model import GPTConfig

TABLES = [
    Table("Pipeline, {ranks} stages ({backend})", [
        Column("schedule", "schedule"), Column("m", "micro-batches m"),
        Column("bubble_measured", "bubble, measured", "%"),
        Column("bubble_formula", "bubble, (p-1)/(m+p-1)", "%"), Column("step_ms", "step (ms)", "ms"),
        Column("stage0_in_flight", "stage 0: micro-batches in flight"),
        Column("stage0_activation_bytes", "stage 0: peak activations (GB)", "GB")],
        where=lambda r: r["part"] == "pipeline", split="ranks"),
    Table("Tensor parallel block stack ({backend})", [
        Column("ranks", "ranks"), Column("layers", "layers"), Column("step_ms", "step (ms)", "ms"),
        Column("tokens_per_s", "tokens/s", "tok/s"), Column("all_reduces_per_step", "all-reduces per step"),
        Column("comm_bytes_per_step", "all-reduced per step (GB)", "GB"),
        Column("all_reduce_ms", "one all-reduce (ms)", "ms"),
        Column("comm_share_est", "step share in all-reduce (est.)", "%"),
        Column("params_per_rank", "params per rank", "M")],
        where=lambda r: r["part"] == "tensor"),
]


def tensor_ranks(gpus: int) -> list[int]:
    """The rank counts the tensor-parallel stack runs at: 1, and each of rank_counts rounded down to a power
    of two, so that it divides the heads and the MLP width (CPU: [1, 2]; 4 GPUs: [1, 4]; 8 GPUs: [1, 4, 8])."""
    return sorted({1, *(1 << (p.bit_length() - 1) for p in rank_counts(gpus))})


@section("model_parallel", TABLES)
def bench_model_parallel(ctx: BenchContext) -> dict:
    """Pipeline: measured bubble of GPipe and 1F1B per micro-batch count m against (p-1)/(m+p-1), and the
    first stage's peak activations, at each p of rank_counts (the same layers per stage at every p).
    Tensor parallel: step time, tokens/s and all-reduce traffic of one block stack at each count of tensor_ranks.
    One GPU per rank over NCCL when there are 2+ GPUs, else 2 gloo ranks on CPU. Figures: bubble and gantt,
    with _<p>stages when there are several p."""
    on_gpu = ctx.device.type == "cuda" and dev.gpu_count() >= 2
    stages = rank_counts(dev.gpu_count() if on_gpu else 0)
    tp_worlds = tensor_ranks(dev.gpu_count() if on_gpu else 0)
    backend = "nccl" if on_gpu else "gloo"
    full = on_gpu and not ctx.quick
    if full:
        n_head, n_embd, per_stage, batch, seq, ms, repeats = 16, 1024, 4, 32, 512, [1, 2, 4, 8, 16], 5
    else:                                      # 4 heads on CPU; 8 where 8 tensor ranks split them
        n_head, n_embd, per_stage, batch, seq, ms, repeats = max(4, *tp_worlds), 64, 2, 8, 32, [1, 2, 4], 2
    threads = None if on_gpu else 1
    runs = [(s, m) for s in ("gpipe", "1f1b") for m in ms]
    rows, figures = [], {}
    for p in stages:
        cfg = GPTConfig(vocab_size=256, block_size=seq, n_layer=per_stage * p, n_head=n_head, n_embd=n_embd)
        res = pp.gather_runs(launch(pp.pipeline_rank, p, cfg, batch, seq, runs, 0, repeats + 1, False, threads,
                                    backend=backend, timeout=300))
        measured, gantt = {"gpipe": {}, "1f1b": {}}, {}
        for r in res:
            tls = r["timelines"][1:]                                      # the first repeat warms up
            bubbles = [pp.measure_bubble(tl) for tl in tls]
            steps = [max(e["end"] for st in tl for e in st) - min(e["start"] for st in tl for e in st) for tl in tls]
            measured[r["schedule"]][r["m"]] = statistics.median(bubbles)
            if r["m"] == min(4, max(ms)):
                gantt[f"{r['schedule']}, m={r['m']}"] = tls[len(tls) // 2]
            rows.append({"part": "pipeline", "backend": backend, "ranks": p, "schedule": r["schedule"], "m": r["m"],
                         "bubble_measured": statistics.median(bubbles),
                         "bubble_formula": estimate.pipeline_bubble_fraction(p, r["m"]),
                         "step_ms": statistics.median(steps) * 1e3, "stage0_in_flight": r["in_flight"][0],
                         "stage0_activation_bytes": r["activation_bytes"][0]})
        suffix = f"_{p}stages" if len(stages) > 1 else ""
        figures[f"bubble{suffix}"] = plots.bubble_vs_formula(measured, p)
        figures[f"gantt{suffix}"] = plots.pipeline_gantt(gantt)
    tp_cfg = GPTConfig(vocab_size=256, block_size=seq, n_layer=per_stage, n_head=n_head, n_embd=n_embd)
    tp_batch = 8 if full else 4
    for w in tp_worlds:
        out = launch(tp.tp_stack_step_rank, w, tp_cfg, tp_batch, seq, 3, 10 if on_gpu else 3, threads,
                     backend=backend, timeout=300)[0]
        rows.append({"part": "tensor", "backend": backend, "ranks": w, "layers": tp_cfg.n_layer,
                     "step_ms": out["step_s"] * 1e3, "tokens_per_s": tp_batch * seq / out["step_s"],
                     "all_reduces_per_step": out["all_reduces"], "comm_bytes_per_step": out["comm_bytes"],
                     "all_reduce_ms": out["all_reduce_s"] * 1e3,
                     "comm_share_est": out["all_reduces"] * out["all_reduce_s"] / out["step_s"] if w > 1 else 0.0,
                     "params_per_rank": out["params_per_rank"]})
    return {"rows": rows, "figures": figures}
