"""Lesson 06: a Triton vector add against torch.add and a copy, fused add + RMSNorm against the eager chain, and the
chunked linear + cross-entropy's peak memory and time against the unfused head."""
from __future__ import annotations

import torch

from frugal import plots
from frugal.bench.report import Column, Table
from frugal.bench.runner import BenchContext, section

_PART = lambda name: (lambda r: r.get("part") == name)
TABLES = [
    Table("Vector add, fp32", [
        Column("n", "elements", "int"), Column("impl", "implementation"), Column("config", "config"),
        Column("GB/s", "GB/s", "GB/s"), Column("% of copy", "of copy", "%raw"), Column("vs torch.add", "vs torch.add", "x"),
        Column("best of ours", "best of ours")],
        where=_PART("vector add"), note="GB/s: bytes read + written over the time; a copy is the roofline."),
    Table("Residual add + RMSNorm, forward + backward", [
        Column("shape", "shape"), Column("impl", "implementation"), Column("fwd+bwd ms", "time (ms)", "ms"),
        Column("bytes moved", "moved (GB)", "GB"), Column("kernels", "kernels"), Column("GB/s", "GB/s", "GB/s"),
        Column("speedup vs eager", "vs eager chain", "x")],
        where=_PART("add+rmsnorm fwd+bwd")),
    Table("Linear + cross-entropy head, forward + backward", [
        Column("tokens", "tokens", "int"), Column("vocab", "vocab", "int"), Column("n_embd", "n_embd"),
        Column("dtype", "dtype"), Column("impl", "implementation"), Column("fwd+bwd ms", "time (ms)", "ms"),
        Column("peak bytes (measured)", "peak, measured (GB)", "GB"),
        Column("peak bytes (estimated)", "peak, estimated (GB)", "GB"),
        Column("time vs unfused", "time vs unfused", "x"), Column("memory vs unfused", "memory vs unfused", "x")],
        where=_PART("linear cross-entropy fwd+bwd")),
]


def peer_linear_cross_entropies() -> dict:
    """Liger-Kernel's and Cut Cross-Entropy's fused heads as name -> fn(hidden, weight, targets), those installed
    (`pip install 'frugal[peers]'`); each with its defaults, as a user gets it."""
    import importlib.metadata as md
    peers = {}
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        peers[f"Liger-Kernel {md.version('liger-kernel')}"] = liger_fused_linear_cross_entropy
    except ImportError:
        pass
    try:
        from cut_cross_entropy import linear_cross_entropy as cce
        peers[f"Cut Cross-Entropy {md.version('cut-cross-entropy')}"] = cce
    except ImportError:
        pass
    return peers


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    ce = [r for r in rows if r.get("part") == "linear cross-entropy fwd+bwd" and r["impl"].startswith("chunked")]
    if not ce:
        return []
    first = [r for r in ce if (r["tokens"], r["vocab"], r["dtype"]) == (ce[0]["tokens"], ce[0]["vocab"], ce[0]["dtype"])]
    best = min(first, key=lambda r: r["memory vs unfused"] * r["time vs unfused"])
    return [(f"chunked linear + cross-entropy vs the unfused head ({best['tokens']} tokens x {best['vocab']} vocab, "
             f"{best['dtype'].removeprefix('torch.')}, {best['impl'].split(', ')[-1]})",
             f"{best['memory vs unfused']:.2f}× the peak memory, {best['time vs unfused']:.2f}× the time")]


@section("kernels", TABLES, headlines)
def bench_kernels(ctx: BenchContext) -> dict:
    """Vector add GB/s (every config of ours, torch.add, copy) at 2^20..2^28 floats; fused add+RMSNorm against
    the eager chain, fwd+bwd; chunked linear cross-entropy peak memory and time against the unfused head."""
    try:                     # importing frugal.kernels switches Triton to its interpreter where there is no GPU
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
