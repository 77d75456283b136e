"""Megatron tensor parallelism from scratch: split each matrix of a TinyGPT block across ranks.

Shoeybi et al. 2019 ("Megatron-LM"), sec. 3: the MLP's first matrix is split by columns and its second by
rows (eq. 3), attention is split by heads, so a block needs one all-reduce in forward (g) and one in
backward (f) per MLP and per attention: 4 all-reduces of a (B, T, C) tensor per layer and step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from frugal.model import GPTConfig


@dataclass
class CommLog:
    """The all-reduces this rank issued, one event per call: where, phase and bytes (a list, not a global)."""
    events: list[dict] = field(default_factory=list)

    def record(self, where: str, phase: str, t: torch.Tensor) -> None:
        self.events.append({"where": where, "phase": phase, "elements": t.numel(),
                            "bytes": t.numel() * t.element_size()})

    @property
    def calls(self) -> int:
        return len(self.events)

    @property
    def bytes(self) -> int:
        return sum(e["bytes"] for e in self.events)

    def clear(self) -> None:
        self.events.clear()


def _all_reduce(x: torch.Tensor, group, log: CommLog | None, where: str, phase: str) -> torch.Tensor:
    x = x.contiguous().clone()         # all_reduce works in place; never overwrite autograd's tensor
    if log is not None:
        log.record(where, phase, x)
    dist.all_reduce(x, group=group)
    return x


class CopyToParallelRegion(torch.autograd.Function):
    """Megatron's `f` (Shoeybi et al. 2019, sec. 3, fig. 3a): identity forward, all-reduce backward.

    Every rank feeds the same X into its column shard, so X's gradient is the sum of each shard's part."""

    @staticmethod
    def forward(ctx, x, group, log, where):
        ctx.group, ctx.log, ctx.where = group, log, where
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group, ctx.log, ctx.where, "backward"), None, None, None


class ReduceFromParallelRegion(torch.autograd.Function):
    """Megatron's `g` (Shoeybi et al. 2019, sec. 3, fig. 3a): all-reduce forward, identity backward.

    Each row shard yields a partial sum of Y = X·B; the all-reduce adds them into the full output."""

    @staticmethod
    def forward(ctx, x, group, log, where):
        return _all_reduce(x, group, log, where, "forward")

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def f(x: torch.Tensor, group=None, log: CommLog | None = None, where: str = "f") -> torch.Tensor:
    """The conjugate `f` of Megatron (identity forward, all-reduce backward)."""
    return CopyToParallelRegion.apply(x, group, log, where)


def g(x: torch.Tensor, group=None, log: CommLog | None = None, where: str = "g") -> torch.Tensor:
    """The conjugate `g` of Megatron (all-reduce forward, identity backward)."""
    return ReduceFromParallelRegion.apply(x, group, log, where)


def divide(n: int, world_size: int, what: str) -> int:
    """n / world_size, or a ValueError naming the fix when it does not divide."""
    if n % world_size:
        good = [w for w in range(1, n + 1) if n % w == 0]
        raise ValueError(f"{what}={n} is not divisible by the tensor-parallel world size {world_size}: "
                         f"use a world size that divides it ({good[:8]}) or change the model size")
    return n // world_size


def _tp_world(group) -> tuple[int, int]:
    if not dist.is_initialized():
        raise RuntimeError("tensor-parallel layers need a process group: run them inside frugal.dist.launch")
    return dist.get_rank(group), dist.get_world_size(group)


def _check_split(n: int, rank: int, world_size: int, what: str) -> None:
    """An even split of n over world_size ranks, and a rank that exists (a negative one would wrap around)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: must be a whole number >= 1")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r}: pick a rank in 0..{world_size - 1}")
    if n % world_size:
        raise ValueError(f"{n} {what} do not split evenly over world_size={world_size}: pick a world size that "
                         f"divides {n}")


def shard_columns(full: torch.Tensor, rank: int, world_size: int, parts: int = 1) -> torch.Tensor:
    """This rank's slice of a column-parallel weight (out, in) or bias (out,): rows of out, per part.

    parts=3 slices q, k and v separately, so rank r gets the same heads of each (Megatron sec. 3, fig. 3b)."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1 or full.shape[0] % parts:
        raise ValueError(f"parts={parts!r}: must be a whole number >= 1 that divides the {full.shape[0]} output rows")
    _check_split(full.shape[0] // parts, rank, world_size, "output rows per part")
    chunks = full.chunk(parts, dim=0)
    return torch.cat([c.chunk(world_size, dim=0)[rank] for c in chunks], dim=0).clone()


def shard_rows(full: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's slice of a row-parallel weight (out, in): a block of in-features."""
    _check_split(full.shape[1], rank, world_size, "input features")
    return full.chunk(world_size, dim=1)[rank].clone()


class ColumnParallelLinear(nn.Module):
    """Y_r = f(X)·A_r^T + b_r: rank r holds out_features/world_size output columns (Megatron eq. 3, A = [A_1, A_2])."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group=None,
                 log: CommLog | None = None, name: str = "column"):
        super().__init__()
        self.rank, self.world_size = _tp_world(group)
        self.group, self.log, self.name = group, log, name
        self.out_per_rank = divide(out_features, self.world_size, "out_features")
        self.weight = nn.Parameter(torch.empty(self.out_per_rank, in_features))   # (out/ws, in)
        self.bias = nn.Parameter(torch.zeros(self.out_per_rank)) if bias else None
        nn.init.normal_(self.weight, std=0.02)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group=None, log: CommLog | None = None, parts: int = 1,
                    name: str = "column") -> "ColumnParallelLinear":
        """This rank's shard of a full nn.Linear (same weights on every rank before the split)."""
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group, log, name)
        with torch.no_grad():
            m.weight.copy_(shard_columns(linear.weight, m.rank, m.world_size, parts))
            if m.bias is not None:
                m.bias.copy_(shard_columns(linear.bias, m.rank, m.world_size, parts))
        return m.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(f(x, self.group, self.log, f"{self.name}.f"), self.weight, self.bias)  # (..., out/ws)


class RowParallelLinear(nn.Module):
    """Y = g(X_r·B_r^T) + b: rank r holds in_features/world_size input rows; the bias is added once, after g."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group=None,
                 log: CommLog | None = None, name: str = "row"):
        super().__init__()
        self.rank, self.world_size = _tp_world(group)
        self.group, self.log, self.name = group, log, name
        self.in_per_rank = divide(in_features, self.world_size, "in_features")
        self.weight = nn.Parameter(torch.empty(out_features, self.in_per_rank))   # (out, in/ws)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None     # replicated
        nn.init.normal_(self.weight, std=0.02)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group=None, log: CommLog | None = None,
                    name: str = "row") -> "RowParallelLinear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group, log, name)
        with torch.no_grad():
            m.weight.copy_(shard_rows(linear.weight, m.rank, m.world_size))
            if m.bias is not None:
                m.bias.copy_(linear.bias)
        return m.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = g(F.linear(x, self.weight), self.group, self.log, f"{self.name}.g")   # (..., out), summed over ranks
        return y + self.bias if self.bias is not None else y


def check_config(cfg: GPTConfig, world_size: int) -> None:
    """Refuse a config that cannot be split world_size ways: heads, MLP hidden size, dropout."""
    if cfg.dropout > 0:
        raise ValueError(f"dropout={cfg.dropout}: tensor-parallel ranks would draw different masks on the replicated "
                         f"activations (Megatron keeps a per-region RNG state for that); use dropout=0.0")
    divide(cfg.n_head, world_size, "n_head")
    divide(4 * cfg.n_embd, world_size, "MLP hidden size 4*n_embd")


class TensorParallelMLP(nn.Module):
    """GELU(f(X)·A_r)·B_r, then g: the MLP of Megatron eq. 3 with 4C/world_size hidden units per rank."""

    def __init__(self, c_fc: ColumnParallelLinear, c_proj: RowParallelLinear):
        super().__init__()
        self.c_fc, self.gelu, self.c_proj = c_fc, nn.GELU(), c_proj

    @classmethod
    def from_mlp(cls, mlp: nn.Module, group=None, log: CommLog | None = None, name: str = "mlp"):
        _, ws = _tp_world(group)
        divide(mlp.c_fc.out_features, ws, "MLP hidden size 4*n_embd")
        return cls(ColumnParallelLinear.from_linear(mlp.c_fc, group, log, name=f"{name}.c_fc"),
                   RowParallelLinear.from_linear(mlp.c_proj, group, log, name=f"{name}.c_proj"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))                          # (B, T, C)


class TensorParallelAttention(nn.Module):
    """Causal self-attention with n_head/world_size heads per rank (Megatron sec. 3, fig. 3b): q, k, v are
    column-parallel by head, the output projection row-parallel, so heads never talk across ranks."""

    def __init__(self, c_attn: ColumnParallelLinear, c_proj: RowParallelLinear, n_head_local: int):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = c_attn, c_proj, n_head_local

    @classmethod
    def from_attention(cls, attn: nn.Module, group=None, log: CommLog | None = None, name: str = "attn"):
        _, ws = _tp_world(group)
        n_local = divide(attn.n_head, ws, "n_head")
        return cls(ColumnParallelLinear.from_linear(attn.c_attn, group, log, parts=3, name=f"{name}.c_attn"),
                   RowParallelLinear.from_linear(attn.c_proj, group, log, name=f"{name}.c_proj"), n_local)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        c = self.c_attn.out_per_rank // 3                                   # channels of this rank's heads
        q, k, v = self.c_attn(x).split(c, dim=2)                            # 3 x (B, T, C/ws)
        q = q.view(B, T, self.n_head, c // self.n_head).transpose(1, 2)     # (B, nh/ws, T, hs)
        k = k.view(B, T, self.n_head, c // self.n_head).transpose(1, 2)     # (B, nh/ws, T, hs)
        v = v.view(B, T, self.n_head, c // self.n_head).transpose(1, 2)     # (B, nh/ws, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)         # (B, nh/ws, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, c)                    # (B, T, C/ws)
        return self.c_proj(y)                                               # (B, T, C) after g


class TensorParallelBlock(nn.Module):
    """A TinyGPT block with sharded attention and MLP; LayerNorms are replicated (their grads arrive whole via f)."""

    def __init__(self, ln_1: nn.LayerNorm, attn: TensorParallelAttention, ln_2: nn.LayerNorm, mlp: TensorParallelMLP):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    @classmethod
    def from_block(cls, block: nn.Module, cfg: GPTConfig, group=None, log: CommLog | None = None,
                   name: str = "block") -> "TensorParallelBlock":
        """This rank's share of a full frugal.model.Block (copied, so the full block stays untouched)."""
        check_config(cfg, _tp_world(group)[1])
        ln_1, ln_2 = (nn.LayerNorm(cfg.n_embd, bias=cfg.bias).to(block.ln_1.weight.device) for _ in range(2))
        ln_1.load_state_dict(block.ln_1.state_dict())
        ln_2.load_state_dict(block.ln_2.state_dict())
        return cls(ln_1, TensorParallelAttention.from_attention(block.attn, group, log, f"{name}.attn"),
                   ln_2, TensorParallelMLP.from_mlp(block.mlp, group, log, f"{name}.mlp"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


def shard_of(full_name: str, full_tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """What rank holds of a full Block parameter (or its gradient), by its name in the Block."""
    layer, kind = full_name.split(".")[-2:]                     # e.g. ('c_attn', 'weight')
    if layer == "c_attn":
        return shard_columns(full_tensor, rank, world_size, parts=3)
    if layer == "c_fc":
        return shard_columns(full_tensor, rank, world_size)
    if layer == "c_proj" and kind == "weight":
        return shard_rows(full_tensor, rank, world_size)
    return full_tensor.clone()                                  # LayerNorms and row-parallel biases: replicated


def comm_per_layer(cfg: GPTConfig, batch: int, seq: int, world_size: int, bytes_per_element: int = 4) -> dict:
    """Predicted traffic of one block's forward + backward: 4 all-reduces of B·T·C elements (Megatron fig. 4),
    each moving 2·(w-1)/w of its bytes per rank with a ring all-reduce."""
    size = batch * seq * cfg.n_embd * bytes_per_element
    return {"all_reduces": 4, "bytes_per_all_reduce": size,
            "ring_bytes_sent_per_rank": 4 * 2 * (world_size - 1) / world_size * size}


# ----------------------------------------------------------------------------- rank functions (for launch)

def _rank_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def tp_equivalence_rank(rank: int, world_size: int, cfg: GPTConfig, batch: int, seq: int, seed: int = 0) -> dict:
    """Shard a seeded full Block on every rank; run its MLP, attention and the whole block tensor-parallel.

    Returns per-module outputs, input gradients, this rank's parameter gradients and shapes, and the comm log,
    so the caller can compare them with the unsplit Block it builds from the same seed."""
    from frugal.model import Block
    check_config(cfg, world_size)
    dev = _rank_device()
    torch.manual_seed(seed)
    full = Block(cfg).to(dev)
    x = torch.randn(batch, seq, cfg.n_embd, generator=torch.Generator().manual_seed(seed + 1)).to(dev)
    out = {}
    for what in ("mlp", "attn", "block"):
        log = CommLog()
        if what == "mlp":
            mod = TensorParallelMLP.from_mlp(full.mlp, log=log, name="mlp")
        elif what == "attn":
            mod = TensorParallelAttention.from_attention(full.attn, log=log, name="attn")
        else:
            mod = TensorParallelBlock.from_block(full, cfg, log=log)
        xi = x.clone().requires_grad_(True)
        y = mod(xi)
        y.pow(2).sum().backward()                # a loss that depends on every output element
        out[what] = {
            "y": y.detach().cpu(), "x_grad": xi.grad.cpu(),
            "grads": {n: p.grad.cpu() for n, p in mod.named_parameters()},
            "shapes": {n: tuple(p.shape) for n, p in mod.named_parameters()},
            "comm": list(log.events),
        }
    return out


def tp_stack_step_rank(rank: int, world_size: int, cfg: GPTConfig, batch: int, seq: int,
                       warmup: int = 3, repeats: int = 10, threads: int | None = None) -> dict:
    """Time forward+backward of a stack of cfg.n_layer tensor-parallel blocks (a benchmark rank).

    threads: CPU threads per rank (1 keeps CPU ranks from fighting over cores)."""
    import time
    from frugal.model import Block
    if threads:
        torch.set_num_threads(threads)
    dev = _rank_device()
    torch.manual_seed(0)
    log = CommLog()
    stack = nn.Sequential(*[TensorParallelBlock.from_block(Block(cfg).to(dev), cfg, log=log, name=f"b{i}")
                            for i in range(cfg.n_layer)])
    x = torch.randn(batch, seq, cfg.n_embd, device=dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + repeats):
        log.clear()
        sync()
        t0 = time.perf_counter()
        stack(x).float().pow(2).mean().backward()
        sync()
        times.append(time.perf_counter() - t0)
    step = sorted(times[warmup:])[repeats // 2]
    comm = torch.randn(batch, seq, cfg.n_embd, device=dev)          # time one all-reduce of that size
    ar = []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        dist.all_reduce(comm)
        sync()
        ar.append(time.perf_counter() - t0)
    return {"step_s": step, "all_reduces": log.calls, "comm_bytes": log.bytes,
            "all_reduce_s": sorted(ar[warmup:])[repeats // 2],
            "params_per_rank": sum(p.numel() for p in stack.parameters())}
