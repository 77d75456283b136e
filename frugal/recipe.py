"""The largest model a memory budget can train: naive fp32 Adam against the full frugal recipe.

A plan is a frugal.train.TrainConfig, the switches of every lesson. For each TinyGPT size of a growing
family, the estimator (frugal.estimate) adds up weights, gradients, Adam states (ZeRO paper, Rajbhandari et
al. 2020, sec. 3.1), saved activations (Korthikanti et al. 2022, sec. 4) and the logits' working memory; the
largest size under the budget is the frontier. A real training step (frugal.train) can check the answer: under
torch.cuda.set_per_process_memory_fraction on a GPU, by counting the bytes of states and saved tensors on CPU.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from frugal import train
from frugal.device import catalog_name, pick_device
from frugal.estimate import (dollars_per_token, estimate_activation_bytes, estimate_recompute_activation_bytes,
                             estimate_state_memory, get_gpu, sqrt_segmentation)
from frugal.measure import (count_saved_tensors, flops_per_token, measure_activation_bytes, measure_cpu_peak_flops,
                            mfu)
from frugal.measure_training import train_with_reports
from frugal.model import GPTConfig, TinyGPT
from frugal.recompute import from_spec
from frugal.train import TrainConfig


def naive_plan() -> TrainConfig:
    """fp32 weights, gradients and Adam, every activation stored, one GPU: what a first script does."""
    return TrainConfig(precision="fp32", recompute="none", world_size=1)


def recipe_plan(world_size: int = 1) -> TrainConfig:
    """bf16 autocast, full recompute and ZeRO-3 over world_size GPUs (stage 3 is a no-op on one GPU).

    batch_size is 8 sequences per GPU, the search's default; the search sets its own batch per GPU and seq.
    """
    return TrainConfig(precision="bf16", recompute="full", data_parallel="zero3", world_size=world_size,
                       batch_size=8 * world_size)


def named_plans(world_size: int = 8) -> dict[str, TrainConfig]:
    """The lesson's three plans by name: naive, the recipe on one GPU, the recipe sharded over world_size."""
    return {"naive fp32 Adam": naive_plan(), "full recipe": recipe_plan(1),
            f"full recipe, ZeRO-3 over {world_size}": recipe_plan(world_size)}


# (n_layer, n_embd, n_head): from a CPU toy to GPT-2 medium, then wider and deeper (head size 64 from 768 on).
SHAPES = [(2, 64, 4), (2, 128, 4), (4, 128, 4), (4, 256, 4), (6, 384, 6), (8, 512, 8), (12, 768, 12),
          (16, 1024, 16), (24, 1024, 16), (24, 1280, 20), (24, 1536, 24), (28, 1792, 28), (32, 2048, 32),
          (32, 2560, 40), (36, 3072, 48), (40, 4096, 64)]


def size_family(vocab_size: int = 50304, block_size: int = 1024) -> list[GPTConfig]:
    """TinyGPT configs of growing width and depth, smallest first (3M to 8B parameters at GPT-2's vocabulary; from 0.1M at 256 tokens)."""
    return [GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=L, n_head=a, n_embd=d)
            for L, d, a in SHAPES]


def count_params(cfg: GPTConfig) -> int:
    """TinyGPT's parameters (tied embedding once), from the config alone: 12·L·d² + 13·L·d + (V + T + 2)·d."""
    d, L = cfg.n_embd, cfg.n_layer
    per_block = 12 * d * d + 13 * d if cfg.bias else 12 * d * d + 2 * d
    return L * per_block + (cfg.vocab_size + cfg.block_size) * d + (2 * d if cfg.bias else d)


def _sixteen_bit(plan: TrainConfig) -> bool:
    """fp16/bf16 autocast: 16-bit activations, and the estimator's mixed-precision states."""
    return plan.precision in ("bf16", "fp16")


def _zero_stage(plan: TrainConfig) -> int:
    """The ZeRO stage that shards anything: 1-3 for data_parallel='zero1'..'zero3' over ranks, else 0."""
    return int(plan.data_parallel[-1]) if plan.data_parallel.startswith("zero") and plan.world_size > 1 else 0


def estimate_training_bytes(cfg: GPTConfig, plan: TrainConfig, batch: int, seq: int) -> dict[str, float]:
    """Bytes per GPU of one training step at its peak, by kind: states, saved activations, working memory.

    `batch` is per GPU (plan.batch_size is not read). Activations: estimate_activation_bytes at 4 bytes (fp32,
    tf32) or 2 (bf16, fp16). With full recompute only each block's input stays (fp32: autocast keeps the
    residual stream in fp32) plus one block rebuilt in backward. Working: the fp32 logits' gradient and its
    input's (2·b·s·V·4; none with the fused head), and under ZeRO-3 two gathered blocks.
    """
    if plan.recompute not in ("none", "full"):
        raise ValueError(f"recompute={plan.recompute!r}: the search prices 'none' or 'full'; "
                         f"estimate_recipe prices every policy")
    n, sixteen, zero = count_params(cfg), _sixteen_bit(plan), _zero_stage(plan)
    states = estimate_state_memory(n, "mixed" if sixteen else "fp32", "adam", zero, plan.world_size)
    acts = estimate_activation_bytes(cfg, batch, seq, act_bytes=2 if sixteen else 4)
    if plan.fused_cross_entropy:
        acts["logits"] = 0.0                               # chunked head: the (B·T, V) logits never exist
    block_kinds = ("layernorm inputs", "attention", "mlp")
    if plan.recompute == "full":
        one_block = sum(acts[k] for k in block_kinds) / cfg.n_layer
        activations = cfg.n_layer * batch * seq * cfg.n_embd * 4 + one_block \
            + acts["embedding + head"] + acts["logits"]
    else:
        activations = sum(acts.values())
    working = 0.0 if plan.fused_cross_entropy else 2 * batch * seq * cfg.vocab_size * 4
    if zero == 3:
        block_params = (n - (cfg.vocab_size + cfg.block_size) * cfg.n_embd) / cfg.n_layer
        working += 2 * block_params * (2 if sixteen else 4) + cfg.vocab_size * cfg.n_embd * (2 if sixteen else 4)
    out = states.as_dict()
    out.update(activations=activations, working=working)
    return out


@dataclass
class SizeRow:
    """One size of the family under one plan."""
    n_layer: int
    n_embd: int
    params: int
    estimated_bytes: float
    fits_estimate: bool
    verified: bool | None = None          # None: not tried
    measured_bytes: int | None = None     # peak on a GPU, counted bytes on CPU (a failed GPU try: None)


@dataclass
class SearchResult:
    """Every size of a family under one plan, estimated and (where tried) verified."""
    plan: TrainConfig
    budget_bytes: float
    batch: int                            # sequences per GPU
    seq: int
    rows: list[SizeRow] = field(default_factory=list)

    def _largest(self, ok: Callable[[SizeRow], bool]) -> SizeRow | None:
        good = [r for r in self.rows if ok(r)]
        return max(good, key=lambda r: r.params) if good else None

    @property
    def largest_estimated(self) -> SizeRow | None:
        return self._largest(lambda r: r.fits_estimate)

    @property
    def largest_verified(self) -> SizeRow | None:
        return self._largest(lambda r: r.verified is True)


def largest_that_fits(budget_bytes: float, plan: TrainConfig, batch: int = 8, seq: int | None = None,
                      family: list[GPTConfig] | None = None,
                      verify: Callable[[GPTConfig], tuple[bool, int | None]] | None = None,
                      max_tries: int = 6) -> SearchResult:
    """Estimate every size of the family under the plan; then, given `verify`, check the frontier by training.

    `batch` is per GPU: each of plan.world_size ranks holds that many sequences of `seq` tokens (None: each
    size's block_size). verify(cfg) -> (fits, bytes): it starts at the estimator's pick and walks up while
    sizes fit, down while they do not, at most max_tries sizes, so `largest_verified` is the largest size
    that really trained.
    """
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes={budget_bytes}: must be positive (16e9 is a T4)")
    if batch <= 0:
        raise ValueError(f"batch={batch}: must be positive")
    family = sorted(family or size_family(), key=count_params)
    result = SearchResult(plan, budget_bytes, batch, seq or family[0].block_size)
    for cfg in family:
        s = seq or cfg.block_size
        if s > cfg.block_size:
            raise ValueError(f"seq={s} is longer than block_size={cfg.block_size}: lower seq")
        total = sum(estimate_training_bytes(cfg, plan, batch, s).values())
        result.rows.append(SizeRow(cfg.n_layer, cfg.n_embd, count_params(cfg), total, total <= budget_bytes))
    if verify is None:
        return result
    fitting = [i for i, r in enumerate(result.rows) if r.fits_estimate]
    i = fitting[-1] if fitting else 0
    direction = None
    for _ in range(max_tries):
        ok, nbytes = verify(family[i])
        result.rows[i].verified, result.rows[i].measured_bytes = ok, nbytes
        step = 1 if ok else -1
        if direction is not None and step != direction:
            break                                          # crossed the frontier
        direction = step
        i += step
        if not 0 <= i < len(family) or result.rows[i].verified is not None:
            break
    return result


# ----------------------------------------------------------------------------- verification by training

def _one_device(plan: TrainConfig, batch: int, seq: int, device: torch.device) -> TrainConfig:
    """The plan as the TrainConfig of a real step on one device: batch sequences of seq random tokens."""
    if plan.world_size != 1:
        raise ValueError(f"a real step runs on one device, so it cannot check a plan sharded over "
                         f"world_size={plan.world_size}: verify with recipe_plan(world_size=1)")
    return replace(plan, batch_size=batch, seq_len=seq, device=str(device), data="synthetic", progress=False)


def train_step_fits_gpu(cfg: GPTConfig, plan: TrainConfig, batch: int, seq: int, budget_bytes: float,
                        device: torch.device | str = "cuda") -> tuple[bool, int | None]:
    """Two real training steps (train.train_step) with the caching allocator capped at budget_bytes;
    (fits, peak bytes). Two steps because Adam's states appear in the first step's update: the second shows
    the steady peak."""
    device = torch.device(device)
    step_cfg = _one_device(plan, batch, seq, device)
    total = torch.cuda.get_device_properties(device).total_memory
    if budget_bytes > total:
        raise ValueError(f"budget {budget_bytes / 1e9:.1f} GB is more than this GPU's {total / 1e9:.1f} GB: "
                         f"verify on a larger GPU or lower the budget")
    torch.cuda.empty_cache()
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(budget_bytes / total, index)
    torch.cuda.reset_peak_memory_stats(device)
    model = opt = x = y = None
    try:
        model, opt, next_batch, device = train.build(cfg, step_cfg)
        scaler = train.make_scaler(step_cfg, device)
        x, y = next_batch()
        for _ in range(2):
            train.train_step(model, opt, x, y, step_cfg, scaler)
        torch.cuda.synchronize(device)
        return True, torch.cuda.max_memory_allocated(device)
    except torch.OutOfMemoryError:
        return False, None
    finally:
        del model, opt, x, y
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0, index)


def counted_training_bytes(cfg: GPTConfig, plan: TrainConfig, batch: int, seq: int) -> int:
    """Bytes of one CPU training step, counted: parameters, gradients, Adam states and saved tensors.

    Transient buffers (the logits' gradient, a recomputed block) are not counted: a CPU has no allocator cap.
    """
    step_cfg = _one_device(plan, batch, seq, torch.device("cpu"))
    model, opt, next_batch, device = train.build(cfg, step_cfg)
    x, y = next_batch()
    train.train_step(model, opt, x, y, step_cfg, train.make_scaler(step_cfg, device))   # creates Adam's states
    params = list(model.parameters())
    with train.autocast(step_cfg, device), count_saved_tensors(exclude=params) as saved:
        _, loss = model(x, y)
    loss.backward()                                        # the gradients, counted below
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return nbytes(params) + nbytes(p.grad for p in params) + nbytes(state) + saved.nbytes


def verifier(plan: TrainConfig, batch: int, seq: int, budget_bytes: float,
             device: torch.device | str = "cpu") -> Callable[[GPTConfig], tuple[bool, int | None]]:
    """The `verify` for largest_that_fits (batch per GPU): a capped real step on a GPU, counted bytes on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda cfg: train_step_fits_gpu(cfg, plan, batch, seq, budget_bytes, device)

    def on_cpu(cfg):
        n = counted_training_bytes(cfg, plan, batch, seq)
        return n <= budget_bytes, n
    return on_cpu


# ----------------------------------------------------------------------------- the learner's plan: predicted, then measured

def _peak_dtype(gpu, precision: str) -> str:
    """The catalog dtype whose peak a run's matmuls can reach: a T4 has no bf16, so bf16 is priced at its fp16."""
    if precision in gpu.peak_tflops:
        return precision
    return "fp16" if precision in ("bf16", "fp16") and "fp16" in gpu.peak_tflops else "fp32"


def _recomputed(model_cfg: GPTConfig, spec: str) -> tuple[int, bool, int | None]:
    """(checkpointed blocks, selective?, sqrt segments) of a TrainConfig.recompute spec."""
    rc = from_spec(spec)
    if rc is None:
        return 0, False, None
    segments = sqrt_segmentation(model_cfg.n_layer)[1] if rc.policy == "sqrt" else None
    return len(rc.checkpointed(model_cfg.n_layer)), rc.policy == "selective", segments


def estimate_recipe(model_cfg: GPTConfig, cfg: TrainConfig, gpu: str = "T4", mfu: float = 0.4) -> dict:
    """What estimate.py predicts for a TrainConfig on cfg.world_size catalog GPUs: bytes per rank by kind,
    tokens/s at `mfu` and US$ per billion tokens. Recomputed blocks (not selective) add their forward's
    2·12·d² FLOPs per layer and token to the 6N + 12·L·d·T the MFU counts (PaLM, appendix B)."""
    card = get_gpu(gpu)
    n, b, s = count_params(model_cfg), cfg.batch_size // cfg.world_size, cfg.seq_len
    zero, sixteen = _zero_stage(cfg), _sixteen_bit(cfg)
    # autocast keeps fp32 weights, gradients and Adam (16 B/param); ZeRO in bf16 keeps 16-bit weights and gradients
    states = estimate_state_memory(n, "mixed" if zero and sixteen else "fp32", "adam", zero, cfg.world_size)
    k, selective, segments = _recomputed(model_cfg, cfg.recompute)
    acts = estimate_recompute_activation_bytes(model_cfg, b, s, k, selective, act_bytes=2 if sixteen else 4,
                                               segments=segments)
    if sixteen:                                            # autocast leaves the residual stream in fp32
        acts["checkpointed block inputs"] *= 2
    if cfg.fused_cross_entropy:
        acts["logits"] = 0.0                               # chunked head: the (B·T, V) logits never exist
    working = 0.0 if cfg.fused_cross_entropy else 2 * b * s * model_cfg.vocab_size * 4   # fp32 logits' gradients
    d, L = model_cfg.n_embd, model_cfg.n_layer
    fpt = flops_per_token(n - model_cfg.block_size * d, L, d, s)
    extra = 0 if selective else 2 * 12 * d * d * k          # a recomputed block's forward matmuls, per token
    dtype = _peak_dtype(card, cfg.precision)
    per_gpu = card.peak_flops(dtype) * mfu / (fpt + extra)
    tokens_per_s = per_gpu * cfg.world_size
    bytes_by_kind = {**states.as_dict(), "activations": sum(acts.values()), "working": working}
    return {"gpu": gpu, "peak_dtype": dtype, "mfu_assumed": mfu, "params": n, "flops_per_token": fpt,
            "recompute_flops_per_token": extra, "tokens_per_s": tokens_per_s,
            "dollars_per_billion_tokens": dollars_per_token(tokens_per_s, gpu, cfg.world_size) * 1e9,
            "bytes": bytes_by_kind, "activation_bytes": sum(acts.values()),
            "total_bytes": sum(bytes_by_kind.values())}


def measure_recipe(model_cfg: GPTConfig, cfg: TrainConfig, gpu: str = "T4", cpu_peak_flops: float | None = None,
                   on_report=None) -> dict:
    """Train cfg for real (frugal.train.train) and report tokens/s, memory, MFU and US$ per billion tokens.

    Memory: the fullest rank's CUDA peak on a GPU; on CPU the bytes one forward saves for backward, counted.
    MFU: against the GPU's catalog peak on a GPU, this CPU's measured matmul peak on CPU. Price: on a GPU
    the measured speed at `gpu`'s catalog price; on CPU the measured MFU carried to `gpu` (a CPU has no price).
    on_report(rank, message): hears each step end and the ranks of a cfg.world_size > 1 run join and finish (a
    progress bar).
    """
    card = get_gpu(gpu)
    result = train_with_reports(model_cfg, cfg, on_report)
    device = pick_device(cfg.device)
    times = result.column("time_s")
    warm = 3 if len(times) > 6 else 1 if len(times) > 2 else 0   # compile and allocator warm-up
    step_s = statistics.median(times[warm:])
    tokens_per_s = cfg.batch_size * cfg.seq_len / step_s
    mcfg = result.model.cfg
    d, L = mcfg.n_embd, mcfg.n_layer
    fpt = flops_per_token(count_params(mcfg) - mcfg.block_size * d, L, d, cfg.seq_len)
    on_gpu = device.type == "cuda"
    here = catalog_name() if on_gpu else None
    if here:
        peak = get_gpu(here).peak_flops(_peak_dtype(get_gpu(here), cfg.precision)) * cfg.world_size
        peak_source = f"{cfg.world_size} x {here} data sheet"
    else:
        peak = cpu_peak_flops or measure_cpu_peak_flops()
        peak_source = "this CPU's measured fp32 matmul peak"
    util = mfu(tokens_per_s, fpt, peak)
    if on_gpu:
        memory, kind = max(r.peak_memory_bytes or 0 for r in result.history), "peak CUDA memory"
        priced = tokens_per_s
    else:                                                    # count on an eager copy (hooks and compile disagree)
        counter = TinyGPT(mcfg)
        counter.load_state_dict(result.model.state_dict())
        counter.recompute, counter.fused_cross_entropy = from_spec(cfg.recompute), cfg.fused_cross_entropy
        x, y = train.batch_fn(replace(cfg, world_size=1, batch_size=cfg.batch_size // cfg.world_size),
                              mcfg.vocab_size, torch.device("cpu"))()
        with train.autocast(cfg, torch.device("cpu")):
            memory = measure_activation_bytes(counter, x, y)
        kind = "saved activations (counted)"
        priced = util * card.peak_flops(_peak_dtype(card, cfg.precision)) * cfg.world_size / fpt
    return {"loss": result.column("loss"), "step_s": step_s, "tokens_per_s": tokens_per_s, "mfu": util,
            "peak_source": peak_source, "memory_bytes": memory, "memory_kind": kind, "flops_per_token": fpt,
            "priced_tokens_per_s": priced,
            "dollars_per_billion_tokens": dollars_per_token(priced, gpu, cfg.world_size) * 1e9}
