"""Headline claims about cheap training, each set against what frugal measures or counts.

Every claim gets findings: a counted quantity (true on any device), the committed GPU result (results/, with its
device and date) and, where a lesson passes one, the learner's own live measurement. Each finding carries a
verdict computed from its number, never written by hand: 'holds', 'partly', 'does not hold here' or
'outside the range', and why it may differ.

    claims.show("02_activation_checkpointing", saved_none=..., saved_full=...)   # in a lesson
    claims.table()                                                               # every claim (lesson 07)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from frugal import estimate, results
from frugal.units import human_bytes, human_count

CPU_TIMING = "a CPU has no tensor cores and its step times are noisy: the GPU row is the evidence"


@dataclass(frozen=True)
class Claim:
    lesson: str                                   # the notebook that tests it, e.g. '01_mixed_precision'
    about: str                                    # the technique, e.g. 'mixed precision'
    says: str                                     # the claim as it is quoted
    against: str                                  # what its figure is measured against, as far as it says
    findings: Callable[[dict, object], list[dict]]   # (live measurements, results dir) -> findings


def _finding(where: str, measured: str, value: float | None, claimed: float, kind: str, why: str = "") -> dict:
    """One row: where it was measured, the figure in words, and the verdict of value against claimed.
    kind: 'up to' (a best case: within 15% holds, half of it is partly), 'at least', or 'range' (claimed is a
    (low, high) pair)."""
    if value is None:
        verdict = "not measured here"
    elif kind == "range":
        low, high = claimed
        verdict = "holds" if low <= value <= high else "outside the range"
    elif kind == "at least":
        verdict = "holds" if value >= claimed else "close" if value >= 0.8 * claimed else "does not hold here"
    else:
        verdict = "holds" if value >= 0.85 * claimed else "partly" if value >= 0.5 * claimed else \
            "does not hold here"
    return {"where": where, "measured": measured, "verdict": verdict, "why": why}


def _llama2_flops(live: dict, where=None) -> list[dict]:
    n, d = 70e9, 2e12                                          # Llama 2 70B: parameters, training tokens
    six_nd = estimate.training_flops(n, d)
    attention = 12 * 80 * 8192 * 4096 * d                      # 12·L·d·T per token: L=80, d=8192, T=4096
    return [_finding("counted (any device)", f"6ND = {six_nd:.2g} FLOPs; {six_nd + attention:.2g} with attention",
                     six_nd + attention, 1e24, "at least",
                     "6ND counts the matmuls only; attention's 12·L·d·T per token adds 8%")]


def _mixed_precision(live: dict, where=None) -> list[dict]:
    out = []
    run = results.newest("precision", where)
    if run:
        fp32, tf32, bf16 = (run.row(setting=s) for s in ("fp32", "tf32", "bf16"))
        if fp32 and bf16:
            x = fp32["step_ms"] / bf16["step_ms"]
            vs_tf32 = f"; {tf32['step_ms'] / bf16['step_ms']:.1f}x against tf32" if tf32 else ""
            out.append(_finding(run.label, f"bf16 step {x:.1f}x faster than fp32 ({fp32['model']}){vs_tf32}", x, 6,
                                "up to", "it holds against fp32 with TF32 off (PyTorch's default for matmuls; "
                                "data sheet 989 vs 67 TFLOP/s on an H100); with TF32 on, far less"))
    if "fp32_ms" in live and "bf16_ms" in live:
        x = live["fp32_ms"] / live["bf16_ms"]
        out.append(_finding("this machine", f"bf16 step {x:.2f}x the speed of fp32", x, 6, "up to", CPU_TIMING))
    return out


def _checkpointing(live: dict, where=None) -> list[dict]:
    out = []
    run = results.newest("checkpointing", where)
    if run and run.row(policy="none"):
        none = run.row(policy="none")
        for policy in ("full", "selective"):
            r = run.row(policy=policy, impl="frugal")
            if r is None:
                continue
            less = 1 - r["saved_bytes"] / none["saved_bytes"]
            more = r["step_s"] / none["step_s"] - 1
            out.append(_finding(run.label, f"{policy}: {less:.0%} less saved for backward", less, 0.7, "up to",
                                "what recompute never drops stays: each block's input, and the logits (tokens x "
                                "vocabulary) of the loss" if policy == "full" else
                                "selective keeps the matmul outputs, costly to recompute, and drops the rest"))
            out.append(_finding(run.label, f"{policy}: {more:+.0%} step time", more, (0.15, 0.25), "range",
                                "full recompute reruns every block's forward: at most a third more FLOPs (2N of "
                                "6N per token)" if policy == "full" else "selective reruns only cheap elementwise "
                                "work, so it costs less than the claim's range"))
    if "saved_none" in live and "saved_full" in live:
        less = 1 - live["saved_full"] / live["saved_none"]
        out.append(_finding("this machine (counted)", f"full: {less:.0%} less saved for backward "
                            f"({human_bytes(live['saved_none'])} -> {human_bytes(live['saved_full'])})", less, 0.7,
                            "up to", "bytes are counted, so this holds on any device; " + CPU_TIMING))
    return out


def _zero_models(live: dict, where=None) -> list[dict]:
    ratio = estimate.estimate_max_params(80, 3, 8) / estimate.estimate_max_params(80, 0, 1)
    out = [_finding("counted (any device)", f"ZeRO-3 over 8 GPUs holds {ratio:.0f}x the parameters of data "
                    f"parallel in the same memory (states only)", ratio, 10, "up to",
                    "16 bytes per parameter shared by N ranks gives N x; the rest is activations")]
    run = results.newest("zero", where)
    if run:
        ddp = [r for r in run.rows if str(r.get("plan", "")).endswith("ddp") and r.get("peak_bytes_measured")]
        z3 = [r for r in run.rows if str(r.get("plan", "")).endswith("zero3") and r.get("peak_bytes_measured")]
        if ddp and z3:
            x = max(r["n_params"] for r in z3) / max(r["n_params"] for r in ddp)
            out.append(_finding(run.label, f"under one cap, ZeRO-3 trained {human_count(max(r['n_params'] for r in z3))}"
                                f" parameters, DDP {human_count(max(r['n_params'] for r in ddp))}: {x:.1f}x", x, 10,
                                "up to", "on 2 GPUs the states shrink at most 2x; 10x needs many more ranks"))
    return out


def _throughput(plan: str, base: str, claimed: tuple, why: str) -> Callable[[dict], list[dict]]:
    def findings(live: dict, where=None) -> list[dict]:
        run = results.newest("zero", where)
        a, b = (run.row(plan=plan), run.row(plan=base)) if run else (None, None)
        if not (a and b):
            return [_finding("no committed run", "-", None, claimed, "range")]
        change = a["tokens_per_s"] / b["tokens_per_s"] - 1
        return [_finding(run.label, f"{plan} {change:+.0%} tokens/s against {base} ({a['model']})", change,
                         claimed, "range", why)]
    return findings


def _fused_kernels(live: dict, where=None) -> list[dict]:
    run = results.newest("recipe", where)
    out = []
    if run:
        plain = run.row(recipe="plain bf16 B32")
        for name in ("fused CE B32", "compile blocks + fused CE B32"):
            r = run.row(recipe=name)
            if plain and r:
                speed = r["tokens_per_s"] / plain["tokens_per_s"]
                less = 1 - r["peak_memory_bytes"] / plain["peak_memory_bytes"]
                out.append(_finding(run.label, f"{name}: {speed:.2f}x speed", speed, 30, "up to",
                                    "30x compares against a slow baseline (eager, unfused, often other "
                                    "precisions); against torch's own bf16 kernels a fused loss buys memory "
                                    "first, and time only from not writing the logits"))
                out.append(_finding(run.label, f"{name}: {less:.0%} less peak memory", less, 0.6, "up to",
                                    "the (tokens x vocabulary) logits are the largest tensor of a small model"))
    return out


CLAIMS = [
    Claim("00_gpu_economics", "compute", "Llama 2 70B took at least 10^24 FLOPs to train",
          "the FLOPs of its 2 trillion training tokens", _llama2_flops),
    Claim("01_mixed_precision", "mixed precision", "up to 6x faster on GPUs",
          "the same model trained in fp32", _mixed_precision),
    Claim("02_activation_checkpointing", "activation checkpointing", "up to 70% less memory for 15-25% more time",
          "the same model keeping every activation", _checkpointing),
    Claim("04_sharding", "ZeRO (DeepSpeed)", "up to 10x larger models",
          "plain data parallel in the same GPU memory", _zero_models),
    Claim("04_sharding", "FSDP", "+15-20% throughput", "its baseline is not stated; measured here against DDP",
          _throughput("FSDP", "DDP", (0.15, 0.20), "FSDP gathers every block's weights each step; at 2 GPUs "
                      "and GPT-2 small nothing needs sharding, so it only pays the gathers")),
    Claim("04_sharding", "YaFSDP", "+10-25% throughput", "FSDP on the same model; here our ZeRO-3 against FSDP2",
          _throughput("stage 3", "FSDP", (0.10, 0.25), "our ZeRO-3 gathers flat buffers per block, as YaFSDP "
                      "does; FSDP2 shards each parameter apart and copies them in and out of its gather buffer")),
    Claim("06_triton_kernels", "fused Triton kernels", "30x faster with 60% less memory",
          "a model's training without them", _fused_kernels),
]


def table(lesson: str | None = None, results_dir=None, **live) -> list[dict]:
    """Every claim's findings as rows (lesson, about, says, against, where, measured, verdict, why); only one
    lesson's with `lesson`; `live` passes this machine's measurements to the claims that use them; results_dir
    defaults to the repository's results/."""
    names = {c.lesson for c in CLAIMS}
    if lesson is not None and lesson not in names:
        raise ValueError(f"lesson={lesson!r}: claims belong to {sorted(names)}")
    rows = []
    for c in CLAIMS:
        if lesson is None or c.lesson == lesson:
            found = c.findings(live, results_dir) or [_finding("no committed run", "-", None, 0, "up to")]
            rows += [{"lesson": c.lesson, "about": c.about, "says": c.says, "against": c.against, **f} for f in found]
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table, one line per finding."""
    lines = ["| claim | measured against | where | measured | verdict | why it may differ |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['about']}: \"{r['says']}\" | {r['against']} | {r['where']} | {r['measured']} | "
                     f"**{r['verdict']}** | {r['why']} |")
    return "\n".join(lines)


def show(lesson: str | None = None, results_dir=None, **live) -> list[dict]:
    """Display a lesson's claims (every claim without one) as a table in a notebook; returns the rows."""
    rows = table(lesson, results_dir, **live)
    try:
        from IPython.display import Markdown, display
        display(Markdown(markdown(rows)))
    except ImportError:                        # pragma: no cover - outside Jupyter, print the markdown
        print(markdown(rows))
    return rows
