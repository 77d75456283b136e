"""Lessons 00 and 07 on real text: the parity table (does each technique learn as well as fp32?) and the
dollars to a target validation loss, naive fp32 against the recipe, on the Python standard library's source."""
from __future__ import annotations

import torch

from frugal import device as dev
from frugal import estimate, parity
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, section
from frugal.model import preset
from frugal.plots.economics_quality import dollars_to_target, parity_gaps, val_loss_overlay
from frugal.to_target import compare_to_target, dollars_to, plan_race, savings
from frugal.train import TrainConfig


PARITY_TABLES = [Table("Parity on the standard library's source, {model}, {steps} steps: final validation loss", [
    Column("technique", "technique"), Column("kind", "kind"), Column("final_val_loss", "val loss (nats/token)"),
    Column("rel_diff", "from fp32", "+%"), Column("tolerance", "tolerance", "%"), Column("within", "within"),
    Column("seeds", "seeds", "int")],
    note="Each row is the mean over seeds of its gap to that seed's fp32 run (same batches and global batch). "
         "Exact: the same math in another order; mixed: tf32/bf16/fp16 autocast. 'fp32, again' reruns fp32: its "
         "spread is the noise floor, and exact rows must sit within 3 of its standard deviations (of a mean over "
         "the seeds), or 0.1% if larger. Data-parallel rows need 2 GPUs (gloo ranks on CPU).")]


def parity_headlines(rows: list[dict]) -> list[tuple[str, str]]:
    exact = [r for r in rows if r["kind"] == "exact" and r["technique"] != "fp32"]
    noise = [r for r in rows if r["kind"] == "noise"]
    mixed = [r for r in rows if r["technique"] in ("bf16", "fp16 + LossScaler")]
    out = []
    if exact:
        worst = max(exact, key=lambda r: abs(r["rel_diff"]))
        out.append(("largest gap of an exact technique to fp32's validation loss",
                    f"{100 * worst['rel_diff']:+.3f}% ({worst['technique']}), "
                    f"{'within' if worst['within'] else 'outside'} ±{100 * worst['tolerance']:.2f}%"))
    out += [(f"{r['technique']} validation loss against fp32's", f"{100 * r['rel_diff']:+.2f}%") for r in mixed]
    out += [("fp32 rerun on the same seeds (the noise floor)",
             f"{100 * r['rel_diff']:+.3f}%; exact rows allowed ±{100 * r['tolerance']:.2f}%") for r in noise]
    return out


PARITY_GPU_STEPS = 700     # 2 seeds x 8 runs of the medium model: ~3 minutes on an H200

@section("parity", PARITY_TABLES, parity_headlines)
def bench_parity(ctx: BenchContext) -> dict:
    """Every technique of the parity table trained on 'stdlib', and fp32 once more, on each seed (two on a GPU);
    the mean gap of the final validation loss to fp32's."""
    on_gpu = ctx.device.type == "cuda" and not ctx.quick
    if on_gpu:                                              # 8 runs a seed: a small model, long enough to flatten
        model, label = preset("medium"), "medium (6 x 256), byte tokens"
        shared = dict(batch_size=32, seq_len=256, lr=1e-3, warmup_steps=100, lr_decay="cosine", eval_every=100,
                      eval_batches=8)
    else:
        model, label = preset("tiny"), "tiny"
        shared = dict(batch_size=8, seq_len=64, lr=3e-3, eval_every=10, eval_batches=4)
    steps = PARITY_GPU_STEPS if on_gpu else 20
    base = TrainConfig(steps=steps, data="stdlib", device=str(ctx.device), progress=False, **shared)
    names = [n for n in parity.techniques() if "ranks" not in n]
    two_ranks = torch.cuda.device_count() >= 2 if ctx.device.type == "cuda" else not ctx.quick
    if two_ranks:
        names = list(parity.techniques())
    if ctx.quick:
        names = ["fp32", "bf16", "recompute full"]
    seeds = (0, 1) if on_gpu else (0,)
    table, results = parity.parity_over_seeds(model, base, names, seeds=seeds)
    rows = [{**r, "model": label, "steps": steps} for r in table]
    return {"rows": rows, "figures": {
        "gaps": parity_gaps(rows, title=f"Final validation loss against fp32's\n{label}, {steps} steps, "
                                        f"{len(seeds)} seeds"),
        "val_loss": val_loss_overlay(parity.curves(results), title=f"Validation loss, {label}, seed {seeds[0]}")}}


TARGET_TABLES = [Table("Dollars to validation loss {target} on the standard library's source, {model}", [
    Column("plan", "plan"), Column("reached", "reached"), Column("steps", "steps", "int"),
    Column("seconds", "training time (s)"), Column("dollars", "US$"), Column("final_val_loss", "final val loss"),
    Column("price_per_hour", "US$ per hour"), Column("saving", "naive's US$ over this plan's", "x"),
    Column("dollars_to_common_loss", "US$ to the lowest loss both reached")],
    note="Training time is the steps' wall time alone (evaluations apart), priced at the catalog's on-demand "
         "hourly rate of the GPU measured. Same data, batch, sequence length and learning-rate schedule for both "
         "plans. The recipe is what frugal.to_target.plan_race picks for the GPU's memory: bf16 and the fused head, "
         "recompute only if needed.")]


def target_headlines(rows: list[dict]) -> list[tuple[str, str]]:
    recipe = next((r for r in rows if r["plan"] == "full recipe"), None)
    if not recipe or recipe.get("saving") is None:
        return []
    return [(f"US$ to validation loss {recipe['target']:g}, full recipe against naive fp32 ({recipe['model']})",
             f"{recipe['saving']:.2f}× cheaper (${recipe['dollars']:.3g})")]


@section("dollars_to_target", TARGET_TABLES, target_headlines)
def bench_dollars_to_target(ctx: BenchContext) -> dict:
    """Naive fp32 and the recipe that frugal.to_target.plan_race picks for this GPU's memory, trained on 'stdlib'
    until a fixed validation loss; time and US$ to reach it at the GPU's catalog price, and both loss curves."""
    on_gpu = ctx.device.type == "cuda" and not ctx.quick
    gpu = dev.catalog_name() if ctx.device.type == "cuda" else None
    price = estimate.get_gpu(gpu).price_per_hour if gpu else estimate.get_gpu("H100").price_per_hour
    if on_gpu:                      # up to GPT-2 small's shape; warm-up and a cosine, so neither plan stalls
        budget, max_params, target, cap = torch.cuda.get_device_properties(ctx.device).total_memory, 90e6, 2.3, 800
        shared = dict(batch_size=8, seq_len=1024, lr=1e-3, warmup_steps=100, lr_decay="cosine", eval_every=50,
                      eval_batches=4)
    else:
        budget, max_params, target, cap = 8e9, 150_000, 3.5, 60
        shared = dict(batch_size=8, seq_len=64, lr=3e-3, eval_every=10, eval_batches=4)
    race = plan_race(budget, max_params, on_gpu, data="stdlib", steps=cap, device=str(ctx.device), progress=False,
                     **shared)
    label = f"{race.model.n_layer} x {race.model.n_embd}, byte tokens"
    runs = compare_to_target(race.model, race.plans, price, target)
    saved = savings(runs)
    common = max(min(p["val_loss"] for p in r.curve) for r in runs.values())   # a loss every plan reached
    rows = [{**r.summary(), "model": label, "gpu": gpu or "this CPU (priced as an H100)", "saving": saved[n],
             "common_loss": common, "dollars_to_common_loss": dollars_to(r, common),
             "recipe": race.reasons[1] if n == "full recipe" else "fp32, recompute=none"}   # [1]: the recipe's line
            for n, r in runs.items()]
    fig = dollars_to_target({n: [(p["dollars"], p["val_loss"]) for p in r.curve] for n, r in runs.items()}, target,
                            title=f"US$ to validation loss {target:g}, {label}")
    return {"rows": rows, "curves": {n: r.curve for n, r in runs.items()}, "figures": {"dollars": fig}}
