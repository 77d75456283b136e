"""Does the cheap run learn as well as the expensive one? The final validation loss of each technique against
the fp32 baseline, every run the same TrainConfig but for one switch, at the same global batch.

Exact techniques compute the same function in another order (recompute, a chunked cross-entropy, gradients
averaged over ranks, sharded Adam): only fp32 rounding differs, and training carries those last bits forward,
so they must agree within EXACT_REL_TOL. Mixed precision rounds matmul inputs to 8 (bf16) or 11 (fp16) bits of
mantissa: it must agree within a looser tolerance, MIXED_REL_TOL, the figure lesson 01 promises.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from frugal.model import GPTConfig
from frugal.train import TrainConfig, TrainResult, train

# 40 steps of TinyGPT on the corpus (CPU): recompute is bit-identical, the chunked cross-entropy lands 2-2.5e-4
# and 2 ranks or ZeRO 3.5-5e-5 (relative) from fp32: rounding carried by Adam. 1e-3 keeps 4x room above that,
# and 10x below the mixed tolerance, so a real error (a gradient averaged wrongly, a step dropped) shows.
EXACT_REL_TOL = 1e-3
# On a GPU the same fp32 run twice lands apart (atomic adds sum in any order, and 1000 steps carry the bits
# forward): the noise floor is measured there, and an exact technique must sit within NOISE_SIGMAS of it.
NOISE_SIGMAS = 3
# The acceptance figure for a long run on a GPU: bf16 and fp16 + LossScaler within 1% of fp32's final loss.
MIXED_REL_TOL = 0.01


@dataclass
class Technique:
    """One row of the table: what it switches, and whether it is exact (same math) or mixed precision."""
    group: str                  # precision, recompute, cross-entropy, data parallel
    kind: str                   # 'exact' or 'mixed'
    overrides: dict             # TrainConfig fields that differ from the baseline


def techniques(world_size: int = 2) -> dict[str, Technique]:
    """Every row of the parity table by name; the first, 'fp32', is the baseline. tf32 counts as mixed:
    on a GPU it rounds matmul inputs to 10 bits (on a CPU it is fp32 itself)."""
    dp = lambda flavour: {"world_size": world_size, "data_parallel": flavour}
    return {
        "fp32": Technique("precision", "exact", {}),
        "tf32": Technique("precision", "mixed", {"precision": "tf32"}),
        "bf16": Technique("precision", "mixed", {"precision": "bf16"}),
        "fp16 + LossScaler": Technique("precision", "mixed", {"precision": "fp16", "scaler": "frugal"}),
        "recompute full": Technique("recompute", "exact", {"recompute": "full"}),
        "recompute selective": Technique("recompute", "exact", {"recompute": "selective"}),
        "fused cross-entropy": Technique("cross-entropy", "exact", {"fused_cross_entropy": True}),
        f"{world_size} ranks, bucketed all-reduce": Technique("data parallel", "exact", dp("bucket")),
        **{f"{world_size} ranks, ZeRO-{s}": Technique("data parallel", "exact", dp(f"zero{s}")) for s in (1, 2, 3)},
    }


def run_parity(model_cfg: GPTConfig, base: TrainConfig, names: list[str] | None = None,
               world_size: int = 2) -> dict[str, TrainResult]:
    """Train the baseline and each named technique (all by default) from the same seed on the same batches."""
    if not base.eval_every:
        raise ValueError("run_parity compares validation losses: give the base TrainConfig eval_every > 0")
    table = techniques(world_size)
    unknown = set(names or []) - set(table)
    if unknown:
        raise ValueError(f"unknown techniques {sorted(unknown)}: pick from {list(table)}")
    chosen = ["fp32"] + [n for n in (names or table) if n != "fp32"]
    return {n: train(model_cfg, replace(base, **{"precision": "fp32", **table[n].overrides})) for n in chosen}


def parity_table(results: dict[str, TrainResult], world_size: int = 2, exact_rel_tol: float = EXACT_REL_TOL,
                 mixed_rel_tol: float = MIXED_REL_TOL) -> list[dict]:
    """One row per technique: final validation loss, its difference from fp32's, the tolerance, and whether
    it is within it."""
    table = techniques(world_size)
    baseline = _final(results["fp32"])
    rows = []
    for name, r in results.items():
        t = table[name]
        rel = (_final(r) - baseline) / baseline
        tol = exact_rel_tol if t.kind == "exact" else mixed_rel_tol
        rows.append(_row(name, t, _final(r), baseline, rel, tol, r.train_time_s))
    return rows


def _final(result: TrainResult) -> float:
    """The validation loss at the end of the run."""
    return result.val_loss[-1][1]


def _row(name: str, t: Technique, loss: float, baseline: float, rel: float, tol: float, train_time_s: float) -> dict:
    return {"technique": name, "group": t.group, "kind": t.kind, "final_val_loss": loss,
            "diff_from_fp32": loss - baseline, "rel_diff": rel, "tolerance": tol, "within": abs(rel) <= tol,
            "train_time_s": train_time_s}


def curves(results: dict[str, TrainResult]) -> dict[str, list[tuple[int, float]]]:
    """Validation loss against tokens trained on, per run: what the overlay plot draws."""
    return {n: [(s * r.config.batch_size * r.config.seq_len, v) for s, v in r.val_loss] for n, r in results.items()}


def parity_over_seeds(model_cfg: GPTConfig, base: TrainConfig, names: list[str] | None = None,
                      seeds: tuple[int, ...] = (0, 1), world_size: int = 2) -> tuple[list[dict], dict]:
    """The table averaged over seeds, with its noise floor measured: fp32 trained twice on each seed.

    A row's rel_diff is the mean over seeds of its gap to that seed's fp32. 'fp32, again' is the rerun: its
    spread, sigma (the root mean square of its gaps), is how far two runs of the same math land apart, so an
    exact technique is within when |rel_diff| <= NOISE_SIGMAS * sigma / sqrt(len(seeds)), or EXACT_REL_TOL if
    larger (a CPU reruns bit for bit). Returns (rows, the first seed's results, for curves)."""
    if not seeds:
        raise ValueError("seeds=(): give at least one seed, e.g. seeds=(0, 1)")
    per_seed = []
    for seed in seeds:
        cfg = replace(base, seed=seed)
        results = run_parity(model_cfg, cfg, names, world_size)
        results["fp32, again"] = train(model_cfg, replace(cfg, precision="fp32"))
        per_seed.append(results)
    mean = lambda xs: sum(xs) / len(xs)
    finals = {name: [_final(r[name]) for r in per_seed] for name in per_seed[0]}
    gaps = {name: [(loss - fp32) / fp32 for loss, fp32 in zip(losses, finals["fp32"])]
            for name, losses in finals.items()}
    sigma = math.sqrt(mean([g * g for g in gaps["fp32, again"]]))
    exact_tol = max(EXACT_REL_TOL, NOISE_SIGMAS * sigma / math.sqrt(len(seeds)))
    table = {**techniques(world_size), "fp32, again": Technique("precision", "noise", {})}
    rows = []
    for name, g in gaps.items():
        t = table[name]
        tol = MIXED_REL_TOL if t.kind == "mixed" else exact_tol
        row = _row(name, t, mean(finals[name]), mean(finals["fp32"]), mean(g), tol,
                   mean([r[name].train_time_s for r in per_seed]))
        rows.append({**row, "rel_diffs": g, "seeds": len(seeds), "noise_sigma": sigma})
    return rows, per_seed[0]
