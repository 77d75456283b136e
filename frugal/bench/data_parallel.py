"""Lesson 03: tokens/s against ranks for torch DDP, DataParallelNaive and DataParallelBucket, and the all-reduce
bus bandwidth of our ring, our naive one and torch.distributed's."""
from __future__ import annotations

import torch
import torch.distributed as dist

from frugal import collectives, measure, plots, train
from frugal import device as dev
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, section
from frugal.data import synthetic_batch
from frugal.data_parallel import wrap
from frugal.dist import max_and_mean, share_cpu_threads
from frugal.dist import launch
from frugal.model import preset

TABLES = [
    Table("Training, {model}, {batch_per_rank} x {seq} tokens per rank", [
        Column("flavour", "flavour"), Column("world_size", "ranks"), Column("bf16", "bf16"),
        Column("step_ms", "step (ms)", "ms"), Column("tokens_per_s", "tokens/s", "tok/s"),
        Column("scaling_efficiency", "scaling efficiency", "%"), Column("vs_ddp", "vs torch DDP", "x")],
        where=lambda r: "flavour" in r,
        note="Scaling efficiency: tokens/s over (ranks × the same flavour on one rank)."),
    Table("All-reduce on {world_size} ranks", [
        Column("algorithm", "algorithm"), Column("bytes", "size (MB)", "MB"), Column("time_ms", "time (ms)", "ms"),
        Column("algbw_GBps", "algorithm bandwidth (GB/s)", "GB/s"), Column("busbw_GBps", "bus bandwidth (GB/s)", "GB/s"),
        Column("vs_dist_all_reduce", "vs dist.all_reduce", "x")],
        where=lambda r: "algorithm" in r,
        note="Bus bandwidth = size / time × 2(n−1)/n, the figure NCCL's tests report."),
]


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    n = max((r["world_size"] for r in rows if "flavour" in r), default=1)
    by = {r["flavour"]: r for r in rows if r.get("world_size") == n and "flavour" in r}
    if n < 2 or "bucket" not in by or "ddp" not in by:
        return []
    b, d = by["bucket"], by["ddp"]
    return [(f"DataParallelBucket vs torch DDP on {n} ranks, {b['model']} {b['batch_per_rank']}x{b['seq']} per rank",
             f"{b['tokens_per_s'] / 1e3:,.0f}k vs {d['tokens_per_s'] / 1e3:,.0f}k tokens/s, "
             f"{100 * b['scaling_efficiency']:.0f}% scaling efficiency")]


def benchmark_rank(rank: int, world_size: int, preset_name: str, flavours: list[str], batch_per_rank: int,
                   seq_len: int, steps: int, warmup: int, bucket_cap_mb: float = 25.0, bf16: bool = False) -> list[dict]:
    """Median global tokens/s of each flavour ('none' = no wrapper) on synthetic tokens, bf16 autocast on a GPU;
    a step lasts as long as its slowest rank. Each flavour gets a fresh model from the same seed."""
    share_cpu_threads(world_size)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    cfg = preset(preset_name)
    tcfg = train.TrainConfig(batch_size=batch_per_rank, seq_len=seq_len, precision="bf16" if bf16 else "fp32",
                             lr=1e-4, grad_clip=None, progress=False, device=str(device))
    x, y = synthetic_batch(cfg.vocab_size, batch_per_rank, seq_len, torch.Generator().manual_seed(rank), device)
    rows = []
    for flavour in flavours:
        model, opt, _, _ = train.build(cfg, tcfg)
        dp = model if flavour == "none" else wrap(model, flavour, bucket_cap_mb)
        timing = measure.measure_time(lambda: train.train_step(dp, opt, x, y, tcfg), device, warmup=warmup,
                                      repeats=steps)
        slowest, _ = max_and_mean(timing.times_s, device)
        med = float(torch.tensor(slowest).median())
        rows.append({"flavour": flavour, "world_size": world_size, "model": preset_name,
                     "batch_per_rank": batch_per_rank, "seq": seq_len, "bf16": bf16, "step_ms": med * 1e3,
                     "tokens_per_s": world_size * batch_per_rank * seq_len / med})
        del dp, model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def data_parallel_worlds(gpus: int) -> list[int]:
    """The world sizes bench_data_parallel trains at with `gpus` GPUs: 1, the powers of two below the GPU count,
    and every GPU (8 GPUs: [1, 2, 4, 8]; 6 GPUs: [1, 2, 4, 6]); with none, [1, 2] gloo ranks on CPU."""
    n_max = gpus if gpus >= 1 else 2
    return sorted({1, *[2 ** k for k in range(1, n_max.bit_length()) if 2 ** k <= n_max], n_max})


@section("data_parallel", TABLES, headlines)
def bench_data_parallel(ctx: BenchContext) -> dict:
    """One GPU per rank over NCCL (2 gloo ranks on CPU): each flavour's tokens/s at 1, 2, 4... ranks, then the
    bus bandwidth of each all-reduce."""
    on_gpu = ctx.device.type == "cuda"
    worlds = data_parallel_worlds(dev.gpu_count() if on_gpu else 0)
    n_max = worlds[-1]
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        name, batch, seq, steps, warmup, bf16 = "gpt2-small", 8, 1024, (5 if ctx.quick else 20), 5, True
        nbytes, repeats = (2 ** 24 if ctx.quick else 256 * 2 ** 20), (5 if ctx.quick else 20)
    else:
        name, batch, seq, steps, warmup, bf16 = "tiny", 4, 64, (3 if ctx.quick else 20), (1 if ctx.quick else 2), False
        nbytes, repeats = (2 ** 20 if ctx.quick else 2 ** 24), (3 if ctx.quick else 10)
    flavours = ["none", "ddp", "naive", "bucket"]
    rows = []
    for n in worlds:
        flv = flavours if n == 1 else flavours[1:]
        rows += launch(benchmark_rank, n, name, flv, batch, seq, steps, warmup, 25.0, bf16,
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
                                     ideal_from="ddp")}
    if bw_rows:
        figs["busbw"] = plots.bus_bandwidth(bw_rows, title=f"All-reduce of {nbytes / 2 ** 20:g} MiB on {n_max} "
                                                           f"ranks, {hw}")
    return {"rows": rows + bw_rows, "figures": figs}
