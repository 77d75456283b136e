"""frugal.kernels.fused_add_rmsnorm: forward and backward against autograd through the eager chain."""
import pytest
import torch

pytest.importorskip("triton", reason="frugal.kernels needs `pip install triton` (Linux)")
from frugal.kernels import sm_count  # noqa: E402
from frugal.kernels.fused_add_rmsnorm import (FLOOR, add_rmsnorm, add_rmsnorm_bytes,  # noqa: E402
                                              add_rmsnorm_reference, benchmark_add_rmsnorm, do_nothing, row_tiles)
from frugal.kernels.roofline import count_bytes_moved  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32 tolerance: the kernel sums squares in another order than torch.mean (tree vs sequential), so
# results differ by a few ulps, never more.
TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(*shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(2))
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(DEVICE, dtype).requires_grad_()
    return x, r, w


@pytest.mark.parametrize("shape", [(5, 33), (1, 1), (2, 3, 100), (7, 64)])
def test_forward_equals_eager_chain(shape):
    x, r, w = _inputs(*shape)
    y, h = add_rmsnorm(x, r, w)
    y_ref, h_ref = add_rmsnorm_reference(x, r, w)
    assert torch.equal(h, h_ref)                      # one add: exact
    torch.testing.assert_close(y, y_ref, **TOL)


@pytest.mark.parametrize("shape", [(5, 33), (1, 1), (2, 3, 100)])
def test_backward_equals_autograd_through_eager_chain(shape):
    x, r, w = _inputs(*shape)
    gy, gh = torch.randn_like(x), torch.randn_like(x)
    ours = torch.autograd.grad(add_rmsnorm(x, r, w), (x, r, w), (gy, gh))
    ref = torch.autograd.grad(add_rmsnorm_reference(x, r, w), (x, r, w), (gy, gh))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **TOL)


def test_backward_when_only_the_normed_output_is_used():
    x, r, w = _inputs(6, 40)
    ours = torch.autograd.grad(add_rmsnorm(x, r, w)[0].square().sum(), (x, r, w))
    ref = torch.autograd.grad(add_rmsnorm_reference(x, r, w)[0].square().sum(), (x, r, w))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **TOL)


def test_empty_batch():
    x, r, w = _inputs(0, 16)
    y, h = add_rmsnorm(x, r, w)
    assert y.shape == (0, 16)
    gx, gr, gw = torch.autograd.grad((y, h), (x, r, w), (torch.ones_like(y), torch.ones_like(h)))
    assert gx.shape == (0, 16) and torch.equal(gw, torch.zeros(16, device=DEVICE))


def test_bfloat16_within_bf16_rounding():
    x, r, w = _inputs(4, 48, dtype=torch.bfloat16)
    y, h = add_rmsnorm(x, r, w)
    y_ref, h_ref = add_rmsnorm_reference(x, r, w)
    assert y.dtype == h.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: one rounding step is up to 2**-8 relative. The interpreter's fp32 -> bf16
    # cast may round differently from torch's round-to-nearest-even, so h too may differ by that one step.
    torch.testing.assert_close(h, h_ref, rtol=2 ** -7, atol=2 ** -7)
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)


def test_the_rule_packs_narrow_rows_into_one_tile_and_wide_rows_one_per_tile():
    gpt2, llama = row_tiles(8192, 768, 132), row_tiles(16384, 4096, 132)
    assert (gpt2.block_m, gpt2.block_n, gpt2.num_warps, gpt2.programs) == (4, 1024, 8, 264)
    assert (llama.block_m, llama.block_n, llama.num_warps, llama.programs) == (1, 4096, 8, 264)
    assert row_tiles(3, 33, 132).block_m == 4             # never more rows per tile than the tensor rounded up
    assert row_tiles(5, 65536, 132).num_warps == 16 and row_tiles(0, 8, 132).programs == 1


def test_a_repeated_shape_reuses_its_tiles_and_a_new_shape_computes_them():
    x, r, w = _inputs(6, 40)
    add_rmsnorm(x, r, w)
    before = row_tiles.cache_info()
    y, _ = add_rmsnorm(x, r, w)
    after = row_tiles.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)    # the step's shape: no recompute
    add_rmsnorm(*_inputs(13, 29))                                           # a shape no other test uses
    assert row_tiles.cache_info().misses == after.misses + 1
    torch.testing.assert_close(y, add_rmsnorm_reference(x, r, w)[0], **TOL)


# (rows, cols): several rows per tile with the last tile partial; tiles walked by fewer persistent programs
# than there are tiles (2 SMs on a CPU: 4 programs); one row wider than a tile.
@pytest.mark.parametrize("shape", [(37, 100), (300, 64), (9, 5000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_several_rows_per_program_match_autograd(shape, dtype):
    tiles = row_tiles(*shape, sm_count(torch.device(DEVICE)))
    if shape == (37, 100):
        assert tiles.block_m > 1 and shape[0] % tiles.block_m
    if shape == (300, 64) and DEVICE == "cpu":
        assert tiles.programs < -(-shape[0] // tiles.block_m)
    x, r, w = _inputs(*shape, dtype=dtype)
    gy, gh = torch.randn_like(x), torch.randn_like(x)
    ours = add_rmsnorm(x, r, w)
    ref = add_rmsnorm_reference(x, r, w)
    grads = [torch.autograd.grad(out, (x, r, w), (gy, gh)) for out in (ours, ref)]
    if dtype == torch.float32:
        # sums in another order (tile rows, then programs' dw rows): a few ulps, and dw adds up to 300 terms
        tol = dict(rtol=1e-4, atol=1e-4)
        pairs = zip(ours + grads[0], ref + grads[1])
    else:
        # bf16 keeps 8 significant bits: outputs and gx within a few rounding steps (2**-8 relative). dw sums
        # n_rows products of h, and h may differ from torch's by one step (the interpreter's bf16 cast rounds
        # otherwise), so dw is held to the exact sum over ours' own h, in fp64: one bf16 rounding of the result
        tol = dict(rtol=2e-2, atol=2e-2)
        h = ours[1].double()
        n = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        dw = (gy.double() * n).reshape(-1, shape[-1]).sum(0)
        torch.testing.assert_close(grads[0][2].double(), dw, rtol=2 ** -7, atol=1e-3)
        pairs = zip(ours + grads[0][:2], ref + grads[1][:2])
    for a, b in pairs:
        torch.testing.assert_close(a.float(), b.float(), **tol, msg=lambda m: f"{shape} {dtype}: {m}")
    assert grads[0][2].dtype == dtype


def test_fused_moves_fewer_bytes_than_the_eager_chain():
    rows = benchmark_add_rmsnorm([(32, 64)], DEVICE, repeats=1)
    fused, eager = (next(r for r in rows if r["impl"] == name) for name in ("fused (ours)", "eager chain"))
    programs = row_tiles(32, 64, sm_count(torch.device(DEVICE))).programs
    assert fused["bytes moved"] == add_rmsnorm_bytes(32, 64, 4, programs=programs)
    assert add_rmsnorm_bytes(32, 64, 4, programs=3) - add_rmsnorm_bytes(32, 64, 4, programs=1) == 2 * 2 * 4 * 64
    assert eager["bytes moved"] > 2.5 * fused["bytes moved"]
    assert eager["kernels"] > 10


def test_a_peer_is_timed_beside_ours_and_its_bytes_left_blank():
    rows = benchmark_add_rmsnorm([(8, 16)], DEVICE, repeats=1, extra={"eager again": add_rmsnorm_reference})
    peer = next(r for r in rows if r["impl"] == "eager again")
    assert peer["fwd+bwd ms"] > 0 and peer["bytes moved"] is None and peer["GB/s"] is None
    assert {r["impl"] for r in rows} == {"fused (ours)", "eager chain", "add + F.rms_norm", "eager again", FLOOR}


def test_the_floor_row_launches_nothing_and_passes_gradients_through():
    rows = benchmark_add_rmsnorm([(8, 16)], DEVICE, repeats=1)
    floor = next(r for r in rows if r["impl"] == FLOOR)
    assert floor["kernels"] == 0 and floor["bytes moved"] == 0 and floor["speedup vs eager"] is None
    assert floor["fwd+bwd ms"] > 0
    x, r, w = _inputs(8, 16)
    gy, gh = torch.randn(8, 16, device=DEVICE), torch.randn(8, 16, device=DEVICE)
    with count_bytes_moved() as rec:
        grads = torch.autograd.grad(do_nothing(x, r, w), (x, r, w), (gy, gh))
    assert rec.launches == 0
    assert grads[0] is gy and grads[1] is gh and grads[2].shape == w.shape


def test_shape_mismatch_is_refused():
    x, r, w = _inputs(3, 8)
    with pytest.raises(ValueError, match="residual"):
        add_rmsnorm(x, r[:2], w)
    with pytest.raises(ValueError, match="weight"):
        add_rmsnorm(x, r, w[:4])


def test_dtype_mismatch_is_refused():
    x, r, w = _inputs(3, 8)
    with pytest.raises(TypeError, match="cast"):
        add_rmsnorm(x, r.double(), w)


def test_non_contiguous_is_refused():
    x, r, w = _inputs(8, 8)
    with pytest.raises(ValueError, match="contiguous"):
        add_rmsnorm(x.t(), r, w)


def test_device_mismatch_is_refused():
    x, r, w = _inputs(3, 8)
    with pytest.raises(ValueError, match="device"):
        add_rmsnorm(x, r, torch.ones(8, device="meta"))


@pytest.mark.gpu
def test_wide_rows_on_gpu():
    x, r, w = _inputs(300, 4096)
    gy, gh = torch.randn_like(x), torch.randn_like(x)
    ours = torch.autograd.grad(add_rmsnorm(x, r, w), (x, r, w), (gy, gh))
    ref = torch.autograd.grad(add_rmsnorm_reference(x, r, w), (x, r, w), (gy, gh))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)   # dw sums 300 rows in another order


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the race it guards against needs programs running at once")
@pytest.mark.parametrize("shape", [(8192, 768), (16384, 4096), (1000, 50)])
def test_the_last_program_sums_every_dw_row_the_same_way_each_call(shape):
    """The backward's last program to finish sums the P partial rows of dw, in order: on a GPU, where programs
    run at once, 30 calls give the same bits each time (no row read before it was written) and the sum equals
    torch's sum of the same rows within fp32 reordering."""
    from frugal.kernels.fused_add_rmsnorm import _counter
    x, r, w = _inputs(*shape)
    gy, gh = torch.randn_like(x), torch.randn_like(x)
    first = torch.autograd.grad(add_rmsnorm(x, r, w), (w,), (gy, gh))[0]
    for _ in range(30):
        assert torch.equal(torch.autograd.grad(add_rmsnorm(x, r, w), (w,), (gy, gh))[0], first)
    h = (x + r).detach()
    n = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(first, (gy * n).sum(0), rtol=1e-4, atol=1e-3)   # 8192+ rows summed in other orders
    assert _counter(x.device).item() == 0                                         # reset for the next call
