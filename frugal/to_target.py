"""What a model of a given quality costs: train a plan until its validation loss reaches a target, and
price the time it took. The money is the steps' wall time (evaluations left out) x price per hour x GPUs.

naive_and_recipe gives lesson 07's two plans (frugal.recipe.named_plans) on the same data, batch, sequence
length and learning rate, so the loss per step is alike and only the cost of a step differs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from frugal.model import GPTConfig, TinyGPT
from frugal.recipe import named_plans
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
    base = runs[baseline]
    return {n: (base.dollars / r.dollars if base.reached and r.reached and r.dollars > 0 else None)
            for n, r in runs.items()}
