"""Held-out loss while training: a fixed set of validation batches, run without gradients every N steps.

Nats per token is the cross-entropy; with byte tokens one token is one byte, so bits per byte is nats / ln 2.
With world_size > 1 every rank evaluates its rows of each validation batch (as it trains on its rows of each
training batch) and the mean over ranks is the loss of the whole batch: ZeRO-3's weights are sharded, so
every rank must take part in the forward anyway.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from frugal import data
from frugal.dist import max_and_mean


def bits_per_byte(nats_per_token: float, bytes_per_token: float = 1.0) -> float:
    """Cross-entropy in bits per byte of text: nats / ln 2, divided by the bytes a token stands for."""
    return nats_per_token / math.log(2) / bytes_per_token


def check_data_fields(cfg) -> None:
    """TrainConfig's data and evaluation fields: a readable source, whole numbers, a target only with evaluations."""
    if cfg.data != "synthetic":
        data.check_source(cfg.data)                         # names the sources it can read
    for name, least in (("eval_every", 0), ("eval_batches", 1)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"TrainConfig.{name}={v!r}: must be a whole number >= {least}")
    if cfg.eval_every and cfg.data == "synthetic":
        raise ValueError("eval_every > 0 with data='synthetic': random tokens have nothing to hold out; "
                         "train on 'corpus', 'stdlib' or a folder, or set eval_every=0")
    if cfg.target_loss is not None and not (isinstance(cfg.target_loss, (int, float)) and cfg.target_loss > 0):
        raise ValueError(f"TrainConfig.target_loss={cfg.target_loss!r}: a positive loss in nats per token, or None")
    if cfg.target_loss is not None and not cfg.eval_every:
        raise ValueError(f"target_loss={cfg.target_loss}: the target is checked at evaluations; set eval_every, "
                         f"e.g. eval_every=25")


def validation_rows(cfg, rank: int = 0, device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """cfg.eval_batches fixed validation batches of cfg.data's held-out tail on device; with world_size > 1,
    rank's rows."""
    tokens = data.load_tokens(cfg.data, glob=cfg.data_glob, cache_dir=cfg.data_cache)
    _, val = data.split(tokens)
    batches = data.validation_batches(val, cfg.eval_batches, cfg.batch_size, cfg.seq_len)
    b = cfg.batch_size // cfg.world_size
    rows = lambda t: t[rank * b:(rank + 1) * b].to(device)                                  # (B / world, T)
    return [(rows(x), rows(y)) for x, y in batches]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple], loss_of: Callable, world_size: int = 1,
             show: bool = False) -> float:
    """Mean loss (nats per token) of loss_of(model, x, y) over batches (on the model's device), in eval mode
    and without gradients; the model goes back to the mode it was in. With world_size > 1, the mean over ranks."""
    was_training = model.training
    model.eval()
    device = batches[0][0].device
    try:
        losses = [float(loss_of(model, x, y))
                  for x, y in tqdm(batches, desc="validation", leave=False, disable=not show)]
    finally:
        model.train(was_training)
    mean = sum(losses) / len(losses)
    if world_size > 1:                                    # equal rows on every rank: the global mean
        mean = max_and_mean([mean], device)[1][0]
    return mean


@dataclass
class Validation:
    """What train() needs to evaluate as it goes: the batches, when, when to stop, and what it saw."""
    batches: list                        # this rank's rows of the fixed validation batches
    every: int                           # evaluate after every this many steps (and at step 0 and the last)
    loss_of: Callable                    # (model, x, y) -> loss, in the run's precision
    world_size: int = 1
    target: float | None = None          # stop once a validation loss is at or below this
    show: bool = False                   # progress bar over the batches and a line per evaluation
    losses: list[tuple[int, float]] = field(default_factory=list)   # (steps done, nats per token)
    time_s: float = 0.0                  # wall time spent evaluating, apart from the steps' time

    def due(self, steps_done: int, last: bool) -> bool:
        return steps_done % self.every == 0 or last

    def __call__(self, model: torch.nn.Module, steps_done: int) -> float:
        """Evaluate now, record (steps_done, loss) and the time it took; returns the loss."""
        t0 = time.perf_counter()
        loss = evaluate(model, self.batches, self.loss_of, self.world_size, self.show)
        self.time_s += time.perf_counter() - t0
        self.losses.append((steps_done, loss))
        if self.show:
            tqdm.write(f"step {steps_done:>6}  val loss {loss:.4f} nats/token  {bits_per_byte(loss):.4f} bits/byte")
        return loss

    @property
    def reached(self) -> bool:
        return self.target is not None and bool(self.losses) and self.losses[-1][1] <= self.target
