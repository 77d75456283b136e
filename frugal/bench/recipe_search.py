"""Lesson 07: the largest TinyGPT a T4's 16 GB trains, naive fp32 Adam against the full recipe."""
from __future__ import annotations

from dataclasses import asdict

import torch

from frugal import plots, recipe
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, section
from frugal.estimate import GB, get_gpu

TABLES = [
    Table("Largest model under {budget_GB:.3g} GB, batch {batch} x {seq} tokens", [
        Column("plan", "plan"), Column("largest_estimated_params", "largest, estimated", "M"),
        Column("estimated_shape", "shape"), Column("estimated_GB", "estimated (GB)"),
        Column("largest_verified_params", "largest, verified", "M"), Column("measured_GB", "measured (GB)"),
        Column("verified_by", "verified by"), Column("x_naive_estimated", "vs naive, estimated", "x"),
        Column("x_naive_verified", "vs naive, verified", "x")]),
]


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    by = {r["plan"]: r for r in rows}
    naive, full = by.get("naive fp32 Adam"), by.get("full recipe")
    if not naive or not full:
        return []
    key = "largest_verified_params" if naive.get("largest_verified_params") and full.get("largest_verified_params") \
        else "largest_estimated_params"
    how = full["verified_by"] if key == "largest_verified_params" else "estimated"
    return [(f"largest model trainable in {full['budget_GB']:.3g} GB, naive fp32 Adam vs the recipe",
             f"{naive[key] / 1e6:,.0f}M vs {full[key] / 1e6:,.0f}M parameters ({how})")]


@section("recipe_search", TABLES, headlines)
def bench_recipe_search(ctx: BenchContext) -> dict:
    """The largest TinyGPT a T4's 16 GB trains, naive fp32 Adam against the full recipe: the estimator's answer
    everywhere, checked by real capped training steps on a GPU (counted bytes on CPU, at toy sizes)."""
    on_gpu = ctx.device.type == "cuda"
    if on_gpu:
        budget, batch, seq, family = get_gpu("T4").memory_gb * GB, 8, 1024, recipe.size_family()
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        budget = min(budget, 0.95 * total)                 # a smaller GPU checks its own memory instead
    else:                                                  # toy sizes: a budget of a few MB, counted
        family = recipe.size_family(256, 64)[:4 if ctx.quick else 6]
        budget, batch, seq = 40e6 if ctx.quick else 200e6, 4, 64
    rows, curves = [], {}
    for name, plan in recipe.named_plans(world_size=8).items():
        verify = recipe.verifier(plan, batch, seq, budget, ctx.device) if plan.world_size == 1 else None
        result = recipe.largest_that_fits(budget, plan, batch, seq, family=family, verify=verify)
        curves[name] = [asdict(r) for r in result.rows]
        est, ver = result.largest_estimated, result.largest_verified
        rows.append({
            "plan": name, "budget_GB": budget / 1e9, "batch": batch, "seq": seq,
            "largest_estimated_params": est.params if est else 0,
            "estimated_shape": f"L={est.n_layer} d={est.n_embd}" if est else "-",
            "estimated_GB": est.estimated_bytes / 1e9 if est else None,
            "largest_verified_params": ver.params if ver else (None if verify is None else 0),
            "measured_GB": ver.measured_bytes / 1e9 if ver and ver.measured_bytes else None,
            "verified_by": ("capped GPU steps" if on_gpu else "counted bytes") if verify else "estimate only",
        })
    base = rows[0]["largest_estimated_params"] or 1
    for r in rows:
        r["x_naive_estimated"] = r["largest_estimated_params"] / base
        if r["largest_verified_params"] and rows[0]["largest_verified_params"]:
            r["x_naive_verified"] = r["largest_verified_params"] / rows[0]["largest_verified_params"]
    fig = plots.model_size_frontiers(curves, budget, title=f"Largest TinyGPT under {budget / 1e9:.3g} GB, "
                                                           f"batch {batch}x{seq}")
    return {"rows": rows, "figures": {"frontiers": fig}}
