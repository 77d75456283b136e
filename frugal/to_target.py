"""What a model of a given quality costs: train a plan until its validation loss reaches a target, and
price the time it took. The money is the steps' wall time (evaluations left out) x price per hour x GPUs.

naive_and_recipe gives lesson 07's two plans (frugal.recipe.named_plans) on the same data, batch, sequence
length and learning rate, so the loss per step is alike and only the cost of a step differs. plan_race picks
them for a memory budget instead: the largest model size the recipe fits (up to a size you will wait for), and
the fastest recipe that fits it (recompute only where the memory needs it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from frugal.model import GPTConfig, TinyGPT
from frugal.recipe import count_params, estimate_training_bytes, named_plans, naive_plan, size_family
from frugal.train import TrainConfig, TrainResult, train


@dataclass
class TargetRun:
    """One plan trained towards a target validation loss."""
    name: str
    plan: TrainConfig
    target: float                        # validation loss aimed at, nats per token
    price_per_hour: float                # US$ per device-hour
    reached: bool                        # the target was met before plan.steps (the step cap)
    steps: int                           # optimizer steps taken
    train_time_s: float                  # wall time of those steps (what is paid for)
    eval_time_s: float                   # wall time of the evaluations, apart
    dollars: float                       # train_time_s x price x world_size
    final_val_loss: float
    curve: list[dict] = field(default_factory=list)   # per evaluation: step, tokens, seconds, dollars, val_loss

    def summary(self) -> dict:
        """The run as one table row."""
        return {"plan": self.name, "reached": self.reached, "steps": self.steps, "seconds": self.train_time_s,
                "dollars": self.dollars, "final_val_loss": self.final_val_loss, "target": self.target,
                "eval_seconds": self.eval_time_s, "price_per_hour": self.price_per_hour}


def _curve(result: TrainResult, dollars_per_s: float) -> list[dict]:
    """Each evaluation with the steps' time and money spent before it."""
    times = result.column("time_s")
    tokens_per_step = result.config.batch_size * result.config.seq_len
    out = []
    for step, loss in result.val_loss:
        seconds = math.fsum(times[:step])
        out.append({"step": step, "tokens": step * tokens_per_step, "seconds": seconds,
                    "dollars": seconds * dollars_per_s, "val_loss": loss})
    return out


def train_to_target(model_cfg: GPTConfig | TinyGPT, plan: TrainConfig, price_per_hour: float, target_loss: float,
                    name: str = "plan") -> TargetRun:
    """Train plan until its validation loss is at or below target_loss (checked every plan.eval_every steps,
    at most plan.steps steps) and price the steps at price_per_hour per device."""
    if not (isinstance(price_per_hour, (int, float)) and 0 <= price_per_hour < math.inf):
        raise ValueError(f"price_per_hour={price_per_hour!r}: US$ per device-hour, a number >= 0 (an H100 rents "
                         f"for about 2-4; this machine costs what you decide)")
    if not (isinstance(target_loss, (int, float)) and target_loss > 0):
        raise ValueError(f"target_loss={target_loss!r}: a validation loss in nats per token, e.g. 2.0")
    if not plan.eval_every:
        raise ValueError("the target is checked at evaluations: give the plan eval_every > 0, e.g. eval_every=25")
    result = train(model_cfg, replace(plan, target_loss=target_loss))
    dollars_per_s = price_per_hour * plan.world_size / 3600
    final = result.val_loss[-1][1]
    return TargetRun(name, plan, target_loss, price_per_hour, final <= target_loss, len(result.history),
                     result.train_time_s, result.eval_time_s, result.train_time_s * dollars_per_s, final,
                     _curve(result, dollars_per_s))


def naive_and_recipe(**shared) -> dict[str, TrainConfig]:
    """Lesson 07's naive fp32 plan and the full recipe on one device, with the same `shared` TrainConfig
    fields (data, steps, batch_size, seq_len, lr, eval_every, ...)."""
    plans = named_plans()
    return {name: replace(plans[name], **shared) for name in ("naive fp32 Adam", "full recipe")}


def compare_to_target(model_cfg: GPTConfig, plans: dict[str, TrainConfig], price_per_hour: float,
                      target_loss: float) -> dict[str, TargetRun]:
    """train_to_target for each named plan, same model, price and target."""
    return {name: train_to_target(model_cfg, plan, price_per_hour, target_loss, name) for name, plan in plans.items()}


def dollars_to(run: TargetRun, loss: float) -> float | None:
    """US$ the run had spent at its first evaluation at or below loss; None if it never got there."""
    return next((p["dollars"] for p in run.curve if p["val_loss"] <= loss), None)


def savings(runs: dict[str, TargetRun], baseline: str = "naive fp32 Adam") -> dict[str, float | None]:
    """baseline's dollars over each plan's (2.0: half the money), None where either missed the target."""
    base = runs.get(baseline)
    if base is None:                          # the baseline did not fit the memory: nothing to compare with
        return {n: None for n in runs}
    return {n: (base.dollars / r.dollars if base.reached and r.reached and r.dollars > 0 else None)
            for n, r in runs.items()}


# ----------------------------------------------------------------------------- a race picked for a memory budget

@dataclass
class Race:
    """Lesson 07's capstone race, picked for one memory budget: one model, both plans, and why."""
    model: GPTConfig
    plans: dict[str, TrainConfig]        # 'naive fp32 Adam' (absent when it does not fit) and 'full recipe'
    estimated_bytes: dict[str, float]    # each plan's estimated peak bytes for this model, naive's included
    budget_bytes: float
    reasons: list[str] = field(default_factory=list)   # one line per choice, for the learner


def recipe_ladder(on_gpu: bool) -> list[dict]:
    """The recipe's rungs, fastest first: bf16, then bf16 with full recompute (a third more compute for most of
    the activations). On a GPU both use the fused head (no logits tensor, and faster there: lesson 06); a CPU
    runs it through Triton's interpreter, far too slow, so it stays off."""
    fused = dict(fused_cross_entropy=True) if on_gpu else {}
    return [dict(precision="bf16", recompute="none", **fused), dict(precision="bf16", recompute="full", **fused)]


def plan_race(budget_bytes: float, max_params: int, on_gpu: bool, vocab_size: int = 256,
              **shared) -> Race:
    """The largest size of recipe.size_family (byte tokens by default) with at most max_params parameters that
    the recipe fits in budget_bytes, the fastest rung of recipe_ladder that fits it, and naive fp32 on the same
    model where it fits too. `shared`: TrainConfig fields of both plans (batch_size, seq_len, data, lr, ...)."""
    if not (isinstance(budget_bytes, (int, float)) and 0 < budget_bytes < math.inf):
        raise ValueError(f"budget_bytes={budget_bytes!r}: the device's memory in bytes, e.g. 16e9 for a T4")
    batch, seq = shared.get("batch_size", TrainConfig.batch_size), shared.get("seq_len", TrainConfig.seq_len)
    family = [c for c in size_family(vocab_size, seq) if count_params(c) <= max_params]
    if not family:
        smallest = count_params(size_family(vocab_size, seq)[0])
        raise ValueError(f"max_params={max_params:,}: the smallest size has {smallest:,} parameters; raise it")
    ladder = [replace(TrainConfig(**shared), **rung) for rung in recipe_ladder(on_gpu)]
    need = lambda cfg, plan: sum(estimate_training_bytes(cfg, plan, batch, seq).values())
    for cfg in reversed(family):                                    # largest first
        recipe = next((p for p in ladder if need(cfg, p) <= budget_bytes), None)
        if recipe is not None:
            break
    else:
        raise ValueError(f"no size fits {budget_bytes / 1e9:.3g} GB at batch {batch} x {seq} tokens even with "
                         f"full recompute: lower batch_size or seq_len, or pick a GPU with more memory")
    naive = replace(naive_plan(), **shared)
    estimated = {"naive fp32 Adam": need(cfg, naive), "full recipe": need(cfg, recipe)}
    size = f"{cfg.n_layer} x {cfg.n_embd} ({count_params(cfg) / 1e6:.2f}M parameters)"
    capped = "the largest up to max_params" if cfg is family[-1] else "the largest the memory allows"
    reasons = [f"model {size}: {capped}",
               f"recipe: {recipe.precision}, recompute={recipe.recompute}, fused head "
               f"{'on' if recipe.fused_cross_entropy else 'off'}; needs {estimated['full recipe'] / 1e9:.3g} GB "
               f"of {budget_bytes / 1e9:.3g}" + ("" if recipe.recompute == "none" else
                                               " (without recompute it would not fit)")]
    plans = {"full recipe": recipe}
    if estimated["naive fp32 Adam"] <= budget_bytes:
        plans = {"naive fp32 Adam": naive, **plans}
        reasons.append(f"naive fp32 fits this model too ({estimated['naive fp32 Adam'] / 1e9:.3g} GB): both race")
    else:
        reasons.append(f"naive fp32 needs {estimated['naive fp32 Adam'] / 1e9:.3g} GB: it cannot train this model "
                       f"here, so only the recipe runs")
    return Race(cfg, plans, estimated, budget_bytes, reasons)
