"""Lessons 04 and 05's exercises: a ZeRO shard's bounds, and the 1F1B pipeline schedule of one stage."""
from __future__ import annotations

import torch

from frugal.exercises._core import Exercise, Mismatch, attempt, expect
from frugal.pipeline_parallel import in_flight, schedule_1f1b as frugal_1f1b, simulate
from frugal.zero import FlatLayout


def zero_shard_bounds(numel, world_size, rank):
    """[start, stop) of rank's slice of a buffer padded to a multiple of world_size: every shard the same size."""
    shard = -(-numel // world_size)                    # ceil(numel / world_size): the padding goes at the end
    return rank * shard, (rank + 1) * shard


def schedule_1f1b(n_stages, n_micro, stage):
    """This stage's order of ("F", i) and ("B", i): warm-up forwards, then one forward / one backward, then the rest."""
    warm_up = min(n_stages - stage - 1, n_micro)       # later stages need fewer micro-batches in flight
    order = [("F", i) for i in range(warm_up)]
    for i in range(warm_up, n_micro):                  # steady state: forward i, then the oldest backward
        order += [("F", i), ("B", i - warm_up)]
    order += [("B", i) for i in range(n_micro - warm_up, n_micro)]   # cool-down: the backwards left
    return order


# ----------------------------------------------------------------------------- zero_shard_bounds

SHARD_CASES = [(8, 2), (7, 2), (7, 3), (1, 1), (3, 8), (1000, 3), (1001, 4), (12345, 16), (5, 5), (0, 4)]


def check_zero_shard_bounds(candidate) -> str:
    for numel, ws in SHARD_CASES:
        bounds = []
        for rank in range(ws):
            inp = f"numel={numel}, world_size={ws}, rank={rank}"
            out = attempt(candidate, numel, ws, rank, input=inp)
            expect(isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(v, int) for v in out),
                   "it must return a pair of ints (start, stop)", input=inp, got=repr(out))
            bounds.append(tuple(out))
        inp = f"numel={numel}, world_size={ws}, every rank: {bounds}"
        sizes = {stop - start for start, stop in bounds}
        expect(len(sizes) == 1, "the shards differ in size", input=inp, got=f"sizes {[b - a for a, b in bounds]}",
               hint="ZeRO pads the buffer to a multiple of world_size so every rank owns an equal slice "
                    "(all_gather_into_tensor needs equal pieces): use ceil(numel / world_size) for all")
        owners = torch.zeros(max(numel, bounds[-1][1], 1), dtype=torch.int64)
        for start, stop in bounds:
            expect(0 <= start <= stop, "a shard has start > stop or starts below 0", input=inp)
            owners[start:stop] += 1
        missing = (owners[:numel] == 0).nonzero().flatten().tolist()
        expect(not missing, f"elements {missing[:5]}{'...' if len(missing) > 5 else ''} of {numel} belong to no rank",
               input=inp, hint="floor division drops the remainder: round the shard size up (ceil)")
        twice = (owners > 1).nonzero().flatten().tolist()
        expect(not twice, f"elements {twice[:5]} belong to two ranks", input=inp,
               hint="rank r's shard starts where rank r-1's stops: start = rank * shard_size")
        layout = FlatLayout([numel], [torch.Size([numel])], ws)
        want = [(r * layout.shard_size, (r + 1) * layout.shard_size) for r in range(ws)]
        expect(bounds == want, "the shards are equal but not frugal.zero.FlatLayout's (each shard_size, in rank order, "
                               "padding at the end)", input=inp, expected=repr(want), got=repr(bounds),
               hint="shard_size = ceil(numel / world_size); rank r owns [r * shard_size, (r + 1) * shard_size)")
    return f"{len(SHARD_CASES)} buffers: each element owned once, shards equal, as frugal.zero.FlatLayout"


# ----------------------------------------------------------------------------- schedule_1f1b

PIPELINES = [(p, m) for p in (2, 3, 4, 1) for m in (1, 2, 3, 4, 8)]   # the degenerate one-stage pipe last


def _end(timelines) -> float:
    return max(e["end"] for tl in timelines for e in tl)


def check_schedule_1f1b(candidate) -> str:
    for p, m in PIPELINES:
        orders = []
        for s in range(p):
            inp = f"n_stages={p}, n_micro={m}, stage={s}"
            order = attempt(candidate, p, m, s, input=inp)
            expect(isinstance(order, list) and all(isinstance(a, tuple) and len(a) == 2 and a[0] in ("F", "B")
                                                   and isinstance(a[1], int) for a in order),
                   'it must return a list of ("F", i) and ("B", i) tuples', input=inp, got=repr(order)[:200])
            want = sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
            expect(sorted(order) == want, "each micro-batch must run forward once and backward once",
                   input=inp, expected=f"F and B of micro-batches 0..{m - 1}, once each", got=repr(order),
                   hint="the warm-up cannot be longer than n_micro: min(n_stages - stage - 1, n_micro)")
            for i in range(m):
                expect(order.index(("F", i)) < order.index(("B", i)), f"B {i} comes before F {i}", input=inp,
                       got=repr(order), hint="a micro-batch's backward needs its forward's activations")
            live = in_flight(order)
            expect(live <= p - s, f"stage {s} holds {live} micro-batches' activations at once; 1F1B holds at most "
                                  f"n_stages - stage = {p - s}", input=inp, got=repr(order),
                   hint="run n_stages - stage - 1 forwards, then alternate one forward and one backward (GPipe "
                        "runs all forwards first and holds n_micro)")
            orders.append(order)
        inp = f"n_stages={p}, n_micro={m}, every stage: {orders}"
        try:
            ours = simulate(lambda n, s, _m: orders[s], p, m)
        except RuntimeError:
            raise Mismatch("the stages deadlock: some stage waits for an action that never runs", input=inp,
                           hint="stage s+1 needs stage s's forward of a micro-batch first; stage s needs stage s+1's "
                                "backward of it") from None
        ideal = simulate(frugal_1f1b, p, m)
        expect(_end(ours) <= _end(ideal), f"valid, but the step takes {_end(ours):g} time units where 1F1B takes "
                                          f"{_end(ideal):g} (forward 1, backward 2)", input=inp,
               expected=repr([frugal_1f1b(p, s, m) for s in range(p)]),
               hint="stage s must run n_stages - s - 1 forwards ahead (warm-up) to keep the later stages busy")
    return f"{len(PIPELINES)} pipelines: valid, at most n_stages - stage in flight, as fast as 1F1B"


EXERCISES = [
    Exercise("zero_shard_bounds", "04_sharding", "zero_shard_bounds(numel, world_size, rank) -> (start, stop)",
             check_zero_shard_bounds, zero_shard_bounds,
             ("All ranks must own slices of the same size, even when numel does not divide.",
              "Pad the buffer up to the next multiple of world_size; each slice is padded / world_size long.",
              "shard = -(-numel // world_size); return rank * shard, (rank + 1) * shard"), needs=""),
    Exercise("schedule_1f1b", "05_model_parallel", "schedule_1f1b(n_stages, n_micro, stage) -> list[tuple[str, int]]",
             check_schedule_1f1b, schedule_1f1b,
             ("The last stage can run a micro-batch's backward right after its forward; stage 0 must wait for "
              "the gradient to come back through every later stage.",
              "Warm-up: stage s runs n_stages - s - 1 forwards first. Steady state: one forward, one backward. "
              "Cool-down: the backwards left.",
              "warm = min(n_stages - stage - 1, n_micro); [F 0..warm-1], then for i in range(warm, n_micro): "
              "F i, B i - warm; then B n_micro - warm .. n_micro - 1"), needs=""),
]
