"""Bytes moved and the bandwidth roofline: what bounds elementwise kernels is memory, not FLOPs.

A kernel that reads and writes B bytes cannot finish faster than B / bandwidth (the roofline model,
Williams, Waterman & Patterson 2009, section 2). Here: the bandwidth of a plain copy, measured, and the
bytes an eager chain of PyTorch ops moves, counted op by op.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from frugal.measure import measure_time

# Ops that allocate without writing: no bytes move.
_NO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
               "lift_fresh", "_to_copy_meta"}


def gbps(n_bytes: float, seconds: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second)."""
    if seconds <= 0:
        raise ValueError(f"seconds={seconds}: must be positive")
    return n_bytes / seconds / 1e9


def measure_copy_bandwidth(n: int, device: torch.device | str, dtype: torch.dtype = torch.float32,
                           repeats: int = 20) -> float:
    """Bytes per second of dst.copy_(src) for n elements: the best a kernel that streams memory does here.

    A copy reads n and writes n elements: 2·n·element_size bytes. Random data, never zeros.
    """
    device = torch.device(device)
    src = torch.randn(n, device=device).to(dtype)
    dst = torch.empty_like(src)
    t = measure_time(lambda: dst.copy_(src), device, warmup=3, repeats=repeats)
    return 2 * n * src.element_size() / t.median_s


def measure_graph_time(fn, device: torch.device | str, calls: int = 1, repeats: int = 20) -> float:
    """Seconds per call of fn() replayed from a CUDA graph: the GPU's own time, without Python or launch gaps.

    `calls` calls are captured back to back in one graph (after a warm-up on a side stream, as CUDA graphs need),
    and five replays are queued per timed repeat, so the GPU never waits for the CPU.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device={device}: CUDA graphs need a CUDA device; use measure_time on a CPU")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return measure_time(graph.replay, device, warmup=2, repeats=repeats, inner=5).median_s / calls


def _tensors(tree) -> list[torch.Tensor]:
    out = []
    if isinstance(tree, torch.Tensor):
        out.append(tree)
    elif isinstance(tree, (list, tuple)):
        for t in tree:
            out.extend(_tensors(t))
    elif isinstance(tree, dict):
        for t in tree.values():
            out.extend(_tensors(t))
    return out


def _nbytes(t: torch.Tensor) -> int:
    """Bytes a kernel streams for t: its elements, but a broadcast (stride-0) tensor only its storage."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


@dataclass
class OpTraffic:
    op: str
    read: int      # bytes of the op's distinct tensor inputs
    written: int   # bytes of its outputs


@dataclass
class BytesMoved:
    """Bytes each aten op read and wrote, in order, as recorded by `count_bytes_moved`."""

    ops: list[OpTraffic] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(o.read + o.written for o in self.ops)

    @property
    def launches(self) -> int:
        return len(self.ops)


class count_bytes_moved(TorchDispatchMode):
    """Record the bytes every aten op reads (its tensor inputs) and writes (its outputs), forward and backward.

    Each eager op is one kernel that streams its inputs from memory and its outputs back, so the sum is
    the traffic of an eager chain. Views and allocations move nothing and are skipped. Triton kernels are
    not aten ops, so they are not seen: count those by hand (each kernel module's `*_bytes`).
    """

    def __init__(self):
        super().__init__()
        self.record = BytesMoved()

    def __enter__(self):
        super().__enter__()
        return self.record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not func.is_view and name not in _NO_TRAFFIC:
            seen, read = set(), 0
            for t in _tensors(args) + _tensors(kwargs or {}):
                key = (t.data_ptr(), t.numel(), t.dtype)
                if key not in seen:
                    seen.add(key)
                    read += _nbytes(t)
            written = sum(_nbytes(t) for t in _tensors(out))
            self.record.ops.append(OpTraffic(name, read, written))
        return out
