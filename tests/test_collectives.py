"""Ring and naive all-reduce against dist.all_reduce on awkward sizes and dtypes, with bytes counted.

Ranks are real spawned processes (gloo), so each world size launches once and every check reads its result.
"""
import pytest
import torch

from frugal import collectives as C
from frugal.dist import launch

# n=3: sizes 0, 1, 2 are smaller than the world, 7 and 1001 are not divisible by it, 999 is
SIZES = [0, 1, 2, 3, 7, 999, 1001]
DTYPES = ["float32", "float64", "int64", "bfloat16"]


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}ranks")
def checked(request):
    n = request.param
    return n, launch(C.check_all_reduce, n, SIZES, DTYPES, backend="gloo", timeout=60)


def test_ring_and_naive_equal_dist_all_reduce(checked):
    n, out = checked
    for o in out:
        for (algo, dtype, numel), err in o["errors"].items():
            if dtype == "int64":
                assert err == 0, (algo, numel)          # integer sums are exact in any order
            elif n == 2 or dtype == "float64":
                # with 2 ranks a + b = b + a: the same bits; float64 leaves 1e-13 of room at 3 ranks
                assert err <= 1e-12, (algo, dtype, numel, err)
            else:
                # 3 ranks add in another order than gloo: one rounding of the largest partial sum
                # (|sum| < 12 for 3 standard normals): 1 ulp of fp32 at 16 is 2e-6, of bf16 0.125
                assert err <= (2e-6 if dtype == "float32" else 0.125), (algo, dtype, numel, err)


def test_avg_divides_the_sum(checked):
    n, out = checked
    expected = [i + (n - 1) / 2 for i in range(10)]    # mean of i + rank over ranks
    for o in out:
        assert o["avg"] == pytest.approx(expected, abs=1e-6)


def test_bytes_sent_match_the_formulas(checked):
    n, out = checked
    for dtype in DTYPES:
        size = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
        for numel in SIZES:
            S = numel * size
            ring = [o["traffic"][("ring", dtype, numel)] for o in out]
            naive = [o["traffic"][("naive", dtype, numel)] for o in out]
            # every chunk travels n-1 times in each phase: exactly 2(n-1)S over all ranks
            assert sum(s for s, _ in ring) == 2 * (n - 1) * S
            assert sum(s for s, _ in ring) == sum(r for _, r in ring)
            if numel % n == 0:                         # equal chunks: each rank exactly 2(n-1)/n * S
                assert all(s == C.estimate_ring_bytes(S, n) for s, _ in ring)
            else:                                      # chunks differ by one element at most
                assert all(abs(s - C.estimate_ring_bytes(S, n)) <= 2 * (n - 1) * size for s, _ in ring)
            assert naive[0] == (C.estimate_naive_root_bytes(S, n),) * 2 if numel else naive[0] == (0, 0)
            assert all(x == (S, S) for x in naive[1:])


def test_chunk_bounds_cover_every_element_once():
    for numel in (0, 1, 2, 5, 7, 1001):
        for n in (1, 2, 3, 4):
            bounds = C.chunk_bounds(numel, n)
            sizes = [e - s for s, e in bounds]
            assert bounds[0][0] == 0 and bounds[-1][1] == numel
            assert all(bounds[i][1] == bounds[i + 1][0] for i in range(n - 1))
            assert max(sizes) - min(sizes) <= 1


def test_schedule_replay_ends_with_every_rank_holding_every_sum():
    """The schedule itself, replayed without ranks: after reduce-scatter rank r owns the full chunk r+1."""
    for n in (2, 3, 4, 5):
        log = [(ph, s, r, (r + 1) % n, send, 0) for r in range(n) for ph, s, send, _ in C.ring_schedule(r, n)]
        states = C.replay_ring(log, n)
        assert len(states) == 2 * (n - 1) + 1
        everyone = frozenset(range(n))
        after_rs = states[n - 1]
        assert all(after_rs[r][(r + 1) % n] == everyone for r in range(n))
        assert all(after_rs[r][c] != everyone for r in range(n) for c in range(n) if c != (r + 1) % n)
        assert all(cell == everyone for row in states[-1] for cell in row)


def test_bad_input_names_the_fix():
    with pytest.raises(ValueError, match="contiguous"):
        C.ring_all_reduce(torch.ones(4, 4).t())
    with pytest.raises(ValueError, match="op="):
        C.ring_all_reduce(torch.ones(4), op="max")
    with pytest.raises(ValueError, match="sum"):
        C.naive_all_reduce(torch.ones(4, dtype=torch.int64), op="avg")
    with pytest.raises(TypeError, match="Tensor"):
        C.ring_all_reduce([1.0, 2.0])
    with pytest.raises(ValueError, match="launch"):          # no process group in the test process
        C.ring_all_reduce(torch.ones(4))
    with pytest.raises(ValueError, match="world_size"):
        C.chunk_bounds(4, 0)


def test_lesson_plots_draw():
    """The lesson's figures render from the data the collectives produce."""
    from frugal import plots
    n = 3
    log = [(ph, s, r, (r + 1) % n, send, 0) for r in range(n) for ph, s, send, _ in C.ring_schedule(r, n)]
    fig = plots.ring_steps(C.replay_ring(log, n))
    assert len(fig.axes) == 2 * (n - 1) + 1
    fig = plots.bytes_per_rank({"ring": [8, 8, 8]}, {"ring": [8.0] * 3})
    assert len(fig.axes) == 1
    rows = [{"algorithm": a, "busbw_GBps": v} for a, v in (("ring", 1.0), ("nccl", 2.0))]
    assert len(plots.bus_bandwidth(rows).axes[0].patches) == 2


def test_ranks_passing_different_dtypes_are_refused_on_every_rank():
    """fp32 on rank 0 and int32 on rank 1 would be exchanged as raw bytes: 1.0000001 for 2, no error."""
    def mismatched(rank, world):
        import torch
        from frugal import collectives
        t = torch.ones(4) if rank == 0 else torch.ones(4, dtype=torch.int32)
        try:
            collectives.ring_all_reduce(t)
        except ValueError as e:
            return str(e)
        return "no error"
    messages = launch(mismatched, 2, backend="gloo", timeout=20)
    for m in messages:
        assert "rank 0: torch.float32 x 4, rank 1: torch.int32 x 4" in m and "same dtype" in m
