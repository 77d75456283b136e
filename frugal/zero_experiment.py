"""Lesson 04's experiment: one rank's training run with our ZeRO stages beside torch's DDP and FSDP, and the
per-rank peak memory each should reach (what the notebook, the tests and the benchmark run).

A run is a TrainConfig (ZeroRun adds the few fields an experiment needs) and every step is frugal.train's
train_step. Torch's DistributedDataParallel and FSDP2 `fully_shard` appear only as references; 'bucket' is
lesson 03's DataParallelBucket, the yardstick for stage 2.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from frugal import estimate
from frugal.data_parallel import wrap
from frugal.dist import report
from frugal.measure import measure_time
from frugal.model import TinyGPT, preset
from frugal.train import PRECISIONS, TrainConfig, build, make_optimizer, make_scaler, train_step
from frugal.zero import CommCounter, ZeroDataParallel, ZeroStage1

# TrainConfig.data_parallel values compared here; 'fsdp' (torch's fully_shard) is the reference only this runs
COMPARED = ("ddp", "bucket", "zero1", "zero2", "zero3", "fsdp")
_COMPUTE_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}    # precision -> 16-bit compute weights


@dataclass
class ZeroRun(TrainConfig):
    """A TrainConfig run on the ranks of frugal.dist.launch(run_rank, world_size, run): batch_size is the global
    batch (each rank trains batch_size / world_size of it) and world_size must be the launch's. data_parallel
    also takes 'fsdp', torch's fully_shard, which TrainConfig's own loop does not; it is checked as 'zero3'.
    device is left to run_rank (None): each rank computes where its backend lives (NCCL: its GPU, gloo: CPU)."""
    model: str = "tiny"                     # frugal.model preset to train
    warmup: int = 1                         # steps left out of the timing median
    memory_fraction: float | None = None    # CUDA only: cap this process's memory (emulates a smaller GPU)
    return_params: bool = False             # return every parameter, whole, in fp32 (tests compare them)

    def __post_init__(self):
        if self.data_parallel not in COMPARED:
            raise ValueError(f"ZeroRun.data_parallel={self.data_parallel!r}: pick one of {COMPARED}")
        if self.precision == "fp8":
            raise ValueError("ZeroRun.precision='fp8': the ZeRO comparison's wrappers (ours and FSDP) keep their own "
                             "compute weights, which Float8Linear never sees; use precision='bf16'")
        fsdp = self.data_parallel == "fsdp"
        if fsdp:                            # TrainConfig does not know torch's FSDP: check the rest as stage 3
            self.data_parallel = "zero3"
        try:
            super().__post_init__()
        finally:
            if fsdp:
                self.data_parallel = "fsdp"
        if self.warmup < 0:
            raise ValueError(f"ZeroRun.warmup={self.warmup}: must be 0 or more steps")


class _CountAtPeak:
    """The optimizer train_step drives (ZeRO: the wrapper), untouched but for one thing: the first attribute
    train_step reads from it after backward (the clip or the step) first counts this rank's state bytes, the
    moment gradients peak, before stage 1 reduces them or zero_grad frees them."""

    def __init__(self, optimizer, count):
        self._optimizer, self._count, self.counted = optimizer, count, None

    def __getattr__(self, name):
        attr = getattr(self._optimizer, name)     # a missing one raises first: hasattr stays False
        if self.counted is None:
            self.counted = self._count()
        return attr


def _fully_shard(model: nn.Module, cfg: TrainConfig):
    """torch FSDP2 on each block, then the root; its optimizer is built after, on the sharded parameters."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard   # only here: not every torch has it
    mp = MixedPrecisionPolicy(param_dtype=_COMPUTE_DTYPE.get(cfg.precision))
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    return fully_shard(model, mp_policy=mp), make_optimizer(model, cfg)


def _wrap(model: nn.Module, cfg: TrainConfig, comm: CommCounter, optimizer):
    """(net, optimizer, comm) for cfg.data_parallel; ZeRO's wrapper is its own optimizer and counts its bytes,
    torch DDP's all-reduce is counted by a communication hook."""
    if cfg.data_parallel.startswith("zero"):
        zero = ZeroDataParallel(model, int(cfg.data_parallel[-1]), param_dtype=_COMPUTE_DTYPE.get(cfg.precision),
                                lr=cfg.lr, weight_decay=cfg.weight_decay, fused=next(model.parameters()).is_cuda)
        return zero, zero, zero.comm
    if cfg.data_parallel == "fsdp":
        return (*_fully_shard(model, cfg), comm)
    net = wrap(model, cfg.data_parallel, cfg.bucket_cap_mb)
    if cfg.data_parallel == "ddp":
        def counting_allreduce(counter, bucket):
            counter.add("all_reduce", bucket.buffer().numel() * bucket.buffer().element_size())
            return allreduce_hook(None, bucket)
        net.register_comm_hook(comm, counting_allreduce)
    return net, optimizer, comm


def run_rank(rank: int, world_size: int, run: ZeroRun) -> dict:
    """Train run.data_parallel for run.steps steps on this rank (launch it with frugal.dist.launch); returns the
    mean loss of each step over all ranks, the median step time, peak CUDA memory, counted state bytes (after
    the last backward) and bytes sent per step."""
    if run.world_size != world_size:
        raise ValueError(f"ZeroRun.world_size={run.world_size} but it runs on {world_size} ranks: pass "
                         f"world_size={world_size} (batch_size is the global batch, split over the ranks)")
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    if run.device is not None and torch.device(run.device).type != device.type:
        raise ValueError(f"ZeroRun.device={run.device!r} but this rank's backend runs on {device.type}: "
                         f"leave device=None")
    cfg = replace(run, device=str(device))
    # An earlier run in this process may still be alive in reference cycles (a wrapper's hooks point back at
    # it): collect it now, or its weights and optimizer states count in this run's peak.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if device.type == "cpu":
        torch.set_num_threads(1)        # gloo ranks share the CPU's cores: one thread each, no oversubscription
    if run.memory_fraction is not None and device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(run.memory_fraction, device)
    model, optimizer, next_batch, _ = build(preset(run.model), cfg, rank)   # recompute: frugal.recompute's
    batches = iter([next_batch() for _ in range(run.steps)])               # rank's shard of each global batch
    net, optimizer, comm = _wrap(model, cfg, CommCounter(world_size), optimizer)
    scaler = make_scaler(cfg, device)
    losses, state = [], {}

    def one_step():
        x, y = next(batches)
        last = len(losses) == run.steps - 1
        opt = _CountAtPeak(optimizer, lambda: _state_bytes(net, model, optimizer)) if last else optimizer
        losses.append(train_step(net, opt, x, y, cfg, scaler))   # the loss alone: (B, T, V) logits are not kept
        if last:
            state["bytes"] = opt.counted

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup = run.warmup if run.steps > run.warmup else 0
    step_s = measure_time(one_step, device, warmup=warmup, repeats=run.steps - warmup).median_s
    if run.data_parallel == "bucket":                # one all-reduce of every bucket per step
        for _ in range(run.steps):
            for flat in net._flat:
                comm.add("all_reduce", flat.numel() * flat.element_size())
    mean = torch.stack(losses).float()
    dist.all_reduce(mean)
    out = {"data_parallel": run.data_parallel, "rank": rank, "world_size": world_size,
           "losses": [v / world_size for v in mean.tolist()], "step_s": step_s,
           "tokens_per_s": run.batch_size * run.seq_len / step_s,
           "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
           "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
           "state_bytes": state["bytes"], "comm_bytes_per_step": comm.total / run.steps,
           "n_params": sum(p.numel() for p in TinyGPT(preset(run.model)).parameters()) if run.return_params else None}
    if run.return_params:
        params = net.full_parameters() if isinstance(net, ZeroStage1) else _plain_params(model)
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


def predict_peak_bytes(data_parallel: str, model_cfg, batch_per_rank: int, seq_len: int, world_size: int,
                       precision: str = "bf16") -> dict[str, float]:
    """What lives on one rank at the peak of run_rank(ZeroRun(data_parallel=..., ...)) on a GPU, by name, in bytes;
    batch_per_rank is ZeroRun.batch_size / world_size.

    The peak is the loss's backward: log_softmax's backward holds the fp32 log-probabilities it saved, their
    gradient and the logits' gradient (3 x 4·b·s·V bytes) while every block's activations are still saved and
    no parameter gradient exists yet (zero_grad sets them to None). On top sits what each plan keeps between
    steps: torch DDP keeps fp32 weights, Adam's m and v, its fp32 gradient buckets, and autocast's bf16 copies
    of every Linear weight (saved for backward); our stages 1-2 keep full 16-bit flat weights plus the 1/N
    shards of fp32 master weights and Adam; stage 3 keeps only shards (and gathers nothing at this moment);
    torch FSDP keeps shards and its root unit unsharded after forward. Activations are estimate.py's
    term-by-term count, except that autocast (train_step's, in every plan) runs LayerNorm in fp32, so each
    LayerNorm input is saved at 4 bytes.
    """
    if data_parallel not in COMPARED:
        raise ValueError(f"data_parallel={data_parallel!r}: pick one of {COMPARED}")
    zero_precisions = tuple(p for p in PRECISIONS if p != "fp8")   # TrainConfig refuses fp8 with ZeRO
    if precision not in zero_precisions:
        raise ValueError(f"precision={precision!r}: pick one of {zero_precisions}")
    n = world_size
    mixed = precision in _COMPUTE_DTYPE
    c = 2 if mixed else 4                                    # bytes of a compute value
    units, n_cast = _unit_numels(model_cfg)
    psi = sum(units)
    psi_pad = sum(-(-u // n) * n for u in units)             # each unit padded to a multiple of N
    b, s, h, L, V = batch_per_rank, seq_len, model_cfg.n_embd, model_cfg.n_layer, model_cfg.vocab_size
    acts = estimate.estimate_activation_bytes(model_cfg, b, s, act_bytes=c)
    out: dict[str, float] = {}
    if data_parallel in ("ddp", "bucket"):
        out["weights (fp32)"] = 4 * psi
        if mixed:
            out["autocast 16-bit weight copies"] = 2 * n_cast
        out["gradient buckets (fp32)"] = 4 * psi
        out["optimizer (Adam m, v)"] = 8 * psi
    elif data_parallel in ("zero1", "zero2"):
        out["weights (full, flat)"] = c * psi_pad
        if mixed:
            out["master weights (fp32 shard)"] = 4 * psi_pad / n
        out["optimizer (Adam m, v shard)"] = 8 * psi_pad / n
    else:
        out["master weights (fp32 shard)"] = 4 * psi_pad / n
        if mixed and data_parallel == "zero3":               # FSDP casts while it gathers: no 16-bit shard
            out["compute weights (shard)"] = c * psi_pad / n
        out["optimizer (Adam m, v shard)"] = 8 * psi_pad / n
        if data_parallel == "fsdp":
            out["root unit, unsharded"] = c * units[0]
    out["activations (blocks)"] = acts["layernorm inputs"] + acts["attention"] + acts["mlp"]
    if mixed:                                                # autocast's fp32 LayerNorms: inputs at 4 bytes
        out["activations (blocks)"] += L * 2 * s * b * h * (4 - c)
    out["activations (embedding, final norm)"] = acts["embedding + head"] + (s * b * h * (4 - c) if mixed else 0)
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
        report(name)                                       # a progress bar in the caller moves one run on
    return out
