"""Lesson 04: torch DDP, our ZeRO stages 1-3 and torch FSDP side by side: tokens/s, per-rank memory beside the
prediction, bytes sent; then a model over twice what DP holds, trained with stage 3 under a per-GPU memory cap."""
from __future__ import annotations

import torch

from frugal import device as dev
from frugal import estimate, plots
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, meta_model, rank_counts, section
from frugal.dist import RankError, launch
from frugal.model import preset
from frugal.zero_experiment import ZeroRun, peak_by_kind, predict_peak_bytes, run_many, run_rank

_CAPPED = lambda r: r["plan"].startswith("cap ")
TABLES = [
    Table("Speed, {model} {dtype}, {world_size} ranks", [
        Column("plan", "plan"), Column("tokens_per_s", "tokens/s", "tok/s"), Column("step_ms", "step (ms)", "ms"),
        Column("vs_ddp", "vs torch DDP", "x"), Column("vs_bucket_dp", "vs our bucketed DP", "x"),
        Column("comm_bytes_per_step", "sent per rank per step (GB)", "GB"), Column("final_loss", "final loss")],
        where=lambda r: not _CAPPED(r) and "error" not in r, split="world_size"),
    Table("Memory per rank, {model} {dtype}, {world_size} ranks", [
        Column("plan", "plan"), Column("n_params", "params", "M"),
        Column("state_bytes_zero_paper", "state, ZeRO paper (GB)", "GB"),
        Column("state_bytes_counted", "state, counted (GB)", "GB"),
        Column("peak_bytes_predicted", "peak, predicted (GB)", "GB"),
        Column("peak_bytes_measured", "peak, measured (GB)", "GB"),
        Column("peak_over_predicted", "measured / predicted", "x")],
        where=lambda r: not _CAPPED(r) and "error" not in r, split="world_size",
        note="State: weights, gradients and Adam's moments. Peak: the most CUDA memory allocated during a step."),
    Table("Under a per-GPU memory cap", [
        Column("plan", "plan"), Column("world_size", "ranks"), Column("n_params", "params", "M"),
        Column("params_over_control", "params vs control", "x"), Column("memory_cap_bytes", "cap (GB)", "GB"),
        Column("peak_bytes_predicted", "peak, predicted (GB)", "GB"),
        Column("peak_bytes_measured", "peak, measured (GB)", "GB"),
        Column("peak_reserved_bytes", "peak reserved (GB)", "GB"), Column("fits", "trains")],
        where=_CAPPED),
    Table("Plans that failed", [Column("plan", "plan"), Column("world_size", "ranks"), Column("error", "error")],
          where=lambda r: "error" in r),
]


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    """DDP's training state per rank against ZeRO-3's at the largest world size measured; the memory cap's verdict."""
    measured = [r for r in rows if "state_bytes_counted" in r]
    n = max((r.get("world_size", 0) for r in measured), default=0)
    by = {r["plan"]: r for r in measured if r.get("world_size", 0) == n}
    out = []
    if "DDP" in by and "stage 3" in by:
        d, s = by["DDP"], by["stage 3"]
        worst = max(abs(r["peak_over_predicted"] - 1) for r in by.values() if r.get("peak_over_predicted"))
        out.append((f"training state per rank, torch DDP vs ZeRO-3, {d['model']} on {d['world_size']} ranks",
                    f"{d['state_bytes_counted'] / 1e9:.2f} vs {s['state_bytes_counted'] / 1e9:.2f} GB; every measured "
                    f"peak within {100 * worst:.1f}% of the prediction"))
    capped = [r for r in rows if _CAPPED(r)]
    big = [r for r in capped if r.get("params_over_control", 1) > 1]
    if big:
        fits = ", ".join(f"{r['plan'].split(': ')[1]} {'trains' if r['fits'] else 'runs out of memory'}" for r in big)
        out.append((f"{big[0]['params_over_control']:.1f}× the parameters under a "
                    f"{big[0]['memory_cap_bytes'] / 1e9:.1f} GB cap per GPU", fits))
    return out


@section("zero", TABLES, headlines)
def bench_zero(ctx: BenchContext) -> dict:
    """Every plan at each world size of rank_counts (NCCL, one GPU per rank; 2 gloo CPU ranks otherwise), with
    per-rank peak memory beside zero_experiment.predict_peak_bytes (what lives at the peak, by name); the memory
    cap on 2+ GPUs only, at the smallest of those world sizes. Rows carry world_size; figures and peak_breakdown
    are per world size ({world_size: {plan: parts}}), figures named memory/comm, with _<n>ranks when there are
    several."""
    gpus = dev.gpu_count() if ctx.device.type == "cuda" else 0
    multi = gpus >= 2
    worlds = rank_counts(gpus)
    big = multi and not ctx.quick
    dtype = "bf16" if big else "fp32"
    rows, figures, breakdown, n_params = [], {}, {}, 0
    for world in worlds:
        out = _zero_plans(ctx, world, multi, big)
        rows += out["rows"]
        n_params = out["n_params"]
        breakdown[str(world)] = out["peak_breakdown"]
        suffix = f"_{world}ranks" if len(worlds) > 1 else ""
        figures.update({f"{name}{suffix}": fig for name, fig in out["figures"].items()})
    if big:
        rows += _zero_memory_cap(worlds[0], dtype, n_params)
    return {"rows": rows, "figures": figures, "peak_breakdown": breakdown}


def _zero_plans(ctx: BenchContext, world: int, multi: bool, big: bool) -> dict:
    """Every plan on `world` ranks (NCCL if multi, else gloo) in one launch: rows, memory and comm figures,
    the predicted peak's parts per plan, and the model's parameter count."""
    model, dtype, batch, seq = ("gpt2-small", "bf16", 8, 1024) if big else ("tiny", "fp32", 4, 32)
    steps, warmup = (15, 5) if big else (3, 1)
    backend = "nccl" if multi else "gloo"
    modes = ("ddp", "bucket", "zero1", "zero2", "zero3", "fsdp")
    base = dict(model=model, precision=dtype, batch_size=batch * world, seq_len=seq, steps=steps, warmup=warmup,
                world_size=world, data="synthetic", progress=False)
    results = launch(run_many, world, {m: ZeroRun(data_parallel=m, **base) for m in modes}, backend=backend,
                     timeout=600)
    cfg = preset(model)
    n_params = meta_model(cfg).num_params()
    precision = "mixed" if dtype != "fp32" else "fp32"
    act_bytes = 2 if dtype != "fp32" else 4
    label = lambda m: {"ddp": "DDP", "bucket": "DP (ours)", "fsdp": "FSDP"}.get(m) or f"stage {m[-1]}"
    stage_of = lambda m: {"ddp": 0, "bucket": 0, "fsdp": 3}.get(m) if m in ("ddp", "bucket", "fsdp") else int(m[-1])
    rows, predicted, observed, comm_pred, comm_counted, breakdown = [], {}, {}, {}, {}, {}
    for m in modes:
        per_rank = [r[m] for r in results]
        if "error" in per_rank[0]:
            rows.append({"plan": label(m), "world_size": world, "error": per_rank[0]["error"][:200]})
            continue
        state = estimate.estimate_state_memory(n_params, precision, "adam", stage_of(m), world)
        parts = predict_peak_bytes(m, cfg, batch, seq, world, dtype)
        pred = sum(parts.values())
        peak = max(r["peak_memory_bytes"] or 0 for r in per_rank) or None
        counted = per_rank[0]["state_bytes"]
        row = {"plan": label(m), "world_size": world, "model": model, "n_params": n_params, "dtype": dtype,
               "tokens_per_s": min(r["tokens_per_s"] for r in per_rank),      # the slowest rank sets the pace
               "step_ms": max(r["step_s"] for r in per_rank) * 1e3,
               "state_bytes_zero_paper": state.total, "state_bytes_counted": sum(counted.values()),
               "peak_bytes_predicted": pred, "peak_bytes_measured": peak,
               "peak_over_predicted": peak / pred if peak else None,
               "comm_bytes_per_step": per_rank[0]["comm_bytes_per_step"] if m != "fsdp" else None,
               "final_loss": per_rank[0]["losses"][-1]}
        rows.append(row)
        breakdown[label(m)] = parts
        predicted[label(m)] = peak_by_kind(parts)
        # measured: counted state by kind; on a GPU the rest of the peak (activations and temporaries) on top
        rest = (peak - sum(counted.values())) if peak else sum(v for k, v in predicted[label(m)].items()
                                                                  if k == "activations")
        observed[label(m)] = {**counted, "activations": rest}
        if m != "fsdp":
            comm_pred[label(m)] = estimate.estimate_zero_comm_bytes(n_params, stage_of(m), world, act_bytes)
            comm_counted[label(m)] = row["comm_bytes_per_step"]
    ddp = next((r for r in rows if r["plan"] == "DDP" and "tokens_per_s" in r), None)
    ours = next((r for r in rows if r["plan"] == label("bucket") and "tokens_per_s" in r), None)
    for r in rows:       # stage 2 is held against our bucketed DP, stage 3 against FSDP, every plan against DDP
        if ddp and "tokens_per_s" in r:
            r["vs_ddp"] = r["tokens_per_s"] / ddp["tokens_per_s"]
        if ours and "tokens_per_s" in r:
            r["vs_bucket_dp"] = r["tokens_per_s"] / ours["tokens_per_s"]
    figures = {
        "memory": plots.sharding_memory_bars(
            predicted, observed, unit=2 ** 30 if big else 2 ** 20, unit_name="GiB" if big else "MiB",
            title=f"Per rank, {model} {dtype}, {world} ranks ({ctx.slug}): predicted vs "
                  f"{'peak CUDA' if multi else 'counted'}"),
        "comm": plots.comm_volume_bars(comm_pred, comm_counted,
                                       title=f"Bytes each rank sends per step, {world} ranks"),
    }
    return {"rows": rows, "figures": figures, "peak_breakdown": breakdown, "n_params": n_params}


def _zero_memory_cap(world: int, dtype: str, small_params: int) -> list[dict]:
    """Cap each GPU's memory halfway between the predicted peaks (zero_experiment.predict_peak_bytes) of gpt2-medium
    under stage 3 and under DP, then train it both ways on `world` ranks; gpt2-small under DP is the control that the
    cap leaves room for."""
    batch, seq = 2, 1024
    cfg = preset("gpt2-medium")
    n_big = meta_model(cfg).num_params()
    need = lambda name, mode: sum(predict_peak_bytes(mode, preset(name), batch, seq, world, dtype).values())
    cap = (need("gpt2-medium", "ddp") + need("gpt2-medium", "zero3")) / 2
    fraction = cap / torch.cuda.get_device_properties(0).total_memory
    rows = []
    for name, mode, n in (("gpt2-small", "ddp", small_params), ("gpt2-medium", "ddp", n_big),
                          ("gpt2-medium", "zero3", n_big)):
        run = ZeroRun(data_parallel=mode, model=name, precision=dtype, batch_size=batch * world, seq_len=seq,
                      steps=3, memory_fraction=fraction, world_size=world, data="synthetic", progress=False)
        try:
            out = launch(run_rank, world, run, backend="nccl", timeout=120)
            fits = True
            peak = max(r["peak_memory_bytes"] for r in out)
            reserved = max(r["peak_reserved_bytes"] for r in out)
        except RankError as e:
            fits, peak, reserved = False, None, None
            if "out of memory" not in str(e).lower() and "OutOfMemoryError" not in str(e):
                raise
        rows.append({"plan": f"cap {cap / 2**30:.2f} GiB: {name} {mode}", "world_size": world, "n_params": n,
                     "params_over_control": n / small_params, "memory_cap_bytes": cap, "fits": fits,
                     "peak_bytes_predicted": need(name, mode), "peak_bytes_measured": peak,
                     "peak_reserved_bytes": reserved})
    return rows
