"""ZeRO's flat buffers and its counted collectives (frugal.zero's helpers, beside it as picotron keeps them).

Each unit's parameters are laid end to end in one flat buffer padded to a multiple of the world size, so rank r
owns slice r; the collectives all-gather and reduce-scatter those buffers and count the bytes a ring sends.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist


@dataclass
class FlatLayout:
    """Where each parameter of a unit sits in its flat buffer, padded so world_size ranks own equal slices."""
    numels: list[int]
    shapes: list[torch.Size]
    world_size: int

    @property
    def offsets(self) -> list[int]:
        out, o = [], 0
        for n in self.numels:
            out.append(o)
            o += n
        return out

    @property
    def numel(self) -> int:
        return sum(self.numels)

    @property
    def padded(self) -> int:
        """numel rounded up to a multiple of world_size (the padding is zeros that no one trains)."""
        return -(-self.numel // self.world_size) * self.world_size

    @property
    def shard_size(self) -> int:
        return self.padded // self.world_size

    def flatten(self, tensors: list[torch.Tensor | None], dtype: torch.dtype, device) -> torch.Tensor:
        """One padded 1-D buffer of the tensors (None = zeros, for a parameter that got no gradient)."""
        flat = torch.zeros(self.padded, dtype=dtype, device=device)
        for t, o, n in zip(tensors, self.offsets, self.numels):
            if t is not None:
                flat[o:o + n].copy_(t.reshape(-1))
        return flat

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter as a view into flat (no copy)."""
        return [flat[o:o + n].view(s) for o, n, s in zip(self.offsets, self.numels, self.shapes)]


@dataclass
class CommCounter:
    """Bytes this rank sends, as a ring algorithm sends them: reduce-scatter and all-gather of a B-byte
    buffer send B(N-1)/N each, an all-reduce (one of each) 2B(N-1)/N (ZeRO paper, sec. 7)."""
    world_size: int
    bytes_by_op: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, op: str, full_buffer_bytes: int) -> None:
        n = self.world_size
        passes = 2 if op == "all_reduce" else 1
        self.bytes_by_op[op] = self.bytes_by_op.get(op, 0.0) + passes * full_buffer_bytes * (n - 1) / n

    @property
    def total(self) -> float:
        return sum(self.bytes_by_op.values())

    def per_step(self) -> float:
        return self.total / max(self.steps, 1)


class Collectives:
    """All-gather and reduce-scatter of flat buffers over one process group, each counted in `counter`."""

    def __init__(self, counter: CommCounter, group, device):
        self.counter, self.group = counter, group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.native_rs = dist.get_backend(group) == "nccl" or self._probe_reduce_scatter(device)

    def _probe_reduce_scatter(self, device) -> bool:
        """True when the backend has a native reduce-scatter (NCCL; gloo from torch 2.x); else we emulate."""
        try:
            reduce_scatter_into(torch.zeros(1, device=device), torch.ones(self.world_size, device=device), self.group)
            return True
        except (RuntimeError, NotImplementedError, AttributeError):
            return False

    def all_gather(self, shard: torch.Tensor) -> torch.Tensor:
        """Every rank's shard, concatenated: the unit's full flat buffer."""
        full = torch.empty(shard.numel() * self.world_size, dtype=shard.dtype, device=shard.device)
        all_gather_into(full, shard.detach().contiguous(), self.group)
        self.counter.add("all_gather", full.numel() * full.element_size())
        return full

    def reduce_scatter(self, full: torch.Tensor) -> torch.Tensor:
        """Average of `full` over ranks, this rank's slice only. Without a native reduce-scatter (older gloo)
        it all-reduces and keeps the slice; the counter still records what a real reduce-scatter sends."""
        return self.reduce_scatter_start(full.contiguous() / self.world_size)()   # divide first, as DDP does

    def reduce_scatter_start(self, flat: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Launch the reduce-scatter of `flat` (already divided by N) without waiting; returns the function that
        waits (on NCCL: makes the compute stream wait, the host goes on) and gives this rank's slice."""
        n = flat.numel() // self.world_size
        self.counter.add("reduce_scatter", flat.numel() * flat.element_size())
        if self.native_rs:
            out = torch.empty(n, dtype=flat.dtype, device=flat.device)
            work = reduce_scatter_into(out, flat, self.group, async_op=True)
        else:
            out = flat
            work = dist.all_reduce(flat, group=self.group, async_op=True)

        def finish() -> torch.Tensor:
            work.wait()
            return out if self.native_rs else out[self.rank * n:(self.rank + 1) * n].clone()
        return finish


def all_gather_into(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    """Uncounted all-gather of inp from every rank into out (world_size times its size)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def reduce_scatter_into(out: torch.Tensor, inp: torch.Tensor, group, async_op: bool = False):
    """Uncounted reduce-scatter (sum) of inp over ranks; this rank's slice lands in out."""
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(out, inp, group=group, async_op=async_op)
