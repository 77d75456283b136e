"""What fp8 buys: matmul throughput (bf16, our Float8Linear, torch._scaled_mm alone) and one training step of a
matmul-bound model (bf16 autocast, ours in fp8, torchao's float8 training where it is installed). All eager.

`python -m frugal bench --section fp8`; bench_fp8(device, quick) returns its rows (dicts) and figures.
"""
from __future__ import annotations

import copy
import gc
import importlib
import importlib.util

import torch
import torch.nn as nn
import torch.nn.functional as F

from frugal import fp8
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, section
from frugal.measure import measure_time
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


def _timed(fn, device, quick):
    return measure_time(fn, device, warmup=1 if quick else 3, repeats=3 if quick else 10).median_s


def _matmul_rows(n: int, device: torch.device, quick: bool) -> list[dict]:
    """y = x Wᵀ at M = K = N = n: bf16, our Float8Linear forward (casts of x and W included), _scaled_mm alone."""
    flops = 2.0 * n ** 3
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    w = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    rows = [{"op": "matmul bf16", "size": n, "backend": "bf16", "ms": _timed(lambda: x @ w.t(), device, quick) * 1e3}]
    layer = fp8.Float8Linear(n, n, bias=False, device=device)            # fp32 master weight
    with torch.no_grad():
        t = _timed(lambda: layer(x), device, quick)
    rows.append({"op": "Float8Linear forward", "size": n, "ms": t * 1e3,
                 "backend": fp8.choose_backend(layer.backend, device, n, n, n)})
    del layer
    one = torch.ones((), device=device)
    x_q, w_q = x.to(fp8.E4M3), w.to(fp8.E4M3)                            # randn: within e4m3's range at scale 1
    try:
        t = _timed(lambda: torch._scaled_mm(x_q, w_q.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                            use_fast_accum=True), device, quick)
        rows.append({"op": "torch._scaled_mm alone", "size": n, "backend": "scaled_mm", "ms": t * 1e3})
    except (RuntimeError, NotImplementedError) as e:
        rows.append({"op": "torch._scaled_mm alone", "size": n, "error": f"{type(e).__name__}: {e}"[:200]})
    for r in rows:
        if "ms" in r:
            r["tflops"] = flops / (r["ms"] * 1e-3) / 1e12
            r["speedup_vs_bf16"] = rows[0]["ms"] / r["ms"]
    return rows


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
    variants = [("train step bf16", None), ("train step fp8 (ours)", "ours"),
                ("train step fp8 (ours, check_finite off)", "ours-nocheck"), ("train step fp8 (torchao)", "torchao")]
    rows = []
    for label, kind in variants:
        if quick and kind == "ours-nocheck":
            continue
        model = copy.deepcopy(base)
        row = {"op": label, "d": d, "tokens": tokens, "blocks": n_blocks}
        if kind in ("ours", "ours-nocheck"):
            names = fp8.convert_to_float8(model, min_features=16 if quick else 1024)
            for name in names:
                model.get_submodule(name).check_finite = kind == "ours"
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
    for r in rows:
        if "ms" in r:
            r["speedup_vs_bf16"] = bf16 / r["ms"]
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
    return {"rows": rows, "figures": {}}


TABLES = [
    Table("fp8 against bf16: square matmuls and a training step (eager)", [
        Column("op", "what"), Column("size", "M = K = N"), Column("d", "width d"), Column("backend", "fp8 path"),
        Column("ms", "time (ms)"), Column("tflops", "TFLOP/s"), Column("speedup_vs_bf16", "vs bf16", "x"),
        Column("error", "note")]),
]


@section("fp8", TABLES)
def bench_section_fp8(ctx: BenchContext) -> dict:
    """Where fp8 pays: matmul throughput by size and one step of a matmul-bound model."""
    return bench_fp8(ctx.device, ctx.quick)
