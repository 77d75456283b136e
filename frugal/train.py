"""One training loop for every lesson and the benchmark; a TrainConfig switches each technique on or off."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, asdict
from typing import Callable

import torch
from tqdm.auto import tqdm

from frugal import data
from frugal.device import pick_device
from frugal.measure import synchronize
from frugal.model import GPTConfig, TinyGPT

PRECISIONS = ("fp32",)


@dataclass
class TrainConfig:
    steps: int = 50                 # optimizer steps
    batch_size: int = 8             # sequences per step
    seq_len: int = 64               # tokens per sequence (<= the model's block_size)
    lr: float = 3e-3                # AdamW learning rate (constant)
    weight_decay: float = 0.0       # AdamW weight decay
    grad_clip: float | None = 1.0   # clip the global gradient norm to this; None = no clipping
    seed: int = 0                   # seeds the weights and the batch sampler
    device: str | None = None       # 'cpu', 'cuda', ...; None = frugal.device.pick_device()
    data: str = "corpus"            # 'corpus' (the shipped text) or 'synthetic' (random tokens, for speed)
    precision: str = "fp32"         # number format of the matmuls
    progress: bool = True           # show a tqdm progress bar
    world_size: int = 1             # data-parallel ranks (lesson 03); batch_size stays the global batch, split evenly
    data_parallel: str = "bucket"   # with world_size > 1: 'naive', 'bucket' (frugal.data_parallel) or 'ddp' (torch's)
    bucket_cap_mb: float = 25.0     # gradient bucket size of 'bucket' and 'ddp', MiB

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}: must be positive")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr={self.lr}: must be positive")
        if self.data not in ("corpus", "synthetic"):
            raise ValueError(f"TrainConfig.data={self.data!r}: pick 'corpus' or 'synthetic'")
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"TrainConfig.world_size={self.world_size!r}: must be a positive integer")
        if self.batch_size % self.world_size:
            raise ValueError(f"world_size={self.world_size} does not divide batch {self.batch_size}: pick a batch "
                             f"that is a multiple of {self.world_size} (each rank gets batch_size / world_size)")
        if self.data_parallel not in ("naive", "bucket", "ddp"):
            raise ValueError(f"TrainConfig.data_parallel={self.data_parallel!r}: pick 'naive', 'bucket' or 'ddp'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r}: pick one of {PRECISIONS}")


@dataclass
class StepRecord:
    step: int
    loss: float
    time_s: float                   # wall time of the step, synchronized
    tokens_per_s: float
    peak_memory_bytes: int | None   # peak CUDA memory of the step; None on CPU


@dataclass
class TrainResult:
    model: TinyGPT
    config: TrainConfig
    history: list[StepRecord] = field(default_factory=list)

    def column(self, name: str) -> list:
        """One field of every step: result.column('loss')."""
        return [getattr(r, name) for r in self.history]

    def median_tokens_per_s(self, skip: int = 3) -> float:
        """Median speed, leaving out the first `skip` (warm-up) steps."""
        values = self.column("tokens_per_s")
        values = values[skip:] if len(values) > skip else values
        return float(torch.tensor(values).median())

    def summary(self) -> dict:
        return {"final_loss": self.history[-1].loss, "median_tokens_per_s": self.median_tokens_per_s(),
                "config": asdict(self.config)}


def batch_fn(cfg: TrainConfig, vocab_size: int, device: torch.device, rank: int = 0) -> Callable[[], tuple]:
    """A function returning the next (x, y) batch, seeded by cfg.seed; with world_size > 1, rank's shard
    (rows rank*b to (rank+1)*b, b = batch_size / world_size) of the same global batch every rank draws."""
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.data == "synthetic":
        draw = lambda: data.synthetic_batch(vocab_size, cfg.batch_size, cfg.seq_len, gen, device)
    else:
        tokens, _ = data.split(data.corpus_tokens())
        draw = lambda: data.get_batch(tokens, cfg.batch_size, cfg.seq_len, gen, device)
    if cfg.world_size == 1:
        return draw
    b = cfg.batch_size // cfg.world_size

    def shard():
        x, y = draw()                                                    # (B, T) global batch
        return x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]    # (B / world_size, T)
    return shard


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build(model_cfg: GPTConfig | TinyGPT, cfg: TrainConfig, rank: int = 0):
    """(model, optimizer, next_batch, device) ready to train; a TinyGPT passed in is trained in place.
    rank picks the batch shard when cfg.world_size > 1."""
    device = pick_device(cfg.device)
    if isinstance(model_cfg, TinyGPT):
        model = model_cfg.to(device)
    else:
        torch.manual_seed(cfg.seed)
        model = TinyGPT(model_cfg).to(device)
    if cfg.seq_len > model.cfg.block_size:
        raise ValueError(f"seq_len={cfg.seq_len} is longer than the model's block_size={model.cfg.block_size}: "
                         f"lower seq_len or raise GPTConfig.block_size")
    return model, make_optimizer(model, cfg), batch_fn(cfg, model.cfg.vocab_size, device, rank), device


def train_step(model: TinyGPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               cfg: TrainConfig) -> torch.Tensor:
    """Forward, backward, clip, step: one optimizer step. Returns the loss (a tensor, not synced)."""
    _, loss = model(x, y)
    loss.backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train(model_cfg: GPTConfig | TinyGPT, cfg: TrainConfig | None = None) -> TrainResult:
    """Train for cfg.steps steps, recording loss, time and memory of each step."""
    cfg = cfg or TrainConfig()
    if cfg.world_size > 1:                       # lesson 03: cfg.world_size ranks, each on its shard
        from frugal.data_parallel import train_data_parallel
        return train_data_parallel(model_cfg, cfg)
    model, optimizer, next_batch, device = build(model_cfg, cfg)
    model.train()
    result = TrainResult(model, cfg)
    tokens = cfg.batch_size * cfg.seq_len
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.precision}", disable=not cfg.progress)
    for step in bar:
        x, y = next_batch()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        t0 = time.perf_counter()
        loss = train_step(model, optimizer, x, y, cfg)
        synchronize(device)
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        result.history.append(StepRecord(step, loss.item(), dt, tokens / dt, peak))
        bar.set_postfix(loss=f"{result.history[-1].loss:.3f}")
    return result
