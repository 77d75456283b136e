"""One training loop for every lesson and the benchmark; a TrainConfig switches each technique on or off.

`build` makes the model, optimizer and batches; `train_step` is one optimizer step (forward, loss, backward,
loss scaler, clipping, optimizer, gradient accumulation); `train` times cfg.steps of them, in this process or,
with cfg.world_size > 1, on ranks it launches (frugal.dist) around a data-parallel wrapper. Whatever else in
frugal trains or times a step (lessons' measurements, the benchmark, torchrun_train) calls these.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, asdict, replace
from typing import Callable

import torch
from tqdm.auto import tqdm

from frugal import data, fp8, recompute
from frugal.config import (COMPILE, DATA_PARALLEL, LR_DECAYS, PRECISIONS, SCALERS,  # noqa: F401 (re-exported)
                           TrainConfig, lr_at, schedule_lr, set_lr)
from frugal.evaluate import Validation, bits_per_byte, validation_rows
from frugal.data_parallel import wrap
from frugal.device import pick_device
from frugal.dist import launch, max_and_mean, report, share_cpu_threads
from frugal.loss_scaler import LossScaler
from frugal.measure import Timing, measure_time, synchronize
from frugal.model import GPTConfig, TinyGPT
from frugal.zero import ZeroDataParallel

@dataclass
class StepRecord:
    step: int
    loss: float
    time_s: float                   # wall time of the step, synchronized
    tokens_per_s: float
    peak_memory_bytes: int | None   # peak CUDA memory of the step; None on CPU
    loss_scale: float | None = None  # fp16 with a scaler: the loss scale this step used
    skipped: bool = False           # fp16 with a scaler: the step was skipped (an inf/NaN gradient)


@dataclass
class TrainResult:
    model: TinyGPT
    config: TrainConfig
    history: list[StepRecord] = field(default_factory=list)
    timeline: list = field(default_factory=list)  # world_size > 1, 'bucket': the last backward's all-reduces
    backward_end_s: float | None = None          # ... and when that backward's autograd finished
    val_loss: list[tuple[int, float]] = field(default_factory=list)  # (steps done, held-out nats per token)
    eval_time_s: float = 0.0                     # time spent on validation, not counted in the steps' time_s

    @property
    def train_time_s(self) -> float:
        """Wall time of the optimizer steps alone (evaluations left out)."""
        return sum(r.time_s for r in self.history)

    @property
    def val_bpb(self) -> list[tuple[int, float]]:
        """val_loss in bits per byte (byte tokens: nats / ln 2)."""
        return [(s, bits_per_byte(v)) for s, v in self.val_loss]

    def column(self, name: str) -> list:
        """One field of every step: result.column('loss')."""
        return [getattr(r, name) for r in self.history]

    def _steady_tokens_per_s(self, skip: int) -> list[float]:
        """Each step's speed after the first `skip` (warm-up) steps (all of them when there are no more)."""
        values = self.column("tokens_per_s")
        return values[skip:] if len(values) > skip else values

    def median_tokens_per_s(self, skip: int = 3) -> float:
        """Median speed, leaving out the first `skip` (warm-up) steps."""
        return float(torch.tensor(self._steady_tokens_per_s(skip)).median())

    def tokens_per_s_spread(self, skip: int = 3) -> tuple[float, float]:
        """(slowest, fastest) step's speed after the first `skip` (warm-up) steps: the spread beside the median."""
        values = self._steady_tokens_per_s(skip)
        return float(min(values)), float(max(values))

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
        tokens, _ = data.split(data.load_tokens(cfg.data, glob=cfg.data_glob, cache_dir=cfg.data_cache))
        data.check_long_enough(tokens, cfg.seq_len, f"the training split of data={cfg.data!r}")
        draw = lambda: data.get_batch(tokens, cfg.batch_size, cfg.seq_len, gen, device)
    if cfg.world_size == 1:
        return draw
    b = cfg.batch_size // cfg.world_size

    def shard():
        x, y = draw()                                                    # (B, T) global batch
        return x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]    # (B / world_size, T)
    return shard


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; on CUDA its fused kernel (one launch for every parameter: about 9 ms of a 38 ms GPT-2-small
    bf16 step on an H100 goes to the per-tensor foreach version)."""
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def build(model_cfg: GPTConfig | TinyGPT, cfg: TrainConfig, rank: int = 0):
    """(model, optimizer, next_batch, device) ready to train; a TinyGPT passed in is trained in place.
    rank picks the batch shard when cfg.world_size > 1."""
    if not isinstance(model_cfg, (GPTConfig, TinyGPT)):
        raise TypeError(f"train/build got {type(model_cfg).__name__} {model_cfg!r} for the model: pass a GPTConfig "
                        f"or a TinyGPT, e.g. frugal.model.preset('tiny') for a named size")
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
    if cfg.precision == "fp8":
        convert_fp8(model, cfg)
    if cfg.compile == "blocks":                  # torch's compiler; in place, so parameter names are unchanged
        for block in model.blocks:
            block.compile()
    elif cfg.compile == "model":
        model.compile()
    return model, make_optimizer(model, cfg), batch_fn(cfg, model.cfg.vocab_size, device, rank), device


def convert_fp8(model: torch.nn.Module, cfg: TrainConfig) -> list[str]:
    """precision='fp8': swap the Linears at least cfg.fp8_min_features wide for Float8Linear (frugal.fp8), in
    place; under delayed scaling each GELU before one moves into its input cast (fp8.fuse_gelu_into_float8: the
    same function, one pass less on a GPU; current scaling would compute the GELU twice, for the amax and for the
    cast, and on an H200 that arithmetic cost more than the pass saved). Returns their names. Raises when the model
    then has none, since fp8 would silently be bf16."""
    names = fp8.convert_to_float8(model, recipe=cfg.fp8_recipe, min_features=cfg.fp8_min_features,
                                  fuse_gelu=cfg.fp8_recipe == "delayed")
    if not any(isinstance(m, fp8.Float8Linear) for m in model.modules()):
        widths = sorted({d for m in model.modules() if isinstance(m, torch.nn.Linear)
                         for d in (m.in_features, m.out_features)})
        raise ValueError(f"precision='fp8' converted no Linear: the model's widths {widths} are all below "
                         f"fp8_min_features={cfg.fp8_min_features} (or not multiples of 16); lower it, e.g. "
                         f"TrainConfig(fp8_min_features=16) for a small model (emulated off the GPU), or use bf16")
    return names


_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.bfloat16}  # fp8: bf16 outside Float8Linear


def make_scaler(cfg: TrainConfig, device: torch.device):
    """The loss scaler cfg asks for: fp16 gets LossScaler ('frugal') or GradScaler ('torch'); else None."""
    if cfg.precision != "fp16" or cfg.scaler == "none":
        return None
    if cfg.scaler == "torch":
        return torch.amp.GradScaler(torch.device(device).type, init_scale=cfg.init_scale)
    return LossScaler(init_scale=cfg.init_scale)


@contextmanager
def matmul_precision(cfg: TrainConfig):
    """TF32 matmuls on for 'tf32', off for 'fp32' (a true fp32 baseline), restored on exit (CUDA only)."""
    if cfg.precision not in ("fp32", "tf32"):
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(cfg: TrainConfig, device: torch.device):
    """torch.autocast to fp16/bf16 for the forward pass (weights stay fp32; fp8 is bf16 outside Float8Linear);
    a no-op for fp32 and tf32."""
    if cfg.precision not in _AUTOCAST:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_AUTOCAST[cfg.precision])


def forward_backward(model: TinyGPT, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, scaler=None,
                     divisor: float = 1.0) -> torch.Tensor:
    """Forward in cfg.precision, backward of loss / (cfg.loss_divisor * divisor), scaled if a scaler is given:
    the gradient half of train_step (measure_recompute times it alone). Returns the loss, detached."""
    with matmul_precision(cfg):
        with autocast(cfg, x.device):
            _, loss = model(x, y)
        d = cfg.loss_divisor * divisor
        objective = loss / d if d != 1.0 else loss
        (scaler.scale(objective) if scaler is not None else objective).backward()
    return loss.detach()


def train_step(model: TinyGPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               cfg: TrainConfig, scaler=None) -> torch.Tensor:
    """Forward and backward of each of cfg.accumulation_steps micro-batches, then unscale, clip, step: one
    optimizer step. Returns the loss of the whole batch (a tensor, not synced).

    fp16 needs `scaler=make_scaler(cfg, device)` unless cfg.scaler == 'none'. Under ZeRO the wrapper is
    both model and optimizer: train_step(zero, zero, x, y, cfg).
    """
    if scaler is None and cfg.precision == "fp16" and cfg.scaler != "none":
        raise ValueError("fp16 training needs a loss scaler: pass scaler=make_scaler(cfg, device), "
                         "or set TrainConfig.scaler='none' to train unscaled")
    if scaler is not None and cfg.precision == "fp8":
        raise ValueError("fp8 training takes no loss scaler (each gradient gets its own e5m2 scale): pass "
                         "scaler=None, which make_scaler(cfg, device) returns for fp8")
    n = cfg.accumulation_steps
    with matmul_precision(cfg):
        if n == 1:
            loss = forward_backward(model, x, y, cfg, scaler)
        else:                                   # the last backward all-reduces the sum; no_sync() skips the rest
            losses = []
            for i, (xm, ym) in enumerate(zip(x.chunk(n), y.chunk(n))):          # (B / n, T) each
                quiet = model.no_sync() if i < n - 1 and hasattr(model, "no_sync") else nullcontext()
                with quiet:
                    losses.append(forward_backward(model, xm, ym, cfg, scaler, n))
            loss = torch.stack(losses).mean()
        if cfg.grad_clip is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)      # clip the true gradients, not the scaled ones
            if hasattr(optimizer, "clip_grad_norm_"):   # ZeRO (frugal.zero): gradients are sharded, it clips them
                optimizer.clip_grad_norm_(cfg.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)              # skipped when a gradient is inf/NaN
            scaler.update()
        else:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def time_steps(model, optimizer, next_batch: Callable[[], tuple], cfg: TrainConfig, scaler=None,
               warmup: int = 3, repeats: int = 10, inner: int = 1) -> Timing:
    """Median time of train_step on next_batch()'s (x, y) (`lambda: (x, y)`: one fixed batch), by
    measure.measure_time: warm-up, synchronized, median of repeats. The steps do train the model."""
    device = next(model.parameters()).device
    step = lambda: train_step(model, optimizer, *next_batch(), cfg, scaler)
    return measure_time(step, device, warmup, repeats, inner)


def validation(cfg: TrainConfig, device: torch.device, rank: int = 0, show: bool = False) -> Validation | None:
    """The held-out evaluation cfg asks for (None when eval_every is 0): loss in cfg.precision, rank's rows."""
    if not cfg.eval_every:
        return None

    def loss_of(model, x, y):
        with matmul_precision(cfg), autocast(cfg, x.device):
            return model(x, y)[1]
    rows = validation_rows(cfg, rank, device)
    return Validation(rows, cfg.eval_every, loss_of, cfg.world_size, cfg.target_loss, show)


def _timed_steps(model, optimizer, next_batch, device: torch.device, cfg: TrainConfig, scaler=None,
                 show: bool = True, val: Validation | None = None, on_step=None) -> list[StepRecord]:
    """The training loop: cfg.steps train_steps, each synchronized and recorded (loss, time, peak memory);
    with val, held-out loss at step 0 and every val.every steps, stopping early once val.target is reached.
    on_step(record), if given, hears each step as it ends (a progress bar)."""
    history = []
    tokens = cfg.batch_size * cfg.seq_len
    if val is not None:
        val(model, 0)
    bar, shown = tqdm(range(cfg.steps), desc=f"train {cfg.precision}", disable=not show), {}
    for step in bar:
        x, y = next_batch()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        scale = scaler.get_scale() if scaler is not None else None
        schedule_lr(optimizer, cfg, step)
        t0 = time.perf_counter()
        loss = train_step(model, optimizer, x, y, cfg, scaler)
        synchronize(device)
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        skipped = scaler is not None and scaler.get_scale() < scale   # the scale backs off only on a skip
        history.append(StepRecord(step, loss.item(), dt, tokens / dt, peak, scale, skipped))
        if val is not None and val.due(step + 1, step + 1 == cfg.steps):
            shown["val"] = f"{val(model, step + 1):.3f}"
        bar.set_postfix(loss=f"{history[-1].loss:.3f}", **shown)
        if on_step is not None:
            on_step(history[-1])
        if val is not None and val.reached:
            break
    return history


def train(model_cfg: GPTConfig | TinyGPT, cfg: TrainConfig | None = None, on_step=None) -> TrainResult:
    """Train for cfg.steps steps, recording loss, time and memory of each step; on_step(record) hears each
    step of one process as it ends (ranks report theirs to dist.launch's on_report instead)."""
    cfg = TrainConfig() if cfg is None else cfg
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train(model, cfg): cfg must be a TrainConfig, got {type(cfg).__name__}; "
                        f"e.g. train(preset('tiny'), TrainConfig(steps=20))")
    if cfg.world_size > 1:                       # lesson 03: cfg.world_size ranks, each on its shard
        return train_data_parallel(model_cfg, cfg)
    model, optimizer, next_batch, device = build(model_cfg, cfg)
    model.train()
    val = validation(cfg, device, show=cfg.progress)
    history = _timed_steps(model, optimizer, next_batch, device, cfg, make_scaler(cfg, device), cfg.progress, val,
                           on_step)
    return TrainResult(model, cfg, history, val_loss=val.losses if val else [], eval_time_s=val.time_s if val else 0)


# ----------------------------------------------------------------------------- lessons 03-04: on ranks

def train_rank(rank: int, world_size: int, model_cfg: GPTConfig | TinyGPT, cfg: TrainConfig) -> dict:
    """One rank of train(model_cfg, cfg) with cfg.world_size ranks: its shard of each global batch, the
    gradients averaged by cfg.data_parallel. Rank 0 returns the history, the weights and the bucket timeline."""
    share_cpu_threads(world_size)
    model, optimizer, next_batch, device = build(model_cfg, cfg, rank)
    model.train()
    scaler = None
    if cfg.data_parallel.startswith("zero"):             # lesson 04: the wrapper is model and optimizer at once
        dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        dp = optimizer = ZeroDataParallel(model, int(cfg.data_parallel[-1]), param_dtype=dtype, lr=cfg.lr,
                                          weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    else:
        dp, scaler = wrap(model, cfg.data_parallel, cfg.bucket_cap_mb), make_scaler(cfg, device)
    val = validation(cfg, device, rank)                  # each rank evaluates its rows; the mean is all-reduced
    steps = (lambda r: report(("step", r.step + 1))) if rank == 0 else None   # launch's on_report hears them
    local = _timed_steps(dp, optimizer, next_batch, device, cfg, scaler, show=False, val=val, on_step=steps)
    slowest, _ = max_and_mean([r.time_s for r in local], device)       # a step lasts as long as its slowest rank
    _, mean_loss = max_and_mean([r.loss for r in local], device)       # equal shards: the global loss is the mean
    top, _ = max_and_mean([float(r.peak_memory_bytes or 0) for r in local], device)   # the fullest rank's peak
    tokens = cfg.batch_size * cfg.seq_len
    history = [replace(r, loss=mean_loss[i], time_s=slowest[i], tokens_per_s=tokens / slowest[i],
                       peak_memory_bytes=int(top[i]) if device.type == "cuda" else None) for i, r in enumerate(local)]
    weights = dp.full_parameters() if hasattr(dp, "full_parameters") else model.state_dict()  # ZeRO: all gather
    if rank != 0:
        return {}
    return {"history": history, "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
            "timeline": getattr(dp, "timeline", []), "backward_end_s": getattr(dp, "backward_end_s", None),
            "buckets": len(getattr(dp, "buckets", [])), "device": str(device),
            "val_loss": val.losses if val else [], "eval_time_s": val.time_s if val else 0.0}


def train_data_parallel(model_cfg: GPTConfig | TinyGPT, cfg: TrainConfig, timeout: float = 120.0,
                        on_report=None) -> TrainResult:
    """train() on cfg.world_size ranks launched from here (gloo on CPU, NCCL with a GPU per rank); on_report(rank,
    message) hears each rank join and finish (dist.launch's reports). Returns a TrainResult with rank 0's model
    (a TinyGPT passed in gets those weights) and the global loss."""
    backend = "gloo" if (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu") else "auto"
    sent = model_cfg.cpu() if isinstance(model_cfg, TinyGPT) else model_cfg
    out = launch(train_rank, cfg.world_size, sent, cfg, backend=backend, timeout=timeout, on_report=on_report)[0]
    model = model_cfg if isinstance(model_cfg, TinyGPT) else TinyGPT(model_cfg)
    model.load_state_dict(out["state_dict"])
    return TrainResult(model, cfg, out["history"], out["timeline"], out["backward_end_s"], out["val_loss"],
                       out["eval_time_s"])
