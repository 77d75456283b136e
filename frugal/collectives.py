"""All-reduce from point-to-point messages: the ring (reduce-scatter, then all-gather) and the naive one.

The ring is the bandwidth-optimal all-reduce of Patarasuk & Yuan (2009), popularised for deep learning by
Baidu's ring all-reduce (Gibiansky 2017): each rank sends 2(n-1)/n * S bytes, whatever n is, while the
naive reduce-to-0-then-broadcast makes rank 0 send (n-1) * S. Only dist send/recv are used here;
dist.all_reduce appears only in the checks, as the reference.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

OPS = ("sum", "avg")


@dataclass
class Traffic:
    """What one rank put on the wire: bytes, messages, and a log of (phase, step, src, dst, chunk, bytes)."""
    sent_bytes: int = 0
    recv_bytes: int = 0
    messages: int = 0
    log: list[tuple] = field(default_factory=list)

    def record(self, phase: str, step: int, src: int, dst: int, chunk: int, nbytes: int, me: int) -> None:
        if src == me:
            self.sent_bytes += nbytes
            self.messages += 1
        else:
            self.recv_bytes += nbytes
        self.log.append((phase, step, src, dst, chunk, nbytes))


def chunk_bounds(numel: int, world_size: int) -> list[tuple[int, int]]:
    """(start, end) of each rank's chunk: sizes differ by at most one, and are 0 when numel < world_size."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: must be >= 1")
    base, extra = divmod(numel, world_size)
    bounds, start = [], 0
    for r in range(world_size):
        end = start + base + (1 if r < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def ring_schedule(rank: int, world_size: int) -> list[tuple[str, int, int, int]]:
    """(phase, step, chunk sent to rank+1, chunk received from rank-1) for each of the 2(n-1) steps.

    Reduce-scatter: at step s rank r sends chunk (r - s) mod n and adds the chunk (r - s - 1) mod n it
    receives; after n-1 steps rank r holds the full sum of chunk (r + 1) mod n. All-gather then passes the
    finished chunks around the ring, overwriting instead of adding.
    """
    n = world_size
    steps = [("reduce-scatter", s, (rank - s) % n, (rank - s - 1) % n) for s in range(n - 1)]
    steps += [("all-gather", s, (rank + 1 - s) % n, (rank - s) % n) for s in range(n - 1)]
    return steps


def _check(tensor: torch.Tensor, op: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_contiguous():
        raise ValueError("the tensor is not contiguous: pass tensor.contiguous() (the result is written in place)")
    if op not in OPS:
        raise ValueError(f"op={op!r}: pick one of {OPS}")
    if op == "avg" and not tensor.is_floating_point():
        raise ValueError(f"op='avg' needs a floating-point tensor, got {tensor.dtype}: use op='sum' and divide")
    if not dist.is_initialized():
        raise ValueError("no process group: call this inside a rank started by frugal.dist.launch")


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool)


def _check_peers(tensor: torch.Tensor) -> None:
    """Every rank must pass the same dtype and size: mismatched buffers would be exchanged as raw bytes and
    summed into a wrong result with no error. One small all-gather of (dtype, numel) finds it on every rank."""
    code = _DTYPES.index(tensor.dtype) if tensor.dtype in _DTYPES else len(_DTYPES)
    mine = torch.tensor([code, tensor.numel()], dtype=torch.int64, device=tensor.device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    seen = [(int(c), int(n)) for c, n in (t.tolist() for t in every)]
    if len(set(seen)) > 1:
        name = lambda c: str(_DTYPES[c]) if c < len(_DTYPES) else "another dtype"
        ranks = ", ".join(f"rank {r}: {name(c)} x {n}" for r, (c, n) in enumerate(seen))
        raise ValueError(f"the ranks passed different tensors ({ranks}): every rank must pass the same dtype and "
                         f"number of elements, e.g. tensor.float() of the same shape on each")


def _exchange(send: torch.Tensor | None, dst: int, recv: torch.Tensor | None, src: int) -> None:
    """Send to dst and receive from src at once (one batched group, so a ring cannot deadlock)."""
    ops = []
    if send is not None and send.numel():
        ops.append(dist.P2POp(dist.isend, send, dst))
    if recv is not None and recv.numel():
        ops.append(dist.P2POp(dist.irecv, recv, src))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def ring_reduce_scatter(tensor: torch.Tensor, traffic: Traffic | None = None) -> tuple[int, int]:
    """In place on a flat contiguous tensor: afterwards this rank's chunk (rank+1) mod n holds the sum over
    ranks. Returns that chunk's (start, end)."""
    rank, n = dist.get_rank(), dist.get_world_size()
    flat = tensor.view(-1)
    bounds = chunk_bounds(flat.numel(), n)
    right, left = (rank + 1) % n, (rank - 1) % n
    buf = torch.empty(max(e - s for s, e in bounds), dtype=flat.dtype, device=flat.device)
    for phase, step, send_c, recv_c in ring_schedule(rank, n)[: n - 1]:
        (s0, s1), (r0, r1) = bounds[send_c], bounds[recv_c]
        incoming = buf[: r1 - r0]
        _exchange(flat[s0:s1], right, incoming, left)
        flat[r0:r1] += incoming
        if traffic is not None:
            traffic.record(phase, step, rank, right, send_c, (s1 - s0) * flat.element_size(), rank)
            traffic.record(phase, step, left, rank, recv_c, (r1 - r0) * flat.element_size(), rank)
    return bounds[(rank + 1) % n]


def ring_all_gather(tensor: torch.Tensor, traffic: Traffic | None = None) -> None:
    """In place: starting from rank r holding finished chunk (r+1) mod n, pass chunks around the ring
    until every rank holds every chunk."""
    rank, n = dist.get_rank(), dist.get_world_size()
    flat = tensor.view(-1)
    bounds = chunk_bounds(flat.numel(), n)
    right, left = (rank + 1) % n, (rank - 1) % n
    for phase, step, send_c, recv_c in ring_schedule(rank, n)[n - 1:]:
        (s0, s1), (r0, r1) = bounds[send_c], bounds[recv_c]
        _exchange(flat[s0:s1], right, flat[r0:r1], left)   # send and receive regions never overlap
        if traffic is not None:
            traffic.record(phase, step, rank, right, send_c, (s1 - s0) * flat.element_size(), rank)
            traffic.record(phase, step, left, rank, recv_c, (r1 - r0) * flat.element_size(), rank)


def ring_all_reduce(tensor: torch.Tensor, op: str = "sum", traffic: Traffic | None = None,
                    check_peers: bool = True) -> torch.Tensor:
    """dist.all_reduce(tensor) from send/recv only: reduce-scatter then all-gather, in place; returns tensor.

    Any size works: chunks differ by at most one element and empty chunks send nothing. check_peers first
    verifies every rank passed the same dtype and size (one small all-gather; the benchmark turns it off).
    """
    _check(tensor, op)
    if check_peers:
        _check_peers(tensor)
    if dist.get_world_size() > 1:
        ring_reduce_scatter(tensor, traffic)
        ring_all_gather(tensor, traffic)
    if op == "avg":
        tensor /= dist.get_world_size()
    return tensor


def naive_all_reduce(tensor: torch.Tensor, op: str = "sum", traffic: Traffic | None = None,
                     check_peers: bool = True) -> torch.Tensor:
    """Every rank sends its tensor to rank 0, which sums and sends the result back to each: in place.

    Rank 0 receives and sends (n-1) * S bytes, so its link is the bottleneck as n grows.
    """
    _check(tensor, op)
    if check_peers:
        _check_peers(tensor)
    rank, n = dist.get_rank(), dist.get_world_size()
    flat, nbytes = tensor.view(-1), tensor.numel() * tensor.element_size()
    if n > 1 and flat.numel():
        if rank == 0:
            bufs = [torch.empty_like(flat) for _ in range(1, n)]
            for work in dist.batch_isend_irecv([dist.P2POp(dist.irecv, b, src) for src, b in enumerate(bufs, 1)]):
                work.wait()
            for src, b in enumerate(bufs, 1):
                flat += b
                if traffic is not None:
                    traffic.record("reduce", 0, src, 0, 0, nbytes, rank)
            for work in dist.batch_isend_irecv([dist.P2POp(dist.isend, flat, dst) for dst in range(1, n)]):
                work.wait()
            if traffic is not None:
                for dst in range(1, n):
                    traffic.record("broadcast", 0, 0, dst, 0, nbytes, rank)
        else:
            _exchange(flat, 0, None, 0)
            _exchange(None, 0, flat, 0)
            if traffic is not None:
                traffic.record("reduce", 0, rank, 0, 0, nbytes, rank)
                traffic.record("broadcast", 0, 0, rank, 0, nbytes, rank)
    if op == "avg":
        tensor /= n
    return tensor


def _check_sizes(nbytes: float, world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: must be a positive integer (the number of ranks)")
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, float)) or not 0 <= nbytes < float("inf"):
        raise ValueError(f"nbytes={nbytes!r}: must be a finite number of bytes >= 0")


def estimate_ring_bytes(nbytes: float, world_size: int) -> float:
    """Bytes each rank sends in a ring all-reduce: 2(n-1)/n * S (Patarasuk & Yuan 2009, sec. 3)."""
    _check_sizes(nbytes, world_size)
    return 2 * (world_size - 1) / world_size * nbytes


def estimate_naive_root_bytes(nbytes: float, world_size: int) -> float:
    """Bytes rank 0 sends in reduce-then-broadcast: (n-1) * S (it receives as much again)."""
    _check_sizes(nbytes, world_size)
    return (world_size - 1) * nbytes


def replay_ring(log: list[tuple], world_size: int) -> list[list[list[frozenset]]]:
    """From a ring's message log (any rank's, all ranks' merged), the set of ranks whose data each
    (rank, chunk) holds after each step: states[t][rank][chunk]. states[0] is before any message."""
    state = [[frozenset([r]) for _ in range(world_size)] for r in range(world_size)]
    states = [[row[:] for row in state]]
    order = {"reduce-scatter": 0, "all-gather": 1}
    msgs = sorted({m for m in log if m[0] in order}, key=lambda m: (order[m[0]], m[1], m[2]))
    for key in sorted({(order[m[0]], m[1]) for m in msgs}):
        step_msgs = [m for m in msgs if (order[m[0]], m[1]) == key]
        before = [row[:] for row in state]
        for phase, _, src, dst, chunk, _ in step_msgs:
            state[dst][chunk] = before[dst][chunk] | before[src][chunk] if phase == "reduce-scatter" \
                else before[src][chunk]
        states.append([row[:] for row in state])
    return states


# ----------------------------------------------------------------------------- rank functions for launch

def rank_device() -> torch.device:
    """Where this rank's tensors must live: its GPU under NCCL (which moves only CUDA tensors), else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_demo(rank: int, world_size: int, numel: int = 4) -> dict:
    """Each rank holds [rank+1] * numel; after dist.all_reduce every rank holds the sum."""
    if not isinstance(numel, int):
        raise TypeError(f"numel={numel!r}: must be an int, the number of elements per rank")
    t = torch.full((numel,), float(rank + 1), device=rank_device())
    before = t.clone()
    dist.all_reduce(t)
    return {"rank": rank, "before": before.tolist(), "after": t.tolist()}


def check_all_reduce(rank: int, world_size: int, sizes: list[int], dtypes: list[str]) -> dict:
    """Ring and naive all-reduce against dist.all_reduce on each size and dtype: max abs error, exactness
    and the bytes each rank sent. Random data, different on every rank."""
    out = {"errors": {}, "traffic": {}}
    device = rank_device()
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for numel in sizes:
            g = torch.Generator().manual_seed(1000 * rank + numel)
            x = torch.randint(-100, 100, (numel,), generator=g).to(dtype) if not dtype.is_floating_point \
                else torch.randn(numel, generator=g).to(dtype)
            x = x.to(device)
            ref = x.clone()
            dist.all_reduce(ref)
            for name, fn in (("ring", ring_all_reduce), ("naive", naive_all_reduce)):
                traffic = Traffic()
                got = fn(x.clone(), traffic=traffic)
                out["errors"][(name, dtype_name, numel)] = (got.double() - ref.double()).abs().max().item() \
                    if numel else 0.0
                out["traffic"][(name, dtype_name, numel)] = (traffic.sent_bytes, traffic.recv_bytes)
    avg = torch.arange(10, dtype=torch.float32, device=device) + rank
    ring_all_reduce(avg, op="avg")
    out["avg"] = avg.tolist()
    return out


def ring_trace(rank: int, world_size: int, numel: int) -> dict:
    """One ring and one naive all-reduce with traffic logged, for the lesson's drawings and bar chart."""
    ring, naive = Traffic(), Traffic()
    x = torch.arange(numel, dtype=torch.float32, device=rank_device()) * (rank + 1)
    got = ring_all_reduce(x.clone(), traffic=ring)
    ref = x.clone()
    dist.all_reduce(ref)
    naive_all_reduce(x.clone(), traffic=naive)
    return {"rank": rank, "ring": ring, "naive": naive, "max_error": (got - ref).abs().max().item(),
            "bytes": numel * 4}


def benchmark_all_reduce(rank: int, world_size: int, nbytes: int, repeats: int = 10, warmup: int = 3,
                         dtype: str = "float32") -> list[dict]:
    """Median time and bus bandwidth of ring, naive and dist.all_reduce on an nbytes buffer of random data.

    Bus bandwidth = S / t * 2(n-1)/n, the convention of nccl-tests (so it compares across n)."""
    device = rank_device()
    dt = getattr(torch, dtype)
    numel = nbytes // torch.empty(0, dtype=dt).element_size()
    x = torch.randn(numel, generator=torch.Generator().manual_seed(rank)).to(device=device, dtype=dt)
    rows = []
    ring = lambda t: ring_all_reduce(t, check_peers=False)      # the algorithm alone, as dist.all_reduce is timed
    naive = lambda t: naive_all_reduce(t, check_peers=False)
    for name, fn in (("ring (ours)", ring), ("naive (ours)", naive), ("dist.all_reduce", dist.all_reduce)):
        times = []
        for i in range(warmup + repeats):
            y = x.clone()
            dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn(y)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        t = torch.tensor(times, dtype=torch.float64, device=device)   # NCCL reduces GPU tensors only
        dist.all_reduce(t, op=dist.ReduceOp.MAX)       # a collective is as slow as its slowest rank
        med = t.median().item()
        rows.append({"algorithm": name, "world_size": world_size, "bytes": numel * x.element_size(),
                     "time_ms": med * 1e3, "algbw_GBps": numel * x.element_size() / med / 1e9,
                     "busbw_GBps": numel * x.element_size() / med / 1e9 * 2 * (world_size - 1) / world_size})
    return rows
