"""One training loop for every lesson and the benchmark; a TrainConfig switches each technique on or off."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, asdict
from typing import Callable

import torch
from tqdm.auto import tqdm

from frugal import data, recompute
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
    fused_cross_entropy: bool = False  # lesson 06: chunked output projection + loss (frugal.kernels), no full logits
    recompute: str = "none"         # activation checkpointing (lesson 02): none | all | every:K | first:K | selective | sqrt

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}: must be positive")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr={self.lr}: must be positive")
        if self.data not in ("corpus", "synthetic"):
            raise ValueError(f"TrainConfig.data={self.data!r}: pick 'corpus' or 'synthetic'")
        recompute.from_spec(self.recompute)   # raises ValueError naming the valid policies
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


def batch_fn(cfg: TrainConfig, vocab_size: int, device: torch.device) -> Callable[[], tuple]:
    """A function returning the next (x, y) batch, seeded by cfg.seed."""
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.data == "synthetic":
        return lambda: data.synthetic_batch(vocab_size, cfg.batch_size, cfg.seq_len, gen, device)
    tokens, _ = data.split(data.corpus_tokens())
    return lambda: data.get_batch(tokens, cfg.batch_size, cfg.seq_len, gen, device)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build(model_cfg: GPTConfig | TinyGPT, cfg: TrainConfig):
    """(model, optimizer, next_batch, device) ready to train; a TinyGPT passed in is trained in place."""
    device = pick_device(cfg.device)
    if isinstance(model_cfg, TinyGPT):
        model = model_cfg.to(device)
    else:
        torch.manual_seed(cfg.seed)
        model = TinyGPT(model_cfg).to(device)
    model.fused_cross_entropy = cfg.fused_cross_entropy
    if cfg.seq_len > model.cfg.block_size:
        raise ValueError(f"seq_len={cfg.seq_len} is longer than the model's block_size={model.cfg.block_size}: "
                         f"lower seq_len or raise GPTConfig.block_size")
    model.recompute = recompute.from_spec(cfg.recompute)
    return model, make_optimizer(model, cfg), batch_fn(cfg, model.cfg.vocab_size, device), device


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
