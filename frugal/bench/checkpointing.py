"""Lesson 02: peak memory, saved-activation bytes and step time with no, full (ours and torch's), selective and
√n recompute, and the curve over 0..L checkpointed blocks."""
from __future__ import annotations

import functools

import torch
import torch.utils.checkpoint as tcp

from frugal import device as dev
from frugal import estimate, measure, plots, train
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, section
from frugal.data import synthetic_batch
from frugal.model import preset
from frugal.recompute import SELECTIVE_KEEP, Recompute

_MEMORY = [Column("saved_bytes", "saved for backward (GB)", "GB"),
           Column("peak_memory_bytes", "peak CUDA memory (GB)", "GB"), Column("step_s", "step (ms)", "s->ms"),
           Column("step_vs_none", "step vs none", "ratio+%")]
TABLES = [
    Table("Policies, {model}, batch {batch} x {seq} tokens, {dtype}", [
        Column("policy", "policy"), Column("impl", "implementation"), *_MEMORY[:1],
        Column("saved_bytes_estimated", "estimate.py (GB)", "GB"), *_MEMORY[1:],
        Column("step_vs_none_synced_each_step", "synced each step, vs none", "ratio+%"),
        Column("block_saving_kept", "share of full's saving", "%")],
        where=lambda r: "label" not in r and not r["policy"].startswith("first")),
    Table("What selective recompute keeps", [
        Column(lambda r: r.get("label", "default"), "variant"), Column("keep", "kept outputs"),
        Column("fused_norms", "fused LayerNorm rebuild"), *_MEMORY,
        Column("block_saving_kept", "share of full's saving", "%")],
        where=lambda r: r["policy"] == "selective"),
    Table("The first k blocks checkpointed", [Column("policy", "policy"), Column("impl", "implementation"), *_MEMORY,
                                              Column("saved_vs_none", "saved vs none", "%")],
          where=lambda r: r["policy"].startswith("first")),
]


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    by = {(r["policy"], r["impl"]): r for r in rows if "label" not in r}
    none, full, sel = by.get(("none", "-")), by.get(("full", "frugal")), by.get(("selective", "frugal"))
    if not none or not full:
        return []
    mem = "peak_memory_bytes" if none.get("peak_memory_bytes") else "saved_bytes"
    out = [(f"recompute every block (full), {none['model']} B={none['batch']} {none['dtype']}: "
            f"{'peak memory' if mem == 'peak_memory_bytes' else 'saved activations'}, step time",
            f"{none[mem] / 1e9:.1f} → {full[mem] / 1e9:.1f} GB, {100 * (full['step_vs_none'] - 1):+.0f}% step time")]
    if sel:
        out.append(("selective recompute (keeps " + sel.get("keep", "?").replace("+", ", ") + ")",
                    f"{100 * sel['block_saving_kept']:.0f}% of full's saving for "
                    f"{100 * (sel['step_vs_none'] - 1):+.1f}% step time"))
    return out


@section("checkpointing", TABLES, headlines)
def bench_checkpointing(ctx: BenchContext) -> dict:
    """GPT-2 small, bf16 autocast, B=32, T=1024 on a GPU (tiny on CPU): each recompute policy's saved bytes, peak
    memory and optimizer-step time (train.train_step), ours beside torch.utils.checkpoint."""
    on_gpu = ctx.device.type == "cuda"
    name = "gpt2-small" if on_gpu and not ctx.quick else "tiny"
    cfg = preset(name)
    batch, seq = (32, 1024) if name == "gpt2-small" else (8, cfg.block_size)
    bf16 = on_gpu and dev.bf16_is_native(ctx.device)
    tcfg = train.TrainConfig(batch_size=batch, seq_len=seq, precision="bf16" if bf16 else "fp32", lr=1e-4,
                             grad_clip=None, progress=False, device=str(ctx.device))
    model, opt, _, device = train.build(cfg, tcfg)
    x, y = synthetic_batch(cfg.vocab_size, batch, seq, torch.Generator().manual_seed(0), device)
    theirs = functools.partial(tcp.checkpoint, use_reentrant=False)
    theirs_seq = lambda f, inp: tcp.checkpoint(f, inp, use_reentrant=False)
    step = lambda: train.train_step(model, opt, x, y, tcfg)
    repeats = 2 if ctx.quick else 5

    def point(label, impl, recompute, synced=False):
        model.recompute = recompute
        with train.autocast(tcfg, device):
            saved = measure.measure_activation_bytes(model, x, y)
        # steady state, as lesson 01's precision section: steps back to back, here 10 per reading (a step takes
        # ~0.1 s), so the GPU's idle start after each reading's sync weighs a tenth; recompute adds host work
        # that shows most in that first step (step_s_synced_each_step below)
        timing = measure.measure_time(step, device, warmup=1 if ctx.quick else 3, repeats=repeats,
                                      inner=1 if ctx.quick else 10)
        peak = measure.measure_peak_memory(step, device)
        row = {"policy": label, "impl": impl, "model": name, "batch": batch, "seq": seq,
               "dtype": "bf16 autocast" if bf16 else "fp32", "saved_bytes": saved,
               "peak_memory_bytes": peak, "step_s": timing.median_s}
        if synced:      # the other clock: the GPU idle at every step's start, waiting for the host's first kernels
            row["step_s_synced_each_step"] = measure.measure_time(step, device, warmup=1, repeats=repeats).median_s
        model.recompute = None
        return row

    L = cfg.n_layer
    rows = [point("none", "-", None, synced=True),
            point("full", "frugal", Recompute("full"), synced=True),
            point("full", "torch", Recompute("full", checkpoint_fn=theirs), synced=True),
            dict(point("selective", "frugal", Recompute("selective"), synced=True), keep="+".join(SELECTIVE_KEEP)),
            point("sqrt", "frugal", Recompute("sqrt")),
            point("sqrt", "torch", Recompute("sqrt", checkpoint_fn=theirs_seq))]
    # what to keep is a choice: keep the attention's output projection too (less saving, less recompute), or
    # drop the attention core's output as well (more saving, attention recomputed)
    variants = [dict(point("selective", "frugal", Recompute("selective", keep=keep)), keep="+".join(keep), label=lbl)
                for lbl, keep in (("+proj", ("attn.c_attn", "attn.core", "attn.c_proj", "mlp.c_fc")),
                                  ("-core", ("attn.c_attn", "mlp.c_fc")))]
    # on a GPU the LayerNorms are rebuilt by one fused kernel from kept statistics; eager recompute beside it
    fused = Recompute("selective").fused_norms(model.blocks[0], x) is not None
    if fused:
        variants.append(dict(point("selective", "frugal", Recompute("selective", fused=False)),
                             keep="+".join(SELECTIVE_KEEP), label="eager LN", fused_norms=False))
    for r in rows[3:4] + variants:
        r.setdefault("fused_norms", fused)
    curve = {"frugal": [], "torch.utils.checkpoint": []}
    for k in range(1, L):
        curve["frugal"].append(point(f"first:{k}", "frugal", Recompute("first", k)))
        curve["torch.utils.checkpoint"].append(point(f"first:{k}", "torch", Recompute("first", k, checkpoint_fn=theirs)))
    base = rows[0]
    blocks_saved = base["saved_bytes"] - rows[1]["saved_bytes"]
    for r in rows + variants + [p for pts in curve.values() for p in pts]:
        r["step_vs_none"] = r["step_s"] / base["step_s"]
        if "step_s_synced_each_step" in r:
            r["step_vs_none_synced_each_step"] = r["step_s_synced_each_step"] / base["step_s_synced_each_step"]
        r["saved_vs_none"] = r["saved_bytes"] / base["saved_bytes"]
        r["block_saving_kept"] = (base["saved_bytes"] - r["saved_bytes"]) / blocks_saved if blocks_saved else None
    act = 2 if bf16 else 4
    for r in rows:
        k, sel = {"none": (0, False), "full": (L, False), "selective": (L, True),
                  "sqrt": (estimate.sqrt_segmentation(L)[0], False)}[r["policy"]]
        segs = estimate.sqrt_segmentation(L)[1] if r["policy"] == "sqrt" else None
        r["saved_bytes_estimated"] = sum(estimate.estimate_recompute_activation_bytes(
            cfg, batch, seq, k, sel, act_bytes=act, segments=segs).values())
    rows_by = {(r["policy"], r["impl"]): r for r in rows}
    for impl, key in (("frugal", "frugal"), ("torch", "torch.utils.checkpoint")):
        curve[key] = [dict(rows_by[("none", "-")], label="0")] + [dict(p, label=p["policy"].split(":")[1])
                                                                   for p in curve[key]]
        curve[key].append(dict(rows_by[("full", impl)], label=f"{L}"))
    choices = {"frugal selective": [dict(rows_by[("selective", "frugal")], label="sel")] + variants,
               "√n segments": [dict(rows_by[("sqrt", impl)], label="√n") for impl in ("frugal", "torch")]}
    fig = plots.recompute_tradeoff(curve, title=f"{name} B={batch} T={seq}", alternatives=choices)
    return {"rows": rows + variants + [p for pts in curve.values() for p in pts if p["policy"].startswith("first")],
            "figures": {"tradeoff": fig}}
