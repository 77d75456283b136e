"""Lesson 04's experiment: one rank's training run with our ZeRO stages beside torch's DDP and FSDP, and the
per-rank peak memory each should reach (what the notebook, the tests and the benchmark run).

Torch's DistributedDataParallel and FSDP2 `fully_shard` appear here only as references; `bucket` is lesson 03's
DataParallelBucket, the yardstick for stage 2.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from frugal.zero import CommCounter, ZeroDataParallel, ZeroStage1

MODES = ("ddp", "bucket", "zero1", "zero2", "zero3", "fsdp")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ZeroRun:
    mode: str = "zero1"             # 'ddp' (torch DDP), 'bucket' (our DataParallelBucket, lesson 03),
                                    # 'zero1', 'zero2', 'zero3' (ours), 'fsdp' (torch fully_shard)
    model: str = "tiny"             # frugal.model preset
    steps: int = 4                  # optimizer steps
    batch_size: int = 4             # sequences per rank per step
    seq_len: int = 32               # tokens per sequence
    lr: float = 3e-3                # AdamW learning rate
    grad_clip: float | None = 1.0   # global gradient-norm clip; None = none
    dtype: str = "fp32"             # compute copies: 'fp32', or 'bf16'/'fp16' with fp32 master weights
    recompute: bool = False         # checkpoint every block (torch.utils.checkpoint, non-reentrant)
    seed: int = 0                   # same weights on every rank; batches differ by rank
    data: str = "synthetic"         # 'synthetic' (random tokens) or 'corpus' (the shipped text: loss falls)
    warmup: int = 1                 # steps left out of the timing median
    memory_fraction: float | None = None  # CUDA only: cap this process's memory (emulates a smaller GPU)
    return_params: bool = False     # return every parameter, whole, in fp32 (tests compare them)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"ZeroRun.mode={self.mode!r}: pick one of {MODES}")
        if self.data not in ("synthetic", "corpus"):
            raise ValueError(f"ZeroRun.data={self.data!r}: pick 'synthetic' or 'corpus'")
        if self.dtype not in DTYPES:
            raise ValueError(f"ZeroRun.dtype={self.dtype!r}: pick one of {tuple(DTYPES)}")


class _Recompute(nn.Module):
    """A block whose activations are recomputed in backward; the inner block stays the ZeRO unit."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        return checkpoint(self.block, x, use_reentrant=False)


def run_rank(rank: int, world_size: int, run: ZeroRun) -> dict:
    """Train run.mode for run.steps steps on this rank (launch it with frugal.dist.launch); returns the mean
    loss of each step over all ranks, step times, peak CUDA memory, counted state bytes and bytes sent."""
    import gc
    import statistics
    import time
    from frugal.data import corpus_tokens, get_batch, split, synthetic_batch
    from frugal.measure import synchronize
    from frugal.model import TinyGPT, preset

    device = torch.device(f"cuda:{torch.cuda.current_device()}") if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    # An earlier run in this process may still be alive in reference cycles (a wrapper's hooks point back at
    # it): collect it now, or its weights and optimizer states count in this run's peak.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if device.type == "cpu":
        torch.set_num_threads(1)        # gloo ranks share the CPU's cores: one thread each, no oversubscription
    if run.memory_fraction is not None and device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(run.memory_fraction, device)
    cfg = preset(run.model)
    torch.manual_seed(run.seed)
    model = TinyGPT(cfg).to(device)
    units = list(model.blocks)
    if run.recompute:
        for i, block in enumerate(units):
            model.blocks[i] = _Recompute(block)
    dtype = DTYPES[run.dtype]
    gen = torch.Generator().manual_seed(run.seed * 1000 + rank)
    if run.data == "corpus":
        tokens = split(corpus_tokens())[0]
        batches = [get_batch(tokens, run.batch_size, run.seq_len, gen, device) for _ in range(run.steps)]
    else:
        batches = [synthetic_batch(cfg.vocab_size, run.batch_size, run.seq_len, gen, device)
                   for _ in range(run.steps)]
    comm = CommCounter(world_size)
    autocast = nullcontext()
    if run.mode.startswith("zero"):
        net = ZeroDataParallel(model, int(run.mode[-1]), param_dtype=dtype, units=units, lr=run.lr)
        comm = net.comm
    elif run.mode in ("ddp", "bucket"):            # plain data parallel: fp32 weights, autocast to the compute dtype
        if run.mode == "bucket":
            from frugal.data_parallel import DataParallelBucket
            net = DataParallelBucket(model)
        else:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
            from torch.nn.parallel import DistributedDataParallel
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

            def counting_allreduce(counter, bucket):
                counter.add("all_reduce", bucket.buffer().numel() * bucket.buffer().element_size())
                return allreduce_hook(None, bucket)
            net.register_comm_hook(comm, counting_allreduce)
        opt = torch.optim.AdamW(model.parameters(), lr=run.lr)
        if dtype != torch.float32:
            autocast = torch.autocast(device.type, dtype=dtype)
    else:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=dtype if dtype != torch.float32 else None)
        for block in units:
            fully_shard(block, mp_policy=mp)
        net = fully_shard(model, mp_policy=mp)
        opt = torch.optim.AdamW(model.parameters(), lr=run.lr)
    losses, times, state_bytes = [], [], None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step, (x, y) in enumerate(batches):
        synchronize(device)
        t0 = time.perf_counter()
        with autocast:
            loss = net(x, y)[1]        # keep no reference to the (B, T, V) logits: they would live through backward
        loss.backward()
        if run.mode == "bucket":                       # one all-reduce of every bucket per step
            for flat in net._flat:
                comm.add("all_reduce", flat.numel() * flat.element_size())
        if step == run.steps - 1:
            state_bytes = _state_bytes(net, model, opt if not run.mode.startswith("zero") else None)
        if run.mode.startswith("zero"):
            if run.grad_clip is not None:
                net.clip_grad_norm_(run.grad_clip)
            net.step()
            net.zero_grad()
        else:
            if run.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - t0)
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world_size)
    timed = times[run.warmup:] if len(times) > run.warmup else times
    step_s = statistics.median(timed)
    out = {"mode": run.mode, "rank": rank, "world_size": world_size, "losses": losses, "step_s": step_s,
           "tokens_per_s": world_size * run.batch_size * run.seq_len / step_s,
           "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
           "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
           "state_bytes": state_bytes, "comm_bytes_per_step": comm.total / run.steps,
           "n_params": sum(p.numel() for p in TinyGPT(cfg).parameters()) if run.return_params else None}
    if run.return_params:
        params = net.full_parameters() if run.mode.startswith("zero") else _plain_params(model)
        out["params"] = {k: v.detach().float().cpu().clone() for k, v in params.items()}
    return out


def _plain_params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in model.named_modules():
        for attr, p in m._parameters.items():
            if p is not None:
                out[f"{name}.{attr}" if name else attr] = p.full_tensor() if hasattr(p, "full_tensor") else p
    return out


def _state_bytes(net, model: nn.Module, opt) -> dict[str, int] | None:
    """Counted bytes of weights, gradients and optimizer states on this rank (FSDP: its local shards)."""
    if isinstance(net, ZeroStage1):
        return net.memory_bytes()
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t
    ps = list(dict.fromkeys(model.parameters()))
    return {"weights": sum(local(p).nbytes for p in ps),
            "gradients": sum(local(p.grad).nbytes for p in ps if p.grad is not None),
            "optimizer": sum(local(t).nbytes for st in opt.state.values() for t in st.values()
                             if torch.is_tensor(t) and t.dim() > 0)}


def _unit_numels(cfg) -> tuple[list[int], int]:
    """Parameters of each ZeRO unit of a TinyGPT (root first, then one per block; the tied weight once) and
    of the parameters autocast casts to 16 bits (every nn.Linear's weight and bias, the tied lm_head too)."""
    from frugal.model import TinyGPT
    with torch.device("meta"):
        model = TinyGPT(cfg)
    seen: set[int] = set()
    units = []
    for block in model.blocks:
        ps = [p for p in block.parameters() if id(p) not in seen]
        seen.update(id(p) for p in ps)
        units.append(sum(p.numel() for p in ps))
    root = sum(p.numel() for p in dict.fromkeys(model.parameters()) if id(p) not in seen)
    cast = {id(p): p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    return [root] + units, sum(cast.values())


def predict_peak_bytes(mode: str, cfg, batch: int, seq: int, world_size: int, dtype: str = "bf16") -> dict[str, float]:
    """What lives on one rank at the peak of run_rank(ZeroRun(mode, ...)) on a GPU, by name, in bytes.

    The peak is the loss's backward: log_softmax's backward holds the fp32 log-probabilities it saved, their
    gradient and the logits' gradient (3 x 4·b·s·V bytes) while every block's activations are still saved and
    no parameter gradient exists yet (zero_grad sets them to None). On top sits what the mode keeps between
    steps: torch DDP keeps fp32 weights, Adam's m and v, its fp32 gradient buckets, and autocast's bf16 copies
    of every Linear weight (saved for backward); our stages 1-2 keep full 16-bit flat weights plus the 1/N
    shards of fp32 master weights and Adam; stage 3 keeps only shards (and gathers nothing at this moment);
    torch FSDP keeps shards and its root unit unsharded after forward. Activations are estimate.py's
    term-by-term count, except that under autocast the residual stream (and so each LayerNorm input) is fp32.
    """
    from frugal import estimate
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: pick one of {MODES}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: pick one of {tuple(DTYPES)}")
    n = world_size
    mixed = dtype != "fp32"
    c = 2 if mixed else 4                                    # bytes of a compute value
    units, n_cast = _unit_numels(cfg)
    psi = sum(units)
    psi_pad = sum(-(-u // n) * n for u in units)             # each unit padded to a multiple of N
    b, s, h, L, V = batch, seq, cfg.n_embd, cfg.n_layer, cfg.vocab_size
    acts = estimate.estimate_activation_bytes(cfg, b, s, act_bytes=c)
    out: dict[str, float] = {}
    if mode in ("ddp", "bucket"):
        out["weights (fp32)"] = 4 * psi
        if mixed:
            out["autocast 16-bit weight copies"] = 2 * n_cast
        out["gradient buckets (fp32)"] = 4 * psi
        out["optimizer (Adam m, v)"] = 8 * psi
    elif mode in ("zero1", "zero2"):
        out["weights (full, flat)"] = c * psi_pad
        if mixed:
            out["master weights (fp32 shard)"] = 4 * psi_pad / n
        out["optimizer (Adam m, v shard)"] = 8 * psi_pad / n
    else:
        out["master weights (fp32 shard)"] = 4 * psi_pad / n
        if mixed and mode == "zero3":                        # FSDP casts while it gathers: no 16-bit shard
            out["compute weights (shard)"] = c * psi_pad / n
        out["optimizer (Adam m, v shard)"] = 8 * psi_pad / n
        if mode == "fsdp":
            out["root unit, unsharded"] = c * units[0]
    out["activations (blocks)"] = acts["layernorm inputs"] + acts["attention"] + acts["mlp"]
    if mode in ("ddp", "bucket") and mixed:                  # fp32 residual stream: LayerNorm inputs at 4 bytes
        out["activations (blocks)"] += L * 2 * s * b * h * (4 - c)
    out["activations (embedding, final norm)"] = acts["embedding + head"] + (
        s * b * h * (4 - c) if mode in ("ddp", "bucket") and mixed else 0)
    out["loss: fp32 log-probs, their grad, logits' grad"] = 3 * 4 * b * s * V
    return out


def peak_by_kind(parts: dict[str, float]) -> dict[str, float]:
    """predict_peak_bytes' parts summed into the plot's four kinds (weights, gradients, optimizer, activations)."""
    kind = lambda name: ("optimizer" if "optimizer" in name or "master" in name else "gradients" if "grad" in name
                         and not name.startswith("loss") else "weights" if "weight" in name or "unit" in name
                         else "activations")
    out: dict[str, float] = {}
    for name, v in parts.items():
        out[kind(name)] = out.get(kind(name), 0.0) + v
    return out


def run_many(rank: int, world_size: int, runs: dict[str, ZeroRun]) -> dict[str, dict]:
    """run_rank for each named run, one after the other in one launch (spawning ranks costs seconds).
    A run that raises (torch FSDP where this torch lacks it, say) reports {'error': ...} and the rest go on."""
    out = {}
    for name, run in runs.items():
        try:
            out[name] = run_rank(rank, world_size, run)
        except Exception as e:  # noqa: BLE001 - every rank raises alike: report it, keep the others
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out
