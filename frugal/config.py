"""TrainConfig: every lesson's switches in one dataclass, checked when it is made, and the learning rate at a step.

frugal.train reads it (and re-exports it): `from frugal.train import TrainConfig` works as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from frugal import recompute
from frugal.evaluate import check_data_fields

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")   # fp8: chosen Linears in fp8 (frugal.fp8), the rest bf16
SCALERS = ("frugal", "torch", "none")   # fp16 loss scaler: ours, torch.amp.GradScaler, or none (to watch it fail)
DATA_PARALLEL = ("naive", "bucket", "ddp", "zero1", "zero2", "zero3")  # lesson 03 flavours, lesson 04 ZeRO stages
LR_DECAYS = ("none", "cosine")  # the learning rate after warm-up: constant, or a cosine down to a tenth
COMPILE = ("none", "blocks", "model")   # torch.compile (PyTorch's compiler, not ours) on each block or the whole model


@dataclass
class TrainConfig:
    steps: int = 50                 # optimizer steps
    batch_size: int = 8             # sequences per step
    seq_len: int = 64               # tokens per sequence (<= the model's block_size)
    lr: float = 2e-3                # AdamW peak learning rate (at 3e-3 the tiny model's loss spikes now and then)
    warmup_steps: int = 0           # lr rises linearly from lr/warmup_steps to lr over these first steps
    lr_decay: str = "none"          # after warm-up: 'none' (lr stays) or 'cosine' (down to lr/10 at the last step)
    weight_decay: float = 0.0       # AdamW weight decay
    grad_clip: float | None = 1.0   # clip the global gradient norm to this; None = no clipping
    seed: int = 0                   # seeds the weights and the batch sampler
    device: str | None = None       # 'cpu', 'cuda', ...; None = frugal.device.pick_device()
    data: str = "corpus"            # 'corpus' (shipped text), 'stdlib' (Python's source), a file or folder,
                                    # 'hf:NAME[:CONFIG]' (frugal.data.load_tokens) or 'synthetic' (random tokens)
    data_glob: str | None = None    # data a folder: the files to read, e.g. '**/*.py' (None: every file)
    data_cache: str | None = None   # folder of tokenized sources (None: ~/.cache/frugal/tokens)
    eval_every: int = 0             # held-out loss every this many steps, at step 0 and at the end (0 = never)
    eval_batches: int = 8           # fixed validation batches of batch_size sequences per evaluation
    target_loss: float | None = None  # stop at the first validation loss at or below this (needs eval_every)
    precision: str = "fp32"         # number format of the matmuls: fp32 (TF32 off), tf32, fp16 or bf16 (autocast),
                                    # or fp8: the Linears fp8_min_features picks in fp8 (Float8Linear), the rest bf16
    fp8_recipe: str = "current"     # fp8 only: scale from this tensor's amax ('current') or the last 16 ('delayed')
    fp8_min_features: int = 1024    # fp8 only: convert a Linear when in and out features are >= this (and % 16);
                                    # smaller matrices cost about as much to cast as the faster matmul saves
    scaler: str = "frugal"          # fp16 only: 'frugal' (our LossScaler), 'torch' (GradScaler) or 'none'
    init_scale: float = 2.0 ** 16   # fp16 only: the loss scaler's first scale
    loss_divisor: float = 1.0       # backward of loss/loss_divisor: per-token gradients as small as in a batch
                                    # this many times larger (lesson 01; Adam barely notices, fp16 does)
    progress: bool = True           # show a tqdm progress bar
    fused_cross_entropy: bool = False  # lesson 06: chunked output projection + loss (frugal.kernels), no full logits
    recompute: str = "none"         # activation checkpointing (lesson 02): none | full | every:K | first:K | selective | sqrt
    world_size: int = 1             # data-parallel ranks (lesson 03); batch_size stays the global batch, split evenly
    data_parallel: str = "bucket"   # with world_size > 1: 'naive', 'bucket' (frugal.data_parallel), 'ddp' (torch's),
                                    # or 'zero1'/'zero2'/'zero3' (frugal.zero's ZeroDataParallel, lesson 04)
    bucket_cap_mb: float = 25.0     # gradient bucket size of 'bucket' and 'ddp', MiB
    compile: str = "none"           # lesson 07: torch.compile 'blocks' (each block) or 'model'; 'none' = eager
    accumulation_steps: int = 1     # micro-batches per optimizer step, their gradients summed (gradient
                                    # accumulation); batch_size stays the whole step's batch

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"TrainConfig.{name}={v!r}: must be a positive integer, e.g. {name}=8")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"TrainConfig.seed={self.seed!r}: must be an integer, e.g. seed=0")
        if not _finite_positive(self.lr):
            raise ValueError(f"TrainConfig.lr={self.lr!r}: must be a positive finite number, e.g. lr=2e-3")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps={self.warmup_steps!r}: must be an integer >= 0 (0 = no "
                             f"warm-up), e.g. warmup_steps=100")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"TrainConfig.lr_decay={self.lr_decay!r}: pick one of {LR_DECAYS}")
        if self.grad_clip is not None and not _finite_positive(self.grad_clip):
            raise ValueError(f"TrainConfig.grad_clip={self.grad_clip!r}: must be a positive finite norm, e.g. 1.0, "
                             f"or None for no clipping")
        if self.device is not None and not isinstance(self.device, str):
            raise ValueError(f"TrainConfig.device={self.device!r}: pass a string such as 'cpu' or 'cuda', or None")
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"TrainConfig.device={self.device!r}: use 'cpu', 'cuda' or 'cuda:N' (PyTorch calls a "
                             f"GPU 'cuda'), or None to pick one")
        check_data_fields(self)                  # data, eval_every, eval_batches, target_loss (frugal.evaluate)
        recompute.from_spec(self.recompute)   # raises ValueError naming the valid policies
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"TrainConfig.world_size={self.world_size!r}: must be a positive integer")
        if self.batch_size % self.world_size:
            raise ValueError(f"world_size={self.world_size} does not divide batch {self.batch_size}: pick a batch "
                             f"that is a multiple of {self.world_size} (each rank gets batch_size / world_size)")
        n, per_rank = self.accumulation_steps, self.batch_size // self.world_size
        if not isinstance(n, int) or n < 1 or per_rank % n:
            raise ValueError(f"TrainConfig.accumulation_steps={n!r}: pick a positive integer dividing the batch "
                             f"per rank, batch_size / world_size = {per_rank} (1 = no accumulation)")
        if n > 1 and self.data_parallel.startswith("zero"):
            raise ValueError(f"accumulation_steps={n} with data_parallel={self.data_parallel!r}: ZeroDataParallel has "
                             f"no no_sync(); use accumulation_steps=1, or 'bucket' to accumulate")
        if self.data_parallel not in DATA_PARALLEL:
            raise ValueError(f"TrainConfig.data_parallel={self.data_parallel!r}: pick one of {DATA_PARALLEL}")
        if self.data_parallel.startswith("zero") and self.precision == "fp16":
            raise ValueError(f"data_parallel={self.data_parallel!r} with fp16: ZeroDataParallel has no loss scaler; "
                             f"use precision='bf16' (no scaler needed) or a plain data-parallel flavour")
        if self.compile not in COMPILE:
            raise ValueError(f"TrainConfig.compile={self.compile!r}: pick one of {COMPILE}")
        if self.compile == "model" and self.recompute != "none":
            raise ValueError(f"compile='model' with recompute={self.recompute!r}: torch.compile would trace through "
                             f"our recompute's saved-tensor hooks and dispatch modes, which it does not support; "
                             f"use compile='blocks' (each block compiled, checkpointed from outside)")
        if self.compile == "blocks" and self.recompute == "selective":
            raise ValueError("compile='blocks' with recompute='selective': selective recompute runs inside each block "
                             "(module hooks, dispatch modes), where torch.compile saves other tensors than the "
                             "recomputation makes; use recompute='full' with compile='blocks', or compile='none' "
                             "with recompute='selective'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r}: pick one of {PRECISIONS}")
        self._check_fp8()
        if not self.loss_divisor > 0:
            raise ValueError(f"TrainConfig.loss_divisor={self.loss_divisor}: must be positive (1.0 = plain loss)")
        if self.scaler not in SCALERS:
            raise ValueError(f"TrainConfig.scaler={self.scaler!r}: pick one of {SCALERS}")


    def _check_fp8(self) -> None:
        from frugal.fp8 import RECIPES
        if self.fp8_recipe not in RECIPES:
            raise ValueError(f"TrainConfig.fp8_recipe={self.fp8_recipe!r}: pick one of {RECIPES}")
        m = self.fp8_min_features
        if isinstance(m, bool) or not isinstance(m, int) or m < 16:
            raise ValueError(f"TrainConfig.fp8_min_features={m!r}: must be an integer >= 16 (torch._scaled_mm's "
                             f"smallest dimension), e.g. 1024, or 16 to convert every Linear of a small model")
        if self.precision != "fp8":
            return
        if self.scaler == "torch" or self.init_scale != 2.0 ** 16:
            raise ValueError("precision='fp8' with a loss scaler (scaler='torch' or init_scale set): fp8 scales each "
                             "gradient tensor itself (e5m2, from its amax) and needs none; leave scaler and "
                             "init_scale at their defaults, which only fp16 reads")
        if self.data_parallel.startswith("zero"):
            raise ValueError(f"data_parallel={self.data_parallel!r} with precision='fp8': ZeroDataParallel gathers "
                             f"its own bf16 weights, which Float8Linear never sees; use precision='bf16' with "
                             f"ZeRO, or fp8 with data_parallel='bucket' or 'ddp'")
        if self.compile != "none":
            raise ValueError(f"compile={self.compile!r} with precision='fp8': Float8Linear checks each amax on "
                             f"the host and launches its own Triton casts, which torch.compile would break its "
                             f"graphs on; use compile='none' with fp8")


def _finite_positive(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < float("inf")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warm-up over cfg.warmup_steps, then cfg.lr,
    or with lr_decay='cosine' half a cosine from cfg.lr down to cfg.lr / 10 at step cfg.steps - 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "none":
        return cfg.lr
    span = max(cfg.steps - 1 - cfg.warmup_steps, 1)
    done = min(step - cfg.warmup_steps, span) / span                    # 0 after warm-up, 1 at the last step
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


def set_lr(optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (a ZeRO wrapper: its inner optimizer's)."""
    for group in getattr(optimizer, "optimizer", optimizer).param_groups:
        group["lr"] = lr


def schedule_lr(optimizer, cfg: TrainConfig, step: int) -> None:
    """Give the optimizer lr_at(cfg, step) before optimizer step `step` (0-based); without warm-up or decay the
    rate is constant and the optimizer is left as it was built."""
    if cfg.warmup_steps or cfg.lr_decay != "none":
        set_lr(optimizer, lr_at(cfg, step))
