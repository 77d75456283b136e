"""`python -m frugal bench`: each lesson's headline measurement on this machine's hardware.

Every section is a function of a BenchContext that returns rows (dicts, printed as a table and saved)
and figures. Results go to results/<device>.json, merged with the sections already there, and
results/<device>_<section>_<figure>.png.
"""
from __future__ import annotations

import gc
import json
import platform
import sys
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


def _fresh(device: torch.device) -> None:
    """Start a section with nothing left from the one before: compiled graphs (they hold their models), objects
    in reference cycles, cached GPU blocks. Leftovers would count in a later section's peak and memory cap."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


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
    results["host"] = {"torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    results.setdefault("sections", {})
    for name in sections or list(SECTIONS):
        _fresh(ctx.device)
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


README_START = "<!-- results:start (written by `python -m frugal report`) -->"
README_END = "<!-- results:end -->"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_report(results_dir: str | Path = "results") -> str:
    """Every committed results/<device>.json as markdown: a heading per device, a table per section,
    and the section's figures."""
    parts = []
    for path in sorted(Path(results_dir).glob("*.json")):
        data = json.loads(path.read_text())
        d = data.get("device", {})
        parts.append(f"### {d.get('name', path.stem)} (`{path.name}`, torch {d.get('torch_version', '?')})\n")
        for name, sec in data.get("sections", {}).items():
            rows = sec.get("rows", [])
            parts.append(f"**{name}** (measured {sec.get('when', '?')}, `python -m frugal bench --section {name}`)\n")
            if rows:
                cols = list(dict.fromkeys(k for r in rows for k in r))
                parts.append("| " + " | ".join(cols) + " |")
                parts.append("|" + "---|" * len(cols))
                parts.extend("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows)
                parts.append("")
            parts.extend(f"![{name}](results/{f})" for f in sec.get("figures", []))
            parts.append("")
    return "\n".join(parts).strip() + "\n"


def update_readme(readme: str | Path = "README.md", results_dir: str | Path = "results") -> bool:
    """Replace the README's results block with markdown_report(); True if the README changed."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no results block: add the lines {README_START!r} and {README_END!r}")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{markdown_report(results_dir)}{README_END}{tail}"
    readme.write_text(new)
    return new != text


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
    fp16 + GradScaler; rounds alternate between settings so drift hits all alike. GPT-2 small on a GPU.
    step_ms is the steady state of a training loop; step_ms_synced_each_step adds the launch gap of a sync."""
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
    # Two clocks: the steady state (5 steps back to back per reading, as a training loop runs) and a sync after
    # every step, where the GPU starts each step idle while Python enqueues its first kernels (the launch gap).
    rounds, repeats, inner = (1, 3, 2) if ctx.quick else (3, 6, 5)
    synced = {label: [] for label in steps}
    for _ in range(rounds):
        for label in steps:
            times[label] += measure.measure_time(steps[label], ctx.device, warmup=3, repeats=repeats,
                                                 inner=inner).times_s
            synced[label] += measure.measure_time(steps[label], ctx.device, warmup=1, repeats=repeats).times_s
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
    fig, ax = plots._figure(6.4, 3.6)
    xs = range(len(ms))
    colors = [plots.FORMAT_COLORS.get(k.split("+")[0], "grey") for k in ms]
    ax.bar([x - 0.2 for x in xs], list(ms.values()), width=0.4, color=colors, label="steady state (back to back)")
    ax.bar([x + 0.2 for x in xs], list(ms_synced.values()), width=0.4, color=colors, alpha=0.45, hatch="//",
           label="synchronized after every step")
    ax.set_xticks(list(xs), list(ms))
    ax.legend(fontsize=8)
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

@section("checkpointing")
def bench_checkpointing(ctx: BenchContext) -> dict:
    """TinyGPT (GPT-2 small, bf16 autocast, B=32, T=1024 on a GPU; tiny on CPU): peak memory, saved-activation
    bytes and step time (forward, backward, AdamW) with no, full (ours and torch's), selective and √n recompute,
    and the curve over 0..L checkpointed blocks."""
    import functools
    from contextlib import nullcontext
    import torch.utils.checkpoint as tcp
    from frugal import estimate, measure, plots
    from frugal.data import synthetic_batch
    from frugal.model import TinyGPT, preset
    from frugal.recompute import SELECTIVE_KEEP, Recompute

    on_gpu = ctx.device.type == "cuda"
    name = "gpt2-small" if on_gpu and not ctx.quick else "tiny"
    cfg = preset(name)
    batch, seq = (32, 1024) if name == "gpt2-small" else (8, cfg.block_size)
    bf16 = on_gpu and dev.bf16_is_native(ctx.device)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext
    torch.manual_seed(0)
    model = TinyGPT(cfg).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = synthetic_batch(cfg.vocab_size, batch, seq, torch.Generator().manual_seed(0), ctx.device)
    theirs = functools.partial(tcp.checkpoint, use_reentrant=False)
    theirs_seq = lambda f, inp: tcp.checkpoint(f, inp, use_reentrant=False)

    def step():
        with amp():
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def point(label, impl, recompute, synced=False):
        model.recompute = recompute
        with amp():
            saved = measure.measure_activation_bytes(model, x, y)
        repeats = 3 if ctx.quick else 5
        # steady state, as lesson 01's precision section: steps back to back, here 10 per reading (a step takes
        # ~0.1 s), so the GPU's idle start after each reading's sync weighs a tenth; recompute adds host work
        # that shows most in that first step (step_s_synced_each_step below)
        timing = measure.measure_time(step, ctx.device, warmup=2 if ctx.quick else 3, repeats=repeats,
                                      inner=1 if ctx.quick else 10)
        peak = measure.measure_peak_memory(step, ctx.device)
        row = {"policy": label, "impl": impl, "model": name, "batch": batch, "seq": seq,
               "dtype": "bf16 autocast" if bf16 else "fp32", "saved_bytes": saved,
               "peak_memory_bytes": peak, "step_s": timing.median_s}
        if synced:      # the other clock: the GPU idle at every step's start, waiting for the host's first kernels
            row["step_s_synced_each_step"] = measure.measure_time(step, ctx.device, warmup=1, repeats=repeats).median_s
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



# ----------------------------------------------------------------------------- lesson 03: data parallel

@section("data_parallel")
def bench_data_parallel(ctx: BenchContext) -> dict:
    """tokens/s against ranks for torch DDP, DataParallelNaive and DataParallelBucket (one GPU per rank,
    NCCL; 2 gloo ranks on CPU), and all-reduce bus bandwidth of our ring, our naive one and NCCL's."""
    from frugal import collectives, data_parallel, plots
    from frugal.dist import launch

    on_gpu = ctx.device.type == "cuda"
    n_max = dev.gpu_count() if on_gpu else 2
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        name, batch, seq, steps, warmup, bf16 = "gpt2-small", 8, 1024, (5 if ctx.quick else 20), 5, True
        nbytes, repeats = (2 ** 24 if ctx.quick else 256 * 2 ** 20), (5 if ctx.quick else 20)
    else:
        name, batch, seq, steps, warmup, bf16 = "tiny", 4, 64, (4 if ctx.quick else 20), 2, False
        nbytes, repeats = (2 ** 20 if ctx.quick else 2 ** 24), (3 if ctx.quick else 10)
    flavours = ["none", "ddp", "naive", "bucket"]
    worlds = sorted({1, *[2 ** k for k in range(1, 8) if 2 ** k <= n_max], n_max})
    rows = []
    for n in worlds:
        flv = flavours if n == 1 else flavours[1:]
        rows += launch(data_parallel.benchmark_rank, n, name, flv, batch, seq, steps, warmup, 25.0, bf16,
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
                                     ideal_from="ddp"),
            **({"busbw": plots.bus_bandwidth(bw_rows, title=f"All-reduce of {nbytes / 2 ** 20:g} MiB on {n_max} "
                                                          f"ranks, {hw}")} if bw_rows else {})}
    return {"rows": rows + bw_rows, "figures": figs}



# ----------------------------------------------------------------------------- lesson 04: sharding

@section("zero")
def bench_zero(ctx: BenchContext) -> dict:
    """Torch DDP, our ZeRO stages 1-3 and torch FSDP on every visible GPU (NCCL; 2 gloo CPU ranks otherwise):
    tokens/s, per-rank peak memory beside zero_experiment.predict_peak_bytes (what lives at the peak, by name), bytes sent;
    then a model over 2x what DP holds, trained with stage 3 under an emulated per-GPU memory cap."""
    from frugal import estimate, plots
    from frugal.dist import launch
    from frugal.model import preset
    from frugal.zero_experiment import ZeroRun, peak_by_kind, predict_peak_bytes, run_many

    gpus = dev.gpu_count() if ctx.device.type == "cuda" else 0
    multi = gpus >= 2
    world = min(gpus, 4) if multi else 2
    big = multi and not ctx.quick
    model, dtype, batch, seq = ("gpt2-small", "bf16", 8, 1024) if big else ("tiny", "fp32", 4, 32)
    steps, warmup = (15, 5) if big else (4, 1)
    backend = "nccl" if multi else "gloo"
    modes = ("ddp", "bucket", "zero1", "zero2", "zero3", "fsdp")
    base = dict(model=model, dtype=dtype, batch_size=batch, seq_len=seq, steps=steps, warmup=warmup)
    results = launch(run_many, world, {m: ZeroRun(mode=m, **base) for m in modes}, backend=backend,
                     timeout=600)
    cfg = preset(model)
    n_params = _meta_model(cfg).num_params()
    precision = "mixed" if dtype != "fp32" else "fp32"
    act_bytes = 2 if dtype != "fp32" else 4
    label = lambda m: {"ddp": "DDP", "bucket": "DP (ours)", "fsdp": "FSDP"}.get(m) or f"stage {m[-1]}"
    stage_of = lambda m: {"ddp": 0, "bucket": 0, "fsdp": 3}.get(m) if m in ("ddp", "bucket", "fsdp") else int(m[-1])
    rows, predicted, observed, comm_pred, comm_counted, breakdown = [], {}, {}, {}, {}, {}
    for m in modes:
        per_rank = [r[m] for r in results]
        if "error" in per_rank[0]:
            rows.append({"plan": label(m), "error": per_rank[0]["error"][:200]})
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
    for r in rows:       # the yardsticks: stage 2 against our bucketed DP, stage 3 against FSDP
        if ddp and "tokens_per_s" in r:
            r["vs_ddp"] = r["tokens_per_s"] / ddp["tokens_per_s"]
        if ours and "tokens_per_s" in r:
            r["vs_bucket_dp"] = r["tokens_per_s"] / ours["tokens_per_s"]
    figures = {
        "memory": plots.sharding_memory_bars(
            predicted, observed, unit=2 ** 30 if big else 2 ** 20, unit_name="GiB" if big else "MiB",
            title=f"Per rank, {model} {dtype}, {world} ranks ({ctx.slug}): predicted vs "
                  f"{'peak CUDA' if multi else 'counted'}"),
        "comm": plots.comm_volume_bars(comm_pred, comm_counted),
    }
    if big:
        rows += _zero_memory_cap(world, dtype, n_params)
    return {"rows": rows, "figures": figures, "peak_breakdown": breakdown}


def _zero_memory_cap(world: int, dtype: str, small_params: int) -> list[dict]:
    """Cap each GPU's memory halfway between the predicted peaks (zero_experiment.predict_peak_bytes) of gpt2-medium under
    stage 3 and under DP, then train it both ways; gpt2-small under DP is the control that the cap leaves room for."""
    from frugal.dist import RankError, launch
    from frugal.model import preset
    from frugal.zero_experiment import ZeroRun, predict_peak_bytes, run_rank

    batch, seq = 2, 1024
    cfg = preset("gpt2-medium")
    n_big = _meta_model(cfg).num_params()
    need = lambda name, mode: sum(predict_peak_bytes(mode, preset(name), batch, seq, world, dtype).values())
    cap = (need("gpt2-medium", "ddp") + need("gpt2-medium", "zero3")) / 2
    fraction = cap / torch.cuda.get_device_properties(0).total_memory
    rows = []
    for name, mode, n in (("gpt2-small", "ddp", small_params), ("gpt2-medium", "ddp", n_big),
                          ("gpt2-medium", "zero3", n_big)):
        run = ZeroRun(mode=mode, model=name, dtype=dtype, batch_size=batch, seq_len=seq, steps=3,
                      memory_fraction=fraction)
        try:
            out = launch(run_rank, world, run, backend="nccl", timeout=120)
            fits = True
            peak = max(r["peak_memory_bytes"] for r in out)
            reserved = max(r["peak_reserved_bytes"] for r in out)
        except RankError as e:
            fits, peak, reserved = False, None, None
            if "out of memory" not in str(e).lower() and "OutOfMemoryError" not in str(e):
                raise
        rows.append({"plan": f"cap {cap / 2**30:.2f} GiB: {name} {mode}", "n_params": n,
                     "params_over_control": n / small_params, "memory_cap_bytes": cap, "fits": fits,
                     "peak_bytes_predicted": need(name, mode), "peak_bytes_measured": peak,
                     "peak_reserved_bytes": reserved})
    return rows



# ----------------------------------------------------------------------------- lesson 05: tensor and pipeline parallel

@section("model_parallel")
def bench_model_parallel(ctx: BenchContext) -> dict:
    """Pipeline: measured bubble of GPipe and 1F1B per micro-batch count m against (p-1)/(m+p-1), and the
    first stage's peak activations. Tensor parallel: step time, tokens/s and all-reduce traffic of a block stack.
    One GPU per rank over NCCL when there are 2+ GPUs (up to 4), else 2 gloo ranks on CPU."""
    import statistics
    from frugal import estimate, plots
    from frugal import pipeline_parallel as pp
    from frugal import tensor_parallel as tp
    from frugal.dist import launch
    from frugal.model import GPTConfig

    on_gpu = ctx.device.type == "cuda" and dev.gpu_count() >= 2
    p = min(dev.gpu_count(), 4) if on_gpu else 2
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu and not ctx.quick:
        cfg = GPTConfig(vocab_size=256, block_size=512, n_layer=4 * p, n_head=16, n_embd=1024)
        batch, seq, ms, repeats = 32, 512, [1, 2, 4, 8, 16], 5
    else:
        cfg = GPTConfig(vocab_size=256, block_size=32, n_layer=2 * p, n_head=4, n_embd=64)
        batch, seq, ms, repeats = 8, 32, [1, 2, 4], 2
    threads = None if on_gpu else 1
    runs = [(s, m) for s in ("gpipe", "1f1b") for m in ms]
    res = pp.gather_runs(launch(pp.pipeline_rank, p, cfg, batch, seq, runs, 0, repeats + 1, False, threads,
                                backend=backend, timeout=300))
    rows, measured, gantt = [], {"gpipe": {}, "1f1b": {}}, {}
    for r in res:
        tls = r["timelines"][1:]                                      # the first repeat warms up
        bubbles = [pp.measure_bubble(tl) for tl in tls]
        steps = [max(e["end"] for st in tl for e in st) - min(e["start"] for st in tl for e in st) for tl in tls]
        measured[r["schedule"]][r["m"]] = statistics.median(bubbles)
        if r["m"] == min(4, max(ms)):
            gantt[f"{r['schedule']}, m={r['m']}"] = tls[len(tls) // 2]
        rows.append({"part": "pipeline", "backend": backend, "ranks": p, "schedule": r["schedule"], "m": r["m"],
                     "bubble_measured": statistics.median(bubbles), "bubble_formula": estimate.pipeline_bubble_fraction(p, r["m"]),
                     "step_ms": statistics.median(steps) * 1e3, "stage0_in_flight": r["in_flight"][0],
                     "stage0_activation_bytes": r["activation_bytes"][0]})
    tp_cfg = GPTConfig(vocab_size=256, block_size=seq, n_layer=cfg.n_layer // p if on_gpu else 2,
                       n_head=cfg.n_head, n_embd=cfg.n_embd)
    tp_batch = 8 if on_gpu and not ctx.quick else 4
    for w in sorted({1, p}):
        out = launch(tp.tp_stack_step_rank, w, tp_cfg, tp_batch, seq, 3, 10 if on_gpu else 3, threads,
                     backend=backend, timeout=300)[0]
        rows.append({"part": "tensor", "backend": backend, "ranks": w, "layers": tp_cfg.n_layer,
                     "step_ms": out["step_s"] * 1e3, "tokens_per_s": tp_batch * seq / out["step_s"],
                     "all_reduces_per_step": out["all_reduces"], "comm_bytes_per_step": out["comm_bytes"],
                     "all_reduce_ms": out["all_reduce_s"] * 1e3,
                     "comm_share_est": out["all_reduces"] * out["all_reduce_s"] / out["step_s"] if w > 1 else 0.0,
                     "params_per_rank": out["params_per_rank"]})
    return {"rows": rows, "figures": {"bubble": plots.bubble_vs_formula(measured, p),
                                      "gantt": plots.pipeline_gantt(gantt)}}



# ----------------------------------------------------------------------------- lesson 06: Triton kernels

@section("kernels")
def bench_kernels(ctx: BenchContext) -> dict:
    """Vector add GB/s (every config of ours, torch.add, copy) at 2^20..2^28 floats; fused add+RMSNorm against
    the eager chain, fwd+bwd; chunked linear cross-entropy peak memory and time against the unfused head."""
    from frugal import plots
    try:
        from frugal.kernels import fused_add_rmsnorm as frms, fused_linear_cross_entropy as fce, vector_add as va
    except ImportError as e:
        return {"rows": [{"skipped": str(e)}], "figures": {}}
    on_gpu = ctx.device.type == "cuda"
    big = on_gpu and not ctx.quick
    rows, figures = [], {}

    sizes = [2 ** k for k in range(20, 29, 2)] if big else [2 ** 10, 2 ** 12]
    configs = va.CONFIGS if on_gpu else va.CONFIGS[:2]
    add_rows = va.benchmark_vector_add(sizes, ctx.device, configs, repeats=30 if big else 2)
    best = {}
    for n in sizes:
        ours = [r for r in add_rows if r["n"] == n and r["impl"] == "ours"]
        torch_add = next(r for r in add_rows if r["n"] == n and r["impl"] == "torch.add")
        best[n] = max(ours, key=lambda r: r["GB/s"])
        for r in ours + [torch_add]:
            r["vs torch.add"] = r["GB/s"] / torch_add["GB/s"]
    for r in add_rows:
        rows.append({"part": "vector add", **r, "best of ours": r is best.get(r["n"])})
    series = {"ours (best config per size)": (sizes, [best[n]["GB/s"] for n in sizes])}
    for impl in ("torch.add", "copy"):
        series[impl] = (sizes, [r["GB/s"] for r in add_rows if r["impl"] == impl])
    figures["vector_add"] = plots.bandwidth_vs_size(series, title=f"Vector add, {ctx.slug}"
                                                    + ("" if on_gpu else " (Triton interpreter)"))

    shapes = [(8192, 768), (16384, 4096)] if big else [(64, 128)]
    fused_rows = frms.benchmark_add_rmsnorm(shapes, ctx.device, repeats=20 if big else 2)
    rows += [{"part": "add+rmsnorm fwd+bwd", **r} for r in fused_rows]
    last = [r for r in fused_rows if r["shape"] == f"{shapes[-1][0]}x{shapes[-1][1]}"]
    figures["fused"] = plots.fused_vs_unfused({r["impl"]: r["fwd+bwd ms"] for r in last},
                                              {r["impl"]: r["bytes moved"] for r in last},
                                              title=f"Residual add + RMSNorm {last[0]['shape']}, fwd+bwd, {ctx.slug}")

    if big:
        ce_cases = [(8192, 50304, 768, dtype) for dtype in (torch.float32, torch.bfloat16)]
        chunks = (None, 1024, 4096)
    else:
        ce_cases, chunks = [(128, 50304 if on_gpu else 512, 32, torch.float32)], (None, 32)
    for n_tok, vocab, n_embd, dtype in ce_cases:
        ce = fce.benchmark_linear_cross_entropy(n_tok, vocab, n_embd, ctx.device, dtype, chunks,
                                                repeats=10 if big else 2)
        rows += [{"part": "linear cross-entropy fwd+bwd", **r} for r in ce]
    n_tok, vocab, n_embd, _ = ce_cases[0]
    vocabs, tokens = [2 ** k for k in range(10, 18)], [2 ** k for k in range(9, 17)]
    est = fce.estimate_linear_cross_entropy_memory
    chunk = lambda t, v: fce.default_chunk_size(t, v, n_embd)
    figures["cross_entropy_memory"] = plots.cross_entropy_memory(
        {"unfused (estimate)": (vocabs, [est(n_tok, v, n_embd, None) for v in vocabs]),
         "chunked (estimate)": (vocabs, [est(n_tok, v, n_embd, chunk(n_tok, v)) for v in vocabs])},
        {"unfused (estimate)": (tokens, [est(t, vocab, n_embd, None) for t in tokens]),
         "chunked (estimate)": (tokens, [est(t, vocab, n_embd, chunk(t, vocab)) for t in tokens])},
        title=f"Head peak memory, n_embd={n_embd}, fp32 (left: {n_tok} tokens; right: vocab {vocab})")
    return {"rows": rows, "figures": figures}



# ----------------------------------------------------------------------------- lesson 07: the recipe

@section("recipe_search")
def bench_recipe_search(ctx: BenchContext) -> dict:
    """The largest TinyGPT a T4's 16 GB trains, naive fp32 Adam against the full recipe: the estimator's answer
    everywhere, checked by real capped training steps on a GPU (counted bytes on CPU, at toy sizes)."""
    from dataclasses import asdict
    from frugal import plots, recipe
    from frugal.estimate import GB, get_gpu

    on_gpu = ctx.device.type == "cuda"
    if on_gpu:
        budget, batch, seq, family = get_gpu("T4").memory_gb * GB, 8, 1024, recipe.size_family()
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        budget = min(budget, 0.95 * total)                 # a smaller GPU checks its own memory instead
    else:                                                  # toy sizes: a budget of a few MB, counted
        family = recipe.size_family(256, 64)[:4 if ctx.quick else 6]
        budget, batch, seq = 40e6 if ctx.quick else 200e6, 4, 64
    plans = [recipe.naive_plan(), recipe.recipe_plan(1), recipe.recipe_plan(8)]
    rows, curves = [], {}
    for plan in plans:
        verify = recipe.verifier(plan, batch, seq, budget, ctx.device) if plan.world_size == 1 else None
        result = recipe.largest_that_fits(budget, plan, batch, seq, family=family, verify=verify)
        curves[plan.name] = [asdict(r) for r in result.rows]
        est, ver = result.largest_estimated, result.largest_verified
        rows.append({
            "plan": plan.name, "budget_GB": budget / 1e9, "batch": batch, "seq": seq,
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



@section("recipe")
def bench_recipe(ctx: BenchContext) -> dict:
    """GPT-2 small (tiny on CPU): plain bf16 against candidate recipes, each a TrainConfig: tokens/s, MFU
    (6N + 12·L·d·T per token against the catalog's dense bf16 peak), peak memory, saved activation bytes, US$ per
    billion tokens; the best is marked. Then checkpointing + fused cross-entropy against plain bf16 at one batch."""
    from dataclasses import replace
    from frugal import estimate, measure, plots
    from frugal.data import synthetic_batch
    from frugal.model import TinyGPT, preset
    from frugal.recompute import from_spec
    from frugal.train import TrainConfig, autocast, build, train_step

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
            if big:
                r["meets_40pct_mfu"] = r["mfu"] >= 0.40
    by = {r["recipe"]: r for r in ok}
    for b in (small_b, large_b):                  # the pair the issue names, at equal batch
        plain = by.get(f"plain bf16 B{b}")
        for label in (f"recompute full + fused CE B{b}", f"selective + fused CE B{b}", f"sqrt + fused CE B{b}"):
            pair = by.get(label)
            if plain is None or pair is None:
                continue
            less = 1 - pair["saved_activation_bytes"] / plain["saved_activation_bytes"]
            slower = pair["step_ms"] / plain["step_ms"] - 1
            row = {"recipe": f"pair: {label} vs plain bf16 B{b}", "batch": b,
                   "activation_bytes_less": less, "step_time_more": slower,
                   "meets_70pct_less_for_25pct_more": less >= 0.70 and slower <= 0.25}
            if on_gpu:
                row["peak_above_states_less"] = 1 - pair["peak_above_states_bytes"] / plain["peak_above_states_bytes"]
            rows.append(row)
    runs = {r["recipe"]: {"tokens_per_s": r["tokens_per_s"], "dollars_per_billion_tokens":
                          r[f"usd_per_billion_tokens ({price_gpu})"],
                          "memory_bytes": r.get("peak_memory_bytes") or r["saved_activation_bytes"]} for r in ok}
    fig = plots.recipe_runs(runs, title=f"{name}, T={seq} on {dev.describe(ctx.device).name} "
                                        f"({'peak memory' if on_gpu else 'saved activations'}; price: {price_gpu})")
    return {"rows": rows, "figures": {"candidates": fig}}
