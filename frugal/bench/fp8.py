"""What fp8 buys: matmul throughput (bf16, our Float8Linear, torch._scaled_mm alone) and one training step of a
matmul-bound model (bf16 autocast, ours in fp8, torchao's float8 training where it is installed). All eager.

`python -m frugal bench --section fp8`; bench_fp8(device, quick) returns its rows (dicts) and figures.
"""
from __future__ import annotations

import copy
import gc
import importlib
import importlib.util
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

from frugal import data, fp8, fp8_fused
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, section
from frugal.measure import measure_time
from frugal.plots.fp8 import CAST_ROWS
from frugal.train import TrainConfig, make_optimizer, train_step

SIZES = (1024, 2048, 4096, 8192, 16384)   # square matmuls M = K = N on a GPU
QUICK_SIZES = (256, 512)                  # quick (tests, CPU): small enough for the fp32 emulation


class LinearBlocks(nn.Module):
    """n_blocks residual blocks x + W2·gelu(W1·x) (d -> 4d -> d, no bias), loss = mean squared error to the
    targets: a model whose step is nearly all matmul, as the MLP half of a transformer."""

    def __init__(self, d: int, n_blocks: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, 4 * d, bias=False), nn.GELU(),
                                                  nn.Linear(4 * d, d, bias=False)) for _ in range(n_blocks))

    def forward(self, x: torch.Tensor, targets: torch.Tensor):
        for block in self.blocks:
            x = x + block(x)                                              # (M, d)
        return None, F.mse_loss(x.float(), targets)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed(fn, device, quick, inner: int = 1):
    """Median seconds per call; inner calls back to back per repeat: a training loop's steady state, where the
    host enqueues the next layer while the GPU runs this one (a lone call would time the host's launches too)."""
    return measure_time(fn, device, warmup=1 if quick else 3, repeats=3 if quick else 10,
                        inner=1 if quick else inner).median_s


def _gpu_ms(fn, device: torch.device, quick: bool) -> dict:
    """{"GPU ms": fn's time replayed from a CUDA graph}: the GPU's work alone, without Python's launches; {} off
    a GPU and in quick runs."""
    if device.type != "cuda" or quick:
        return {}
    from frugal.kernels.roofline import measure_graph_time
    return {"GPU ms": measure_graph_time(fn, device, calls=5, repeats=10) * 1e3}


ROUNDS = 3   # the matmul rows are timed in turn, this often: a drift of the GPU's clock falls on every row alike


def _matmul_rows(n: int, device: torch.device, quick: bool) -> list[dict]:
    """y = x Wᵀ at M = K = N = n: bf16; our Float8Linear forward, its speed path (x cast each call, the weight's
    fp8 copy cached as in a training step) and its eager core; torch._scaled_mm alone on operands cast before.
    Each timed from Python, 10 calls back to back, and (all but the eager core) replayed from a CUDA graph; the
    rows take turns, ROUNDS times, and each keeps the median of its samples."""
    flops = 2.0 * n ** 3
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    w = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    cases = [({"op": "matmul bf16", "size": n, "backend": "bf16"}, lambda: x @ w.t(), None)]
    backend = fp8.choose_backend("auto", device, n, n, n)
    layers = []                                                      # kept alive until every round is done
    for label, fused, recipe in (("Float8Linear forward (speed path)", True, "current"),
                                 ("Float8Linear forward (speed path, delayed)", True, "delayed"),
                                 ("Float8Linear forward (eager core)", False, "current")):
        if fused and not (backend == "scaled_mm" and fp8_fused.fusable(x)):
            continue                                                     # the speed path runs on a fp8 GPU only
        layer = fp8.Float8Linear(n, n, bias=False, device=device, recipe=recipe)   # fp32 master weight
        layer.fused = fused
        layers.append(layer)
        cases.append(({"op": label, "size": n, "backend": backend + (" + triton" if fused else "")},
                      lambda layer=layer: layer(x), layer if fused else False))
    cases += _gelu_cases(x, n, quick, backend)
    alone = _scaled_mm_alone(x, n, device)                           # a function, or why not
    if callable(alone):
        cases.append(({"op": SCALED_MM_ALONE, "size": n, "backend": "scaled_mm"}, alone, None))
    rows = _time_in_turns(cases, device, quick)
    if not callable(alone):
        rows.append({"op": SCALED_MM_ALONE, "size": n, "error": alone})
    del layers
    for time, prefix in (("ms", ""), ("GPU ms", "GPU ")):           # from Python, then the GPU's time alone
        alone = next((r[time] for r in rows if r["op"] == SCALED_MM_ALONE and time in r), None)
        gelu = next((r[time] for r in rows if r["op"] == GELU_ALONE and time in r), 0.0)
        for r in rows:
            if time in r and time in rows[0] and r["op"] != GELU_ALONE:
                extra = gelu if "GELU" in r["op"] else 0.0       # a GELU row does the GELU's work as well
                if not prefix:
                    r["tflops"] = flops / (r["ms"] * 1e-3) / 1e12
                r[prefix + "speedup_vs_bf16"] = (rows[0][time] + extra) / r[time]
                if alone is not None and "Float8Linear" in r["op"]:
                    r[prefix + "vs_scaled_mm"] = (alone + extra) / r[time]
    return rows


def _time_in_turns(cases: list, device: torch.device, quick: bool) -> list[dict]:
    """Rows with "ms" (from Python) and, on a GPU, "GPU ms" (a CUDA graph) of each case (row, fn, graphed):
    graphed None: replay fn as it is; a layer: replay it with its inf/NaN check off (a graph holds no host
    reads); False: no graph. Every case is timed once per round, in turn, without autograd."""
    samples = [([], []) for _ in cases]
    with torch.no_grad():                                            # delayed: each history fills at warm-up
        for _ in range(1 if quick else ROUNDS):
            for (_, fn, graphed), (py, gpu) in zip(cases, samples):
                py += measure_time(fn, device, warmup=1 if quick else 3, repeats=3 if quick else 4,
                                   inner=1 if quick else 10).times_s
                if graphed is False:
                    continue
                checked = graphed is not None and graphed.check_finite
                if checked:
                    graphed.check_finite = False
                gpu += _gpu_ms(fn, device, quick).values()                   # ms, or nothing off a GPU
                if checked:
                    graphed.check_finite = True
    return [{**row, "ms": statistics.median(py) * 1e3, **({"GPU ms": statistics.median(gpu)} if gpu else {})}
            for (row, _, _), (py, gpu) in zip(cases, samples)]


GELU_ALONE = "GELU alone (bf16, eager)"
SCALED_MM_ALONE = "torch._scaled_mm alone"


def _scaled_mm_alone(x: torch.Tensor, n: int, device: torch.device):
    """torch._scaled_mm on the operands the speed path gives it, cast before: x and a Float8Linear's initial
    weight, each scaled so its amax lands on e4m3's max (the tensor cores' power, so their clock, depends on the
    bits they multiply). A function, or the error where this torch has no such matmul, as text."""
    w = fp8.Float8Linear(n, n, bias=False, device=device).weight.detach()
    with torch.no_grad():
        (x_q, inv_x), (w_q, inv_w) = ((fp8.quantize(t, fp8.E4M3, s), s.reciprocal())
                                      for t in (x, w) for s in [fp8.compute_scale(t, fp8.E4M3)])
    call = lambda: torch._scaled_mm(x_q, w_q.t(), scale_a=inv_x, scale_b=inv_w, out_dtype=torch.bfloat16,
                                    use_fast_accum=True)
    try:
        call()
    except (RuntimeError, NotImplementedError) as e:
        return f"{type(e).__name__}: {e}"[:200]
    return call


def _gelu_cases(x: torch.Tensor, n: int, quick: bool, backend: str) -> list:
    """y = gelu(x) Wᵀ, as the second matmul of an MLP: eager GELU then the speed path (the cast a pass of its own),
    against the GELU inside the cast (input_gelu). Their "vs" columns compare with what bf16 or _scaled_mm alone
    would need for the same result: the matmul plus a GELU (GELU_ALONE's row). On an fp8 GPU only."""
    if quick or not (backend == "scaled_mm" and fp8_fused.fusable(x)):
        return []
    cases = [({"op": GELU_ALONE, "size": n, "backend": "bf16"}, lambda: F.gelu(x), None)]
    for label, inside in zip(CAST_ROWS, (False, True)):           # the labels plots.cast_placement reads
        layer = fp8.Float8Linear(n, n, bias=False, device=x.device, recipe="delayed")
        layer.input_gelu, layer.check_finite = inside, False    # no host reads: it is replayed from a graph too
        run = (lambda layer=layer: layer(x)) if inside else (lambda layer=layer: layer(F.gelu(x)))
        cases.append(({"op": label, "size": n, "backend": backend + " + triton"}, run, None))
    return cases


def _torchao_convert(model: nn.Module) -> str | None:
    """Convert model with torchao's convert_to_float8_training in place; None, or why it could not."""
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install torchao)"
    try:
        importlib.import_module("torchao.float8").convert_to_float8_training(model)
    except Exception as e:                                               # a version mismatch with this torch
        return f"torchao could not convert: {type(e).__name__}: {e}"[:200]
    return None


def _train_rows(device: torch.device, quick: bool) -> list[dict]:
    """One optimizer step (train.train_step, bf16 autocast around every variant) of LinearBlocks."""
    d, tokens, n_blocks = (256, 64, 2) if quick else (4096, 8192, 2)
    cfg = TrainConfig(precision="bf16", lr=1e-4, progress=False, device=str(device))
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, d, device=device, generator=gen)
    y = torch.randn(tokens, d, device=device, generator=gen)
    torch.manual_seed(0)
    base = LinearBlocks(d, n_blocks).to(device)
    flops = 6.0 * tokens * sum(p.numel() for p in base.parameters())       # forward 2, backward 4 per weight
    variants = [("train step bf16", ""), ("train step fp8 (ours)", "ours"),
                ("train step fp8 (ours, delayed)", "ours-delayed"),
                ("train step fp8 (ours, check_finite off)", "ours-nocheck"),
                ("train step fp8 (ours, eager core)", "ours-eager"),
                ("train step fp8 (ours, GELU in the cast)", "ours-gelu"),
                ("train step fp8 (ours, delayed, GELU in the cast)", "ours-delayed-gelu"),
                ("train step fp8 (torchao)", "torchao")]
    rows = []
    for label, kind in variants:
        if quick and kind in ("ours-delayed", "ours-nocheck", "ours-eager", "ours-delayed-gelu"):
            continue
        model = copy.deepcopy(base)
        row = {"op": label, "d": d, "tokens": tokens, "blocks": n_blocks}
        if kind.startswith("ours"):
            names = fp8.convert_to_float8(model, min_features=16 if quick else 1024,
                                          recipe="delayed" if kind.startswith("ours-delayed") else "current",
                                          fuse_gelu=kind.endswith("gelu"))
            for name in names:
                model.get_submodule(name).check_finite = kind != "ours-nocheck"
                model.get_submodule(name).fused = kind != "ours-eager"
            row["backend"] = fp8.choose_backend(fp8.Float8Linear.backend, device, tokens, d, 4 * d)
        elif kind == "torchao":
            why = _torchao_convert(model)
            if why is not None:
                rows.append({**row, "error": why})
                continue
        optimizer = make_optimizer(model, cfg)
        try:
            t = _timed(lambda: train_step(model, optimizer, x, y, cfg), device, quick)
            rows.append({**row, "ms": t * 1e3, "tflops": flops / t / 1e12})
        except Exception as e:                                           # torchao on a CPU, say
            rows.append({**row, "error": f"{type(e).__name__}: {e}"[:200]})
        del model, optimizer
        _free(device)
    bf16 = rows[0]["ms"]
    ao = next((r["ms"] for r in rows if r["op"] == "train step fp8 (torchao)" and "ms" in r), None)
    for r in rows:
        if "ms" in r:
            r["speedup_vs_bf16"] = bf16 / r["ms"]
            if ao is not None and "(ours" in r["op"]:
                r["vs_torchao"] = ao / r["ms"]
    return rows


def _val_loss(model: nn.Module, val: torch.Tensor, seq_len: int, device: torch.device, batches: int = 8) -> float:
    """Mean loss over `batches` fixed batches of the held-out text, under bf16 autocast as in training."""
    gen = torch.Generator().manual_seed(1)
    model.eval()
    losses = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for _ in range(batches):
            x, y = data.get_batch(val, 8, seq_len, gen, device)
            losses.append(model(x, y)[1].float().item())
    model.train()
    return sum(losses) / len(losses)


TEXT_SEEDS = (0, 1, 2)   # one seed's fp8-bf16 gap is noise of up to 2% either way (CPU, emulated, d=128 and 256:
                         # -0.4% to +2.0%, fp32 against bf16 -0.8% to +0.7%): the mean of three is compared


def _text_rows(device: torch.device, quick: bool, seeds=TEXT_SEEDS) -> list[dict]:
    """TinyGPT on the shipped text, the same steps, batches and seeds in bf16 and in fp8 (train.train,
    TrainConfig's precision): the held-out loss after them, averaged over seeds, each fp8's against bf16's."""
    from frugal.model import preset
    from frugal.train import train
    if quick:
        model_cfg, steps, batch, seq, min_f, seeds = preset("tiny"), 3, 4, 32, 16, seeds[:1]
    else:
        model_cfg, steps, batch, seq, min_f = preset("small", n_embd=1024, n_head=8, block_size=256), 300, 16, 256, 1024
    _, val = data.split(data.corpus_tokens())
    rows = []
    for label, precision, recipe in (("TinyGPT text bf16", "bf16", "current"), ("TinyGPT text fp8 current", "fp8",
                                     "current"), ("TinyGPT text fp8 delayed", "fp8", "delayed")):
        runs = []
        for seed in seeds:
            cfg = TrainConfig(steps=steps, batch_size=batch, seq_len=seq, lr=1e-3, precision=precision,
                              fp8_recipe=recipe, fp8_min_features=min_f, device=str(device), progress=False, seed=seed)
            result = train(model_cfg, cfg)
            runs.append((result.history[-1].loss, _val_loss(result.model, val, seq, device),
                         batch * seq / result.median_tokens_per_s() * 1e3))
            del result
            _free(device)
        mean = lambda i: sum(r[i] for r in runs) / len(runs)
        rows.append({"op": label, "d": model_cfg.n_embd, "steps": steps, "tokens": steps * batch * seq,
                     "seeds": list(seeds), "val_losses": [r[1] for r in runs], "final_loss": mean(0),
                     "val_loss": mean(1), "ms": mean(2)})
    for r in rows[1:]:
        r["val_vs_bf16"] = r["val_loss"] / rows[0]["val_loss"] - 1.0
        r["val_vs_bf16_by_seed"] = [v / b - 1.0 for v, b in zip(r["val_losses"], rows[0]["val_losses"])]
    return rows


def bench_fp8(device: torch.device | str, quick: bool = False) -> dict:
    """Matmul TFLOP/s at square sizes (quick: 256 and 512, just to run) and a d=4096 training step, each fp8
    variant with its speed-up over bf16. Medians of repeats after warm-up, synchronized (frugal.measure)."""
    device = torch.device(device)
    rows = []
    for n in QUICK_SIZES if quick else SIZES:
        rows += _matmul_rows(n, device, quick)
        _free(device)
    rows += _train_rows(device, quick)
    rows += _text_rows(device, quick)
    return {"rows": rows, "figures": {}}


TABLES = [
    Table("fp8 against bf16: square matmuls (eager)", [
        Column("op", "what"), Column("size", "M = K = N"), Column("backend", "fp8 path"), Column("ms", "time (ms)"),
        Column("speedup_vs_bf16", "vs bf16", "x"), Column("vs_scaled_mm", "vs _scaled_mm alone", "x"),
        Column("GPU ms", "GPU time (ms)"), Column("GPU speedup_vs_bf16", "GPU: vs bf16", "x"),
        Column("GPU vs_scaled_mm", "GPU: vs _scaled_mm", "x"), Column("error", "note")],
        where=lambda r: "size" in r,
        note="time: 10 calls back to back from Python; GPU time: 5 calls replayed from a CUDA graph, the GPU's work "
             "alone (the speed path with its inf/NaN check off: the check reads marks on the host). GELU rows "
             "compute gelu(x) Wᵀ: their vs columns compare with the matmul plus the GELU alone."),
    Table("fp8 against bf16: a training step and TinyGPT on text", [
        Column("op", "what"), Column("d", "width d"), Column("backend", "fp8 path"), Column("ms", "time (ms)"),
        Column("speedup_vs_bf16", "vs bf16", "x"), Column("vs_torchao", "vs torchao", "x"),
        Column("val_loss", "held-out loss"), Column("val_vs_bf16", "vs bf16 loss", "%"), Column("error", "note")],
        where=lambda r: "size" not in r),
]


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    """fp8's headline: the fastest of our train steps (the eager core left out) against bf16 and torchao's."""
    steps = {r["op"]: r for r in rows if r["op"].startswith("train step") and "ms" in r}
    bf16, ao = steps.get("train step bf16"), steps.get("train step fp8 (torchao)")
    ours = [r for op, r in steps.items() if "(ours" in op and "eager core" not in op]
    if bf16 is None or not ours:
        return []
    best = min(ours, key=lambda r: r["ms"])
    name = best["op"].removeprefix("train step fp8 ").strip("()")
    return [(f"fp8 train step, {best['blocks']} MLP blocks of d={best['d']}, {best['tokens']} tokens: {name} vs bf16"
             + (" and torchao's float8" if ao else ""),
             f"{best['ms']:.1f} vs {bf16['ms']:.1f} ms ({bf16['ms'] / best['ms']:.2f}× faster)"
             + (f"; torchao {ao['ms']:.1f} ms" if ao else ""))]


@section("fp8", TABLES, headlines)
def bench_section_fp8(ctx: BenchContext) -> dict:
    """Where fp8 pays: matmul throughput by size and one step of a matmul-bound model."""
    return bench_fp8(ctx.device, ctx.quick)
