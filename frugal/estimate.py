"""What should happen: the FLOPs, time, dollars and memory of a training plan, before running it.

`estimate_*` predicts; measure.py observes. Every formula names where it comes from.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

TB = 1e12
GB = 1e9   # decimal gigabytes, as GPU data sheets and the ZeRO paper count them


@dataclass
class GPU:
    name: str
    memory_gb: float                  # device memory, GB (1e9 bytes)
    bandwidth_gbs: float              # peak memory bandwidth, GB/s, from the data sheet
    peak_tflops: dict[str, float]     # dense (no sparsity) peak per dtype; a missing dtype is not native
    price_per_hour: float             # US$ per GPU-hour, on demand: edit for your provider
    price_source: str                 # where the price comes from
    price_date: str                   # when it was read

    def peak_flops(self, dtype: str) -> float:
        if dtype not in self.peak_tflops:
            raise ValueError(
                f"{self.name} has no native {dtype} (it has {sorted(self.peak_tflops)}): "
                f"pick one of those, e.g. fp16 with a loss scaler on a T4"
            )
        return self.peak_tflops[dtype] * TB


_PRICE_SOURCE = "approximate on-demand list price of public GPU clouds; edit GPU_CATALOG for your provider"
_PRICE_DATE = "2026-11"

# Peaks are NVIDIA data-sheet dense figures (SXM parts for A100/H100/H200); tf32/fp16/bf16/fp8 are tensor-core rates.
GPU_CATALOG: dict[str, GPU] = {
    "T4": GPU("T4", 16, 320, {"fp32": 8.1, "fp16": 65.0}, 0.35, _PRICE_SOURCE, _PRICE_DATE),
    "L4": GPU("L4", 24, 300, {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0, "fp8": 242.0},
              0.80, _PRICE_SOURCE, _PRICE_DATE),
    "A100-40GB": GPU("A100-40GB", 40, 1555, {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
                     1.30, _PRICE_SOURCE, _PRICE_DATE),
    "A100-80GB": GPU("A100-80GB", 80, 2039, {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
                     1.80, _PRICE_SOURCE, _PRICE_DATE),
    "H100": GPU("H100", 80, 3350, {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "fp8": 1978.9},
                2.99, _PRICE_SOURCE, _PRICE_DATE),
    "H200": GPU("H200", 141, 4800, {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "fp8": 1978.9},
                3.79, _PRICE_SOURCE, _PRICE_DATE),
}


def get_gpu(name: str) -> GPU:
    if name not in GPU_CATALOG:
        raise ValueError(f"unknown GPU {name!r}: known GPUs are {', '.join(GPU_CATALOG)} (or add one to GPU_CATALOG)")
    return GPU_CATALOG[name]


def _positive(**values) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name}={v}: must be positive")


def _check_mfu(mfu: float) -> None:
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu}: must be in (0, 1]; 0.3 to 0.5 is typical of a well-tuned run")


def training_flops(n_params: float, n_tokens: float) -> float:
    """6·N·D: forward (2N) and backward (4N) FLOPs per token times tokens (Kaplan et al. 2020, sec. 2.1)."""
    _positive(n_params=n_params, n_tokens=n_tokens)
    return 6.0 * n_params * n_tokens


@dataclass
class Plan:
    """A training run to price: model size, tokens, hardware and how well it is used."""
    n_params: float          # parameters N
    n_tokens: float          # training tokens D
    gpu: str = "H100"        # key of GPU_CATALOG
    n_gpus: int = 1
    mfu: float = 0.4         # model FLOPs utilisation in (0, 1]
    dtype: str = "bf16"      # the dtype whose peak the MFU is relative to
    price_per_hour: float | None = None  # US$ per GPU-hour; None = the catalog's price


@dataclass
class CostEstimate:
    flops: float
    gpu_hours: float
    days: float              # wall-clock days on n_gpus
    dollars: float


def estimate_cost(plan: Plan) -> CostEstimate:
    """Time and money: FLOPs / (n_gpus · peak · MFU), priced at plan.price_per_hour or the catalog's rate."""
    _check_mfu(plan.mfu)
    _positive(n_gpus=plan.n_gpus)
    if int(plan.n_gpus) != plan.n_gpus:
        raise TypeError(f"n_gpus={plan.n_gpus!r}: must be a whole number of GPUs")
    gpu = get_gpu(plan.gpu)
    price = gpu.price_per_hour if plan.price_per_hour is None else plan.price_per_hour
    _positive(price_per_hour=price)
    flops = training_flops(plan.n_params, plan.n_tokens)
    gpu_hours = estimate_seconds(plan.n_params, plan.n_tokens, gpu.peak_flops(plan.dtype), plan.mfu) / 3600
    return CostEstimate(flops, gpu_hours, gpu_hours / plan.n_gpus / 24, gpu_hours * price)


def estimate_seconds(n_params: float, n_tokens: float, peak_flops: float, mfu: float) -> float:
    """Seconds one device of `peak_flops` needs for 6·N·D at `mfu`: works for a CPU's measured peak too."""
    _check_mfu(mfu)
    _positive(peak_flops=peak_flops)
    return training_flops(n_params, n_tokens) / (peak_flops * mfu)


def implied_mfu(n_params: float, n_tokens: float, gpu_hours: float, gpu: str, dtype: str = "bf16") -> float:
    """The MFU a reported run achieved: its 6ND FLOPs over what its GPU-hours could have delivered."""
    _positive(gpu_hours=gpu_hours)
    return training_flops(n_params, n_tokens) / (gpu_hours * 3600 * get_gpu(gpu).peak_flops(dtype))


def dollars_per_token(tokens_per_s: float, gpu: str, n_gpus: int = 1) -> float:
    """What one token costs at a measured speed on n_gpus of the catalog's price."""
    _positive(tokens_per_s=tokens_per_s, n_gpus=n_gpus)
    return get_gpu(gpu).price_per_hour * n_gpus / 3600 / tokens_per_s


# ----------------------------------------------------------------------------- memory

# Bytes per parameter of (weights, gradients, optimizer states), ZeRO paper (Rajbhandari et al. 2020) sec. 3.1.
# "mixed": fp16/bf16 weights and gradients for compute, fp32 master weights + Adam m and v (K = 12).
_STATE_BYTES = {
    ("fp32", "adam"): (4, 4, 8),
    ("mixed", "adam"): (2, 2, 12),
    ("fp32", "sgd"): (4, 4, 0),
    ("mixed", "sgd"): (2, 2, 4),
    ("fp32", "sgd_momentum"): (4, 4, 4),
    ("mixed", "sgd_momentum"): (2, 2, 8),
}


@dataclass
class MemoryEstimate:
    """Bytes per GPU, by kind."""
    weights: float
    gradients: float
    optimizer: float
    activations: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict[str, float]:
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations}


def estimate_state_memory(n_params: float, precision: str = "mixed", optimizer: str = "adam",
                          zero_stage: int = 0, world_size: int = 1) -> MemoryEstimate:
    """Weights, gradients and optimizer states per GPU; ZeRO stage s shards the first s of
    (optimizer, gradients, weights) over world_size ranks (ZeRO paper, figure 1)."""
    _positive(n_params=n_params, world_size=world_size)
    if (precision, optimizer) not in _STATE_BYTES:
        raise ValueError(f"precision={precision!r}, optimizer={optimizer!r}: "
                         f"pick from {sorted(set(p for p, _ in _STATE_BYTES))} and "
                         f"{sorted(set(o for _, o in _STATE_BYTES))}")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage={zero_stage}: must be 0 (plain data parallel), 1, 2 or 3")
    w, g, o = (b * n_params for b in _STATE_BYTES[(precision, optimizer)])
    n = world_size
    return MemoryEstimate(
        weights=w / n if zero_stage >= 3 else w,
        gradients=g / n if zero_stage >= 2 else g,
        optimizer=o / n if zero_stage >= 1 else o,
    )


def korthikanti_activation_bytes_per_layer(seq: int, batch: int, hidden: int, heads: int,
                                           recompute: str = "none") -> float:
    """Activation bytes of one transformer layer with 16-bit activations (Korthikanti et al. 2022, sec. 4):
    s·b·h·(34 + 5·a·s/h) stored; 34·s·b·h with selective recompute of attention; 2·s·b·h with full recompute."""
    _positive(seq=seq, batch=batch, hidden=hidden, heads=heads)
    sbh = seq * batch * hidden
    if recompute == "none":
        return sbh * (34 + 5 * heads * seq / hidden)
    if recompute == "selective":
        return 34 * sbh
    if recompute == "full":
        return 2 * sbh
    raise ValueError(f"recompute={recompute!r}: pick 'none', 'selective' or 'full'")


def estimate_activation_bytes(cfg, batch: int, seq: int, act_bytes: int = 4,
                              fused_attention: bool = True) -> dict[str, float]:
    """Bytes TinyGPT saves for backward in one forward, by kind of tensor.

    Korthikanti et al.'s term-by-term count, applied to TinyGPT's block: per layer the two LayerNorm
    inputs, the q/k/v projection input and output, the attention output (also the output projection's input),
    the two MLP matmul inputs and the GELU input (16 values of s·b·h in all at `act_bytes` each; no dropout masks when dropout=0),
    plus LayerNorm statistics. A fused attention (flash / memory-efficient, what SDPA picks) keeps a
    log-sum-exp per row instead of the s×s score matrix. Then the final LayerNorm and the fp32 logits
    the cross-entropy keeps. Dropout masks are counted as CUDA keeps them (1 byte, none inside fused
    attention); the CPU keeps fp32 masks and unfused attention, so compare on CPU with dropout=0 or eval().
    """
    _positive(batch=batch, seq=seq, act_bytes=act_bytes)
    if seq > cfg.block_size:
        raise ValueError(f"seq={seq} is longer than block_size={cfg.block_size}: use seq <= {cfg.block_size}")
    b, s, h, a, L, V = batch, seq, cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.vocab_size
    sbh = s * b * h
    mask = (1 if cfg.dropout > 0 else 0)          # bool dropout masks, one byte per element
    per_layer = {
        "layernorm inputs": 2 * sbh * act_bytes + 2 * 2 * s * b * 4,        # x for ln_1, ln_2 + fp32 mean/rstd
        "attention": (1 + 3 + 1) * sbh * act_bytes                         # c_attn input, q/k/v, output (= c_proj input)
        + (a * s * b * 4 if fused_attention else 2 * a * s * s * b * act_bytes)
        + mask * (sbh + (0 if fused_attention else a * s * s * b)),
        "mlp": (1 + 4 + 4) * sbh * act_bytes + mask * sbh,                  # c_fc input, GELU input, c_proj input
    }
    out = {k: L * v for k, v in per_layer.items()}
    out["embedding + head"] = (b * s * 8                                    # token ids for the embedding
                               + 2 * sbh * act_bytes + 2 * s * b * 4        # ln_f input and output, stats
                               + mask * sbh)
    out["logits"] = b * s * V * 4                                            # fp32 log-softmax kept by the loss
    return out


def model_shape(n_params: float, aspect: float = 128, head_dim: int = 128) -> tuple[int, int, int]:
    """(n_layer, n_embd, n_head) of a GPT of about n_params parameters, from N ≈ 12·L·d² (Kaplan et al. 2020,
    sec. 2.1) and the width/depth ratio d/L = aspect that large models share (Llama 2 7B, GPT-3: 128)."""
    _positive(n_params=n_params, aspect=aspect, head_dim=head_dim)
    d = (n_params * aspect / 12) ** (1 / 3)
    n_head = max(1, round(d / head_dim))
    return max(1, round(d / aspect)), n_head * head_dim, n_head


def estimate_training_memory(n_params: float, seq: int, batch: int, precision: str = "mixed",
                             optimizer: str = "adam", recompute: str = "none", zero_stage: int = 0,
                             world_size: int = 1) -> MemoryEstimate:
    """Bytes per GPU of a whole training step: states (estimate_state_memory) plus the activations of
    model_shape(n_params)'s layers (Korthikanti et al. 2022, sec. 4; doubled for fp32 activations).
    `batch` is the micro-batch on one GPU: ZeRO shards states, never activations."""
    states = estimate_state_memory(n_params, precision, optimizer, zero_stage, world_size)
    n_layer, n_embd, n_head = model_shape(n_params)
    per_layer = korthikanti_activation_bytes_per_layer(seq, batch, n_embd, n_head, recompute)
    return replace(states, activations=n_layer * per_layer * (1 if precision == "mixed" else 2))


def estimate_recompute_activation_bytes(cfg, batch: int, seq: int, checkpointed: int = 0, selective: bool = False,
                                        act_bytes: int = 4, fused_attention: bool = True,
                                        segments: int | None = None) -> dict[str, float]:
    """estimate_activation_bytes when `checkpointed` of the L blocks recompute in backward (lesson 02).

    A checkpointed block keeps only its input, s·b·h (Chen et al. 2016); a selective one (frugal.recompute's
    default keep) also keeps q/k/v, the attention output (+ log-sum-exp) and the MLP up-projection, 8·s·b·h more,
    and recomputes LayerNorm, GELU, dropout, the attention's output projection and the residual adds (the idea
    of Korthikanti et al. 2022, sec. 5). Other blocks keep all.
    `segments` checkpointed segments (default: one per block) keep one input each.
    """
    if not isinstance(checkpointed, int) or not 0 <= checkpointed <= cfg.n_layer:
        raise ValueError(f"checkpointed={checkpointed!r}: must be an integer in 0..n_layer={cfg.n_layer}")
    full = estimate_activation_bytes(cfg, batch, seq, act_bytes, fused_attention)
    b, s, h, a = batch, seq, cfg.n_embd, cfg.n_head
    sbh = s * b * h
    stored = cfg.n_layer - checkpointed
    out = {k: full[k] * stored / cfg.n_layer for k in ("layernorm inputs", "attention", "mlp")}
    out["checkpointed block inputs"] = (checkpointed if segments is None else segments) * sbh * act_bytes
    if selective:
        attention_core = a * s * b * 4 if fused_attention else a * s * s * b * act_bytes  # lse, or the scores
        out["kept matmul outputs"] = checkpointed * ((3 + 1 + 4) * sbh * act_bytes + attention_core)
    out["embedding + head"] = full["embedding + head"]
    out["logits"] = full["logits"]
    return out


def sqrt_segmentation(n_layer: int) -> tuple[int, int]:
    """(checkpointed blocks, checkpointed segments) of the √n segmentation (Chen et al. 2016): round(√L)
    segments of L // k blocks, all but the last recomputed (as torch's checkpoint_sequential)."""
    k = max(1, round(n_layer ** 0.5))
    return (n_layer // k) * (k - 1), k - 1


def largest_batch(cfg, seq: int, budget_bytes: float, checkpointed: int = 0, selective: bool = False,
                  act_bytes: int = 4, state_bytes: float = 0.0) -> int:
    """The largest batch whose predicted activations plus `state_bytes` (weights, grads, optimizer) fit the budget.

    Activation bytes are linear in the batch, so it is (budget - state) / bytes of one sequence, rounded down.
    """
    _positive(budget_bytes=budget_bytes)
    per_sequence = sum(estimate_recompute_activation_bytes(cfg, 1, seq, checkpointed, selective, act_bytes).values())
    return max(0, int((budget_bytes - state_bytes) // per_sequence))


def estimate_zero_comm_bytes(n_params: float, zero_stage: int = 0, world_size: int = 2,
                             bytes_per_value: int = 2) -> float:
    """Bytes each rank sends per step with ring collectives: plain DP's all-reduce is a reduce-scatter plus
    an all-gather, 2·Ψ·(N-1)/N values; stages 1 and 2 the same; stage 3 gathers the weights twice (forward
    and backward) and reduce-scatters once, 3·Ψ·(N-1)/N: 1.5× (ZeRO paper, sec. 7.2-7.3)."""
    _positive(n_params=n_params, world_size=world_size, bytes_per_value=bytes_per_value)
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage={zero_stage}: must be 0 (plain data parallel), 1, 2 or 3")
    passes = 3 if zero_stage == 3 else 2
    return passes * n_params * bytes_per_value * (world_size - 1) / world_size


def estimate_max_params(memory_gb: float, zero_stage: int = 0, world_size: int = 1, precision: str = "mixed",
                        optimizer: str = "adam", activation_bytes: float = 0.0) -> float:
    """The largest model whose weights, gradients and optimizer states fit in memory_gb per rank
    (after activation_bytes), inverting estimate_state_memory, which is linear in the parameter count."""
    _positive(memory_gb=memory_gb)
    per_param = estimate_state_memory(1.0, precision, optimizer, zero_stage, world_size).total
    return max(memory_gb * GB - activation_bytes, 0.0) / per_param


# ----------------------------------------------------------------------------- model parallel (lesson 05)

@dataclass
class ParallelLayout:
    """How a run's GPUs split the work: dp x tp x pp ranks (Narayanan et al. 2021, sec. 3)."""
    dp: int = 1   # data-parallel replicas, each on its own share of the batch
    tp: int = 1   # tensor-parallel ranks sharing every matrix of a layer (Megatron)
    pp: int = 1   # pipeline stages, each holding consecutive layers

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp


def pipeline_bubble_fraction(n_stages: int, n_micro: int) -> float:
    """(p-1)/(m+p-1): the idle share of a step with p stages and m micro-batches, for GPipe and 1F1B alike
    (Huang et al. 2019 sec. 2.2; Narayanan et al. 2021 sec. 2.2)."""
    _positive(n_stages=n_stages, n_micro=n_micro)
    return (n_stages - 1) / (n_micro + n_stages - 1)


def estimate_parallel_memory(n_layer: int, hidden: int, heads: int, vocab: int, seq: int, micro_batch: int,
                             layout: ParallelLayout, n_micro: int = 1, schedule: str = "1f1b",
                             precision: str = "mixed", optimizer: str = "adam", zero_stage: int = 0,
                             recompute: str = "none", act_bytes: int = 2) -> MemoryEstimate:
    """Bytes on one rank of the first pipeline stage (the fullest) of a GPT with 12h^2 + 13h parameters per layer.

    States: its n_layer/pp layers and the vocabulary-parallel embedding V·h, split tp ways, ZeRO over dp.
    Activations: Korthikanti et al. 2022 table 2, s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes per layer at 16 bits,
    for the micro-batches the first stage holds: m under GPipe, min(p, m) under 1F1B (their sec. 4.2.3)."""
    _positive(n_layer=n_layer, hidden=hidden, heads=heads, vocab=vocab, seq=seq, micro_batch=micro_batch,
              n_micro=n_micro)
    t, p = layout.tp, layout.pp
    for name, v in (("dp", layout.dp), ("tp", t), ("pp", p)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"ParallelLayout.{name}={v!r}: must be a positive integer")
    if n_layer % p:
        raise ValueError(f"n_layer={n_layer} does not split into pp={p} equal stages: pick pp dividing {n_layer}")
    if heads % t:
        raise ValueError(f"heads={heads} is not divisible by tp={t}: pick tp dividing {heads}")
    if schedule not in ("gpipe", "1f1b"):
        raise ValueError(f"schedule={schedule!r}: pick 'gpipe' or '1f1b'")
    layers = n_layer // p
    n_params = (layers * (12 * hidden ** 2 + 13 * hidden) + vocab * hidden) / t + seq * hidden
    mem = estimate_state_memory(n_params, precision, optimizer, zero_stage, layout.dp)
    sbh = seq * micro_batch * hidden
    per_layer = {"none": sbh * (10 + 24 / t + 5 * heads * seq / (hidden * t)),
                 "selective": sbh * (10 + 24 / t), "full": 2 * sbh}
    if recompute not in per_layer:
        raise ValueError(f"recompute={recompute!r}: pick 'none', 'selective' or 'full'")
    in_flight = n_micro if schedule == "gpipe" else min(p, n_micro)
    mem.activations = per_layer[recompute] * act_bytes / 2 * layers * in_flight
    return mem


def fits(n_params: float, gpu: str, activation_bytes: float = 0.0, **state_kwargs) -> bool:
    """Does a training run fit in one GPU's memory: states (estimate_state_memory) plus activations?"""
    mem = estimate_state_memory(n_params, **state_kwargs)
    return mem.total + activation_bytes <= get_gpu(gpu).memory_gb * GB
