"""Lesson 07's exercise: the TrainConfig that fits a memory budget, judged by the estimator and by a real run."""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from frugal.exercises._core import Exercise, Mismatch, attempt, expect
from frugal.measure import measure_activation_bytes
from frugal.model import preset
from frugal.recipe import estimate_recipe
from frugal.train import TrainConfig, autocast, build, make_scaler, train_step


def plan_for_budget(memory_bytes, model_cfg, batch, seq):
    """The cheapest TrainConfig whose estimated bytes fit memory_bytes: bf16 first, then recompute, then the fused loss."""
    plans = [dict(precision="fp32"), dict(precision="bf16"),                       # each saves more, costs more
             dict(precision="bf16", recompute="selective"), dict(precision="bf16", recompute="full"),
             dict(precision="bf16", recompute="full", fused_cross_entropy=True)]
    for plan in plans:
        cfg = TrainConfig(batch_size=batch, seq_len=seq, **plan)
        if estimate_recipe(model_cfg, cfg)["total_bytes"] <= memory_bytes:
            return cfg
    raise ValueError(f"{memory_bytes:,} bytes cannot train this model at batch {batch}: shard it over more GPUs "
                     f"(ZeRO-3) or lower the batch")


# (budget in bytes, batch, seq) on the 'tiny' TinyGPT: plain fp32 fits, then bf16 is needed, then recompute too.
# (The fused loss, which the smallest budgets need, runs through Triton's interpreter on a CPU: too slow to check.)
BUDGETS = [(10_000_000, 8, 64), (6_500_000, 8, 64), (4_500_000, 8, 64)]


def counted_bytes(model_cfg, cfg: TrainConfig) -> tuple[int, float]:
    """(bytes, last loss) of two real CPU steps through frugal.train: weights, gradients, Adam's states, and the
    tensors one forward saves for backward, counted (transient buffers are not: a CPU has no allocator cap)."""
    run = replace(cfg, steps=2, progress=False, device="cpu")
    model, optimizer, next_batch, device = build(model_cfg, run)
    scaler = make_scaler(run, device)
    for _ in range(run.steps):
        loss = train_step(model, optimizer, *next_batch(), run, scaler)
    x, y = next_batch()
    with autocast(run, device):
        saved = measure_activation_bytes(model, x, y)
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return 2 * nbytes(model.parameters()) + nbytes(states) + saved, loss.item()   # 2 x: weights and gradients


def check_plan_for_budget(candidate) -> str:
    model_cfg = preset("tiny")
    notes = []
    for budget, batch, seq in BUDGETS:
        inp = f"plan_for_budget({budget:,}, preset('tiny'), batch={batch}, seq={seq})"
        cfg = attempt(candidate, budget, model_cfg, batch, seq, input=inp)
        expect(isinstance(cfg, TrainConfig), f"it returned {type(cfg).__name__}, not a frugal.train.TrainConfig",
               input=inp, hint="return TrainConfig(batch_size=batch, seq_len=seq, precision=..., recompute=...)")
        expect((cfg.batch_size, cfg.seq_len) == (batch, seq), "it changed the batch or the sequence length",
               input=inp, expected=f"batch_size={batch}, seq_len={seq}", got=f"batch_size={cfg.batch_size}, "
               f"seq_len={cfg.seq_len}", hint="the plan must train what was asked: save memory with precision, "
                                             "recompute and the fused loss instead")
        expect(cfg.world_size == 1 and cfg.compile == "none", "the budget is one device's, trained eagerly",
               input=inp, got=f"world_size={cfg.world_size}, compile={cfg.compile!r}",
               hint="leave world_size=1 and compile='none'")
        estimate = estimate_recipe(model_cfg, cfg)
        plan = f"precision={cfg.precision!r}, recompute={cfg.recompute!r}, fused_cross_entropy={cfg.fused_cross_entropy}"
        if estimate["total_bytes"] > budget:
            by_kind = ", ".join(f"{k} {v:,.0f}" for k, v in estimate["bytes"].items())
            raise Mismatch("the estimator says it does not fit", input=inp,
                           expected=f"at most {budget:,} bytes", got=f"{estimate['total_bytes']:,.0f} bytes ({plan}: "
                                                                     f"{by_kind})",
                           hint="bf16 halves the activations, recompute keeps only each block's input, the fused "
                                "loss drops the logits: frugal.recipe.estimate_recipe(model_cfg, cfg) tells")
        if cfg.recompute != "none":
            plain = replace(cfg, recompute="none")
            expect(estimate_recipe(model_cfg, plain)["total_bytes"] > budget,
                   "it recomputes although the same plan without recompute fits", input=inp, got=plan,
                   hint="recompute costs another forward of every checkpointed block: pay it only when the memory "
                        "is needed")
        measured, loss = counted_bytes(model_cfg, cfg)
        expect(measured <= budget and math.isfinite(loss), "a real run of two steps does not fit or does not train",
               input=inp, expected=f"at most {budget:,} bytes and a finite loss",
               got=f"{measured:,} bytes counted, loss {loss:.4g} ({plan})",
               hint="leave more room under the budget than the estimate's")
        notes.append(f"{budget / 1e6:g} MB: {cfg.precision}/{cfg.recompute} counted {measured / 1e6:.2f} MB")
    return "; ".join(notes)


EXERCISES = [
    Exercise("plan_for_budget", "07_frugal_recipe", "plan_for_budget(memory_bytes, model_cfg, batch, seq) -> TrainConfig",
             check_plan_for_budget, plan_for_budget,
             ("Start from the plain fp32 TrainConfig and ask frugal.recipe.estimate_recipe how many bytes it needs.",
              "Try plans from the cheapest in compute to the most frugal: fp32, bf16, bf16 + selective recompute, "
              "bf16 + full recompute, then the fused cross-entropy; return the first that fits.",
              "for plan in [...]: cfg = TrainConfig(batch_size=batch, seq_len=seq, **plan); if "
              "estimate_recipe(model_cfg, cfg)['total_bytes'] <= memory_bytes: return cfg"),
             needs="from frugal.recipe import estimate_recipe\nfrom frugal.train import TrainConfig"),
]
