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
        Column("GPU GB/s", "GPU GB/s", "GB/s"), Column("GPU vs torch.add", "GPU vs torch.add", "x"),
        Column("best of ours", "best of ours")],
        where=_PART("vector add"), note="GB/s: bytes read + written over the time of one call from an idle GPU; "
                                        "GPU GB/s: 10 calls replayed from a CUDA graph. A copy is the roofline."),
    Table("Launch cost on the host, vector add of 4096 floats", [
        Column("impl", "launched by"), Column("host µs", "host µs per call", "ms"),
        Column("spread µs", "spread (µs)", "ms")],
        where=_PART("launch"), note="Python's time per call, back to back: what an idle GPU waits before a short "
                                    "kernel starts."),
    Table("Residual add + RMSNorm, forward + backward", [
        Column("shape", "shape"), Column("impl", "implementation"), Column("fwd+bwd ms", "time (ms)", "ms"),
        Column("GPU ms", "GPU time (ms)", "ms"), Column("bytes moved", "moved (GB)", "GB"), Column("kernels", "kernels"),
        Column("GB/s", "GB/s", "GB/s"), Column("speedup vs eager", "vs eager chain", "x"),
        Column("vs add + F.rms_norm", "vs add + F.rms_norm", "x")],
        where=_PART("add+rmsnorm fwd+bwd"), note="time: one call from Python, the GPU idle before it; GPU time: "
                                                 "the same step replayed from a CUDA graph (the kernels alone)."),
    Table("Linear + cross-entropy head, forward + backward", [
        Column("tokens", "tokens", "int"), Column("vocab", "vocab", "int"), Column("n_embd", "n_embd"),
        Column("dtype", "dtype"), Column("impl", "implementation"), Column("fwd+bwd ms", "time (ms)", "ms"),
        Column("peak bytes (measured)", "peak, measured (GB)", "GB"),          # runs before the two below
        Column("peak bytes (estimated)", "peak, estimated (GB)", "GB"),
        Column("peak above inputs (measured)", "peak above inputs, measured (GB)", "GB"),
        Column("peak above gradients (measured)", "of it, above the gradients (GB)", "GB"),
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


def short_name(impl: str) -> str | None:
    """A head's bar label in the figures, or None for rows left out of them (other chunk sizes; the tiled head's
    Triton backward, many times slower than the rest, which would flatten every other bar)."""
    if impl.startswith("chunked (ours)"):
        return None if impl.endswith(("=512", "=8192")) else "ours chunked"
    names = {"unfused head": "eager", "eager, torch.compile": "compiled",
             "tiled (ours), vocab_chunk=2048": "ours tiled", "tiled (ours), Triton backward": None}
    if impl in names:
        return names[impl]
    return impl.split(" ")[0] if impl.startswith("Liger") else "CCE" if impl.startswith("Cut") else impl


def _kernel_headlines(rows: list[dict]) -> list[tuple[str, str]]:
    """The vector-add rule against torch.add at the largest size; ours against each other add+RMSNorm per shape."""
    out = []
    rule = [r for r in rows if r.get("part") == "vector add" and r.get("impl") == "ours, the rule"]
    if rule:
        r = max(rule, key=lambda r: r["n"])
        gpu = f", GPU {r['GPU vs torch.add']:.3f}x" if "GPU vs torch.add" in r else ""
        out.append((f"vector add of 2^{r['n'].bit_length() - 1} floats, the rule ({r['config']}) vs torch.add",
                    f"{r['vs torch.add']:.3f}x from idle{gpu}"))
    norm = [r for r in rows if r.get("part") == "add+rmsnorm fwd+bwd"]
    for shape in dict.fromkeys(r["shape"] for r in norm):
        same = {r["impl"]: r for r in norm if r["shape"] == shape}
        ours = same.get("fused (ours)")
        if ours:
            fmt = lambda r: f"{r['fwd+bwd ms']:.3f}" + (f" (GPU {r['GPU ms']:.3f})" if r.get("GPU ms") else "")
            others = [k for k in same if k not in ("fused (ours)", "eager chain")]
            out.append((f"residual add + RMSNorm {shape}, fwd+bwd ms: ours vs " + ", ".join(others),
                        f"{fmt(ours)} vs " + ", ".join(fmt(same[k]) for k in others)))
    return out


def headlines(rows: list[dict]) -> list[tuple[str, str]]:
    """The kernels' headlines, then per head shape (bf16 where measured): the fastest of ours against the fastest
    of the others."""
    ce = [r for r in rows if r.get("part") == "linear cross-entropy fwd+bwd"]
    keys = list(dict.fromkeys((r["tokens"], r["n_embd"], r["vocab"], r["dtype"]) for r in ce))
    keys = [k for k in keys if k[3] == "torch.bfloat16"] or keys
    out = _kernel_headlines(rows)
    for key in keys:
        same = [r for r in ce if (r["tokens"], r["n_embd"], r["vocab"], r["dtype"]) == key]
        ours = [r for r in same if "(ours)" in r["impl"]]
        others = [r for r in same if "(ours)" not in r["impl"]]
        if ours and others:
            best, rival = min(ours, key=lambda r: r["fwd+bwd ms"]), min(others, key=lambda r: r["fwd+bwd ms"])
            out.append((f"linear + cross-entropy head {key[0]}x{key[1]}x{key[2]} (tokens x width x vocab), "
                        f"{key[3].removeprefix('torch.')}, fwd+bwd: fastest of ours vs fastest other",
                        f"{best['impl'].replace(' (ours)', '')} {best['fwd+bwd ms']:.2f} ms vs "
                        f"{rival['impl']} {rival['fwd+bwd ms']:.2f} ms"))
    return out


@section("kernels", TABLES, headlines)
def bench_kernels(ctx: BenchContext) -> dict:
    """Vector add GB/s (the rule's config and every other of ours, torch.add, copy) at 2^20..2^28 floats; fused
    add+RMSNorm against the eager chain, torch's F.rms_norm and torch's add + Liger-Kernel's RMSNorm, fwd+bwd;
    linear cross-entropy heads (ours chunked and tiled, eager, compiled, Liger-Kernel and Cut Cross-Entropy
    where installed): time and peak memory."""
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
        for r in add_rows:
            if r["n"] == n and r["impl"] != "copy":
                r["vs torch.add"] = r["GB/s"] / torch_add["GB/s"]
                if "GPU GB/s" in r:
                    r["GPU vs torch.add"] = r["GPU GB/s"] / torch_add["GPU GB/s"]
    for r in add_rows:
        rows.append({"part": "vector add", **r, "best of ours": r is best.get(r["n"])})
    series = {"ours (best config per size)": (sizes, [best[n]["GB/s"] for n in sizes])}
    for impl in ("torch.add", "copy"):
        series[impl] = (sizes, [r["GB/s"] for r in add_rows if r["impl"] == impl])
    figures["vector_add"] = plots.bandwidth_vs_size(series, title=f"Vector add, {ctx.slug}"
                                                    + ("" if on_gpu else " (Triton interpreter)"))

    if on_gpu:
        rows += [{"part": "launch", **r} for r in va.benchmark_launch(ctx.device, calls=2000 if big else 50)]

    shapes = [(8192, 768), (16384, 4096)] if big else [(64, 128)]
    fused_rows = frms.benchmark_add_rmsnorm(shapes, ctx.device, repeats=20 if big else 2,
                                            extra=frms.peer_rms_norms() if on_gpu else None)
    for r in fused_rows:
        torch_rms = next(t for t in fused_rows if t["shape"] == r["shape"] and t["impl"] == "add + F.rms_norm")
        r["vs add + F.rms_norm"] = torch_rms["fwd+bwd ms"] / r["fwd+bwd ms"]
    rows += [{"part": "add+rmsnorm fwd+bwd", **r} for r in fused_rows]
    last = [r for r in fused_rows if r["shape"] == f"{shapes[-1][0]}x{shapes[-1][1]}" and r["bytes moved"]]
    figures["fused"] = plots.fused_vs_unfused({r["impl"]: r["fwd+bwd ms"] for r in last},
                                              {r["impl"]: r["bytes moved"] for r in last},
                                              title=f"Residual add + RMSNorm {last[0]['shape']}, fwd+bwd, {ctx.slug}")

    if big:                  # GPT-2's head and Llama 3's, bf16; GPT-2's in fp32 too (ours against eager only)
        ce_cases = [(8192, 50304, 768, torch.bfloat16), (8192, 128256, 4096, torch.bfloat16),
                    (8192, 50304, 768, torch.float32)]
        chunks = (None, 512, 8192)
    else:
        ce_cases, chunks = [(128, 50304 if on_gpu else 512, 32, torch.float32)], (None, 32)
    ce_figure = {}
    for n_tok, vocab, n_embd, dtype in ce_cases:
        extra = {}
        if on_gpu:           # the interpreter runs tiles far too slowly to time them on a CPU
            from frugal.kernels.linear_cross_entropy_tiled import linear_cross_entropy_tiled as tiled
            extra = {"tiled (ours), Triton backward": tiled,
                     "tiled (ours), vocab_chunk=2048": lambda h, w, t: tiled(h, w, t, vocab_chunk=2048),
                     "eager, torch.compile": torch.compile(fce.linear_cross_entropy_reference)}
            if dtype == torch.bfloat16:
                extra.update(peer_linear_cross_entropies())
        ce = fce.benchmark_linear_cross_entropy(n_tok, vocab, n_embd, ctx.device, dtype, chunks,
                                                repeats=10 if big else 2, extra=extra)
        rows += [{"part": "linear cross-entropy fwd+bwd", **r} for r in ce]
        if dtype == torch.bfloat16 and on_gpu:
            ce_figure[f"{n_tok}x{n_embd}x{vocab}"] = ce
    for shape, ce in ce_figure.items():
        shown = {short: r for r in ce if (short := short_name(r["impl"]))}
        fig = plots.fused_vs_unfused({k: r["fwd+bwd ms"] for k, r in shown.items()},
                                     {k: r["peak above inputs (measured)"] for k, r in shown.items()},
                                     title=f"Linear + cross-entropy {shape} (tokens x width x vocab), bf16, "
                                           f"fwd+bwd, {ctx.slug}")
        fig.axes[1].set_ylabel("MiB above the inputs")     # this panel shows peak memory, not bytes moved
        fig.axes[1].set_title("peak memory")
        figures[f"cross_entropy_{shape}"] = fig
    n_tok, vocab, n_embd, _ = ce_cases[0]
    vocabs, tokens = [2 ** k for k in range(10, 18)], [2 ** k for k in range(9, 17)]
    est = fce.estimate_linear_cross_entropy_memory
    chunk = lambda t, v: fce.default_chunk_size(t, v)
    figures["cross_entropy_memory"] = plots.cross_entropy_memory(
        {"unfused (estimate)": (vocabs, [est(n_tok, v, n_embd, None) for v in vocabs]),
         "chunked (estimate)": (vocabs, [est(n_tok, v, n_embd, chunk(n_tok, v)) for v in vocabs])},
        {"unfused (estimate)": (tokens, [est(t, vocab, n_embd, None) for t in tokens]),
         "chunked (estimate)": (tokens, [est(t, vocab, n_embd, chunk(t, vocab)) for t in tokens])},
        title=f"Head peak memory, n_embd={n_embd}, fp32 (left: {n_tok} tokens; right: vocab {vocab})")
    return {"rows": rows, "figures": figures}
