"""Lesson 03's exercises: a ring all-reduce from send/recv, run on real gloo ranks, and DDP's gradient buckets.

A notebook's function cannot be imported by a spawned rank, so the check ships the candidate by value with
cloudpickle; `ring_worker`, importable from here, unpickles and runs it on every rank beside dist.all_reduce.
"""
from __future__ import annotations

import traceback

import cloudpickle
import torch
import torch.distributed as dist

from frugal.data_parallel import assign_buckets
from frugal.dist import RankError, launch
from frugal.exercises._core import Exercise, Mismatch, NotDone, attempt, expect

SIZES = [7, 64, 1001, 1, 2, 3]          # not divisible by 2 or 3, then smaller than the world
WORLD_SIZES = (2, 3)
RTOL, ATOL = 1e-5, 1e-5                 # float sums in another order than gloo's differ in the last bits
COLLECTIVES = ("all_reduce", "reduce_scatter", "reduce_scatter_tensor", "all_gather", "all_gather_into_tensor",
               "all_gather_object", "broadcast", "broadcast_object_list", "reduce", "scatter", "gather",
               "all_to_all", "all_to_all_single")


def ring_all_reduce(tensor):
    """Sum `tensor` over all ranks, in place, from send/recv only: n-1 reduce-scatter steps, then n-1 all-gather."""
    rank, n = dist.get_rank(), dist.get_world_size()
    right, left = (rank + 1) % n, (rank - 1) % n
    flat = tensor.view(-1)
    base, extra = divmod(flat.numel(), n)                    # chunk c has base (+1 for the first `extra`) elements
    starts = [c * base + min(c, extra) for c in range(n + 1)]
    chunk = lambda c: flat[starts[c % n]:starts[c % n + 1]]

    def exchange(send, recv):                                 # post both at once, so the ring cannot deadlock
        ops = [dist.isend(send, right)] if send.numel() else []
        ops += [dist.irecv(recv, left)] if recv.numel() else []
        for op in ops:
            op.wait()

    for step in range(n - 1):                                 # reduce-scatter: add what the left neighbour sends
        incoming = torch.empty_like(chunk(rank - step - 1))
        exchange(chunk(rank - step), incoming)
        chunk(rank - step - 1).add_(incoming)
    for step in range(n - 1):                                 # all-gather: pass the finished chunks on
        exchange(chunk(rank + 1 - step), chunk(rank - step))


def bucket_assignment(param_bytes, cap_bytes):
    """Parameter indices in buckets of at most cap_bytes, last parameter first (backward's order); a larger one alone."""
    buckets, current, size = [], [], 0
    for i in reversed(range(len(param_bytes))):               # gradients arrive roughly in reverse order
        if current and size + param_bytes[i] > cap_bytes:
            buckets.append(current)                           # full: this one starts the next bucket
            current, size = [], 0
        current.append(i)
        size += param_bytes[i]
    if current:
        buckets.append(current)
    return buckets


# ----------------------------------------------------------------------------- ring_all_reduce

def ring_worker(rank: int, world_size: int, payload: bytes, sizes: list[int]) -> dict:
    """One rank of the check: run the unpickled candidate on each size beside dist.all_reduce, recording any
    collective it calls (the calls still go through, so no rank is left waiting)."""
    real = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}
    calls: list[str] = []

    def spy(name):
        def call(*args, **kwargs):
            calls.append(name)
            return real[name](*args, **kwargs)
        return call
    modules = (dist, dist.distributed_c10d)
    saved = [(m, name, getattr(m, name)) for m in modules for name in real if hasattr(m, name)]
    for m, name, _ in saved:
        setattr(m, name, spy(name))
    try:
        candidate = cloudpickle.loads(payload)      # after the spies: a by-name dist.all_reduce resolves to one
        runs = []
        for n in sizes:
            x = torch.randn(n, generator=torch.Generator().manual_seed(1000 * n + rank))
            want = x.clone()
            real["all_reduce"](want)
            got = x.clone()
            try:
                candidate(got)
            except NotImplementedError:
                return {"not_done": True}
            except Exception as e:  # noqa: BLE001 - reported to the learner
                mine = getattr(getattr(candidate, "__code__", None), "co_filename", None)
                frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == mine]
                where = f" (line {frames[-1].lineno} of {frames[-1].name})" if frames else ""
                return {"error": f"{type(e).__name__}: {e}{where}", "numel": n}
            runs.append({"numel": n, "x": x, "got": got, "want": want})
            if calls:
                break
        return {"runs": runs, "calls": sorted(set(calls))}
    finally:
        for m, name, fn in saved:
            setattr(m, name, fn)


def _judge(world_size: int, per_rank: list[dict]) -> None:
    inp = f"{world_size} gloo ranks"
    if any(r.get("not_done") for r in per_rank):
        raise NotDone()
    for rank, r in enumerate(per_rank):
        if "error" in r:
            waited = "timed out" in r["error"].lower()
            raise Mismatch(f"it raised {r['error']}", input=f"{inp}, rank {rank}, numel={r['numel']}",
                           hint="a recv waited for a send that never came: every rank receives from rank - 1 what "
                                "rank - 1 sends to it (post isend and irecv, then wait on both)" if waited else
                                "dist.get_rank() and dist.get_world_size() say where this rank sits in the ring")
    calls = sorted({c for r in per_rank for c in r["calls"]})
    expect(not calls, f"it calls dist.{calls[0] if calls else ''}: the exercise is to build the all-reduce from "
                      f"dist.send/recv (or isend/irecv) alone", input=inp, got=", ".join(f"dist.{c}" for c in calls),
           hint="each of the 2(n-1) steps sends one chunk to rank+1 and receives one from rank-1")
    for rank, r in enumerate(per_rank):
        for run in r["runs"]:
            got, want, n = run["got"], run["want"], run["numel"]
            bad = ~torch.isclose(got, want, rtol=RTOL, atol=ATOL)
            if bad.any():
                i = int(bad.nonzero()[0])
                hint = "the ring must leave the sum in every element on every rank"
                if n >= world_size and not bad[: n - n % world_size].any():
                    hint = (f"only the last {n % world_size} elements are wrong: numel={n} does not divide into "
                            f"{world_size} chunks; give some chunks one element more")
                elif torch.equal(got, run["x"]):
                    hint = "the tensor is unchanged: the all-reduce works in place (write into tensor)"
                elif torch.allclose(got * world_size, want, rtol=RTOL, atol=ATOL):
                    hint = "that is the mean: the all-reduce here sums (dist.ReduceOp.SUM)"
                raise Mismatch(f"differs from dist.all_reduce in {int(bad.sum())} of {n} elements (tolerance "
                               f"rtol={RTOL}, atol={ATOL}: the ring adds in another order)",
                               input=f"{inp}, numel={n}, rank {rank}, tensor[{i}]", expected=f"{want[i].item():.6g}",
                               got=f"{got[i].item():.6g}", hint=hint)


# names no send/recv code has a reason to use: refused from the code itself, before any rank starts
# ('reduce', 'scatter', 'gather' are common words: only the spies on the ranks judge those)
PLAIN_COLLECTIVES = frozenset(COLLECTIVES) - {"reduce", "scatter", "gather"}


def _names_used(code) -> set[str]:
    """Global and attribute names a function's code (and the functions nested in it) reads."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names_used(const)
    return names


def check_ring_all_reduce(candidate) -> str:
    code = getattr(candidate, "__code__", None)
    used = sorted(_names_used(code) & PLAIN_COLLECTIVES) if code is not None else []
    expect(not used, f"it calls dist.{used[0] if used else ''}: the exercise is to build the all-reduce from "
                     f"dist.send/recv (or isend/irecv) alone", got=", ".join(used),
           hint="each of the 2(n-1) steps sends one chunk to rank+1 and receives one from rank-1")
    try:                                   # a stub says so at once, before any rank starts
        candidate(torch.zeros(4))
    except NotImplementedError:
        raise NotDone() from None
    except Exception:  # noqa: BLE001 - outside a process group a real candidate fails: expected
        pass
    payload = cloudpickle.dumps(candidate)
    for world_size in WORLD_SIZES:
        try:
            per_rank = launch(ring_worker, world_size, payload, SIZES, backend="gloo", timeout=20.0)
        except RankError as e:
            raise Mismatch(f"a rank failed or waited 20 s for a message that never came: {str(e).splitlines()[-1]}",
                           input=f"{world_size} gloo ranks",
                           hint="every send needs a matching recv on the neighbour; post both with isend/irecv "
                                "before waiting, or one rank sends while the other receives") from None
        _judge(world_size, per_rank)
    return f"equals dist.all_reduce on {' and '.join(map(str, WORLD_SIZES))} gloo ranks at numel {SIZES}"


# ----------------------------------------------------------------------------- bucket_assignment

BUCKET_CASES = [([4, 4, 4, 4], 8), ([10], 4), ([3, 9, 2, 2, 7, 1], 9), ([1, 2, 3, 4, 5, 6, 7], 7), ([], 8),
                ([5, 20, 5, 5], 10), ([8] * 6, 16), ([2, 2, 2], 100)]


def check_bucket_assignment(candidate) -> str:
    for sizes, cap in BUCKET_CASES:
        inp = f"param_bytes={sizes}, cap_bytes={cap}"
        got = attempt(candidate, list(sizes), cap, input=inp)
        params = [torch.empty(n, dtype=torch.uint8, device="meta") for n in sizes]
        want = assign_buckets(params, cap / 2 ** 20)
        if got != want:
            flat = [i for b in (got or []) for i in b] if isinstance(got, list) else []
            hint = "fill a bucket until the next parameter would pass cap_bytes; a parameter larger than the cap alone"
            if sorted(flat) == flat and flat and len(flat) > 1:
                hint = "backward produces the last parameters' gradients first: walk the indices in reverse"
            elif sorted(flat) != sorted(range(len(sizes))):
                hint = "every parameter index must be in exactly one bucket (a last, partly filled bucket too)"
            raise Mismatch("differs from frugal.data_parallel.assign_buckets (DDP's rule)", input=inp,
                           expected=repr(want), got=repr(got), hint=hint)
    return f"{len(BUCKET_CASES)} layouts as frugal.data_parallel.assign_buckets"


EXERCISES = [
    Exercise("ring_all_reduce", "03_data_parallel", "ring_all_reduce(tensor) -> None (in place)",
             check_ring_all_reduce, ring_all_reduce,
             ("Cut the tensor into world_size chunks. Each rank only ever talks to its right and left neighbours.",
              "n-1 reduce-scatter steps (send a chunk right, add the chunk received from the left), after which "
              "each rank holds one finished chunk; then n-1 all-gather steps pass the finished chunks around.",
              "at step s rank r sends chunk (r - s) % n and adds chunk (r - s - 1) % n; in the all-gather it sends "
              "(r + 1 - s) % n and overwrites (r - s) % n. Use dist.isend + dist.irecv, then wait on both."),
             needs="import torch\nimport torch.distributed as dist"),
    Exercise("bucket_assignment", "03_data_parallel", "bucket_assignment(param_bytes, cap_bytes) -> list[list[int]]",
             check_bucket_assignment, bucket_assignment,
             ("Which gradients does backward produce first? Start the buckets there.",
              "Walk the indices from the last to the first, adding each to the current bucket until the next one "
              "would pass cap_bytes; then start a new bucket.",
              "for i in reversed(range(len(param_bytes))): if current and size + param_bytes[i] > cap_bytes: close "
              "the bucket; then append i. Close the last bucket at the end."), needs=""),
]
