"""frugal.kernels.linear_cross_entropy_tiled against F.cross_entropy on the full logits (Triton's interpreter on CPU)."""
import pytest
import torch

pytest.importorskip("triton", reason="frugal.kernels needs `pip install triton` (Linux)")
from frugal import measure  # noqa: E402
from frugal.kernels.fused_linear_cross_entropy import linear_cross_entropy_reference  # noqa: E402
from frugal.kernels.linear_cross_entropy_tiled import (INTERPRETER_TILES,  # noqa: E402
                                                       linear_cross_entropy_tiled)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = INTERPRETER_TILES   # tiles of 16 on every device, so these shapes fall off them; a GPU's default is 128 wide


def _inputs(n, v, c, dtype=torch.float32, ignore_every=0, scale=1.0):
    g = torch.Generator().manual_seed(0)
    h = (scale * torch.randn(n, c, generator=g)).to(DEVICE, dtype).requires_grad_()
    w = torch.randn(v, c, generator=g).to(DEVICE, dtype).requires_grad_()
    t = torch.randint(v, (n,), generator=g).to(DEVICE)
    if ignore_every:
        t[::ignore_every] = -100
    return h, w, t


def _reference(h, w, t, reduction="mean", ignore_index=-100):
    """The exact answer for these (possibly low-precision) inputs: eager in fp32 on their upcast values."""
    hf, wf = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    loss = linear_cross_entropy_reference(hf, wf, t, ignore_index, reduction)
    return loss, torch.autograd.grad(loss, (hf, wf))


# Off every tile: 37 tokens, 50 or 300 classes, width 24, against tiles of 16; vocab_per_split=16 and 64
# make several vocabulary splits whose log-sum-exps are combined.
@pytest.mark.parametrize("n,v,c,split", [(37, 50, 24, 16), (1, 3, 4, 16), (37, 300, 24, 64), (16, 16, 16, 4096)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("vocab_chunk", [None, 7])          # the backward by tiles, or by chunks of 7 columns
def test_fp32_loss_and_gradients_equal_eager(n, v, c, split, reduction, vocab_chunk):
    h, w, t = _inputs(n, v, c, ignore_every=3 if n > 1 else 0)
    tiles = None if split == 4096 else SMALL                 # 4096: the device's own tiles
    loss = linear_cross_entropy_tiled(h, w, t, reduction=reduction, vocab_per_split=split, vocab_chunk=vocab_chunk,
                                      tiles=tiles)
    ref, ref_grads = _reference(h, w, t, reduction)
    # fp32 both: the tiles sum the logits' products and the gradients' shares in another order; ~100 ulps
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(loss, (h, w)), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gradients_are_eager_within_one_rounding(dtype):
    h, w, t = _inputs(37, 50, 24, dtype, ignore_every=4)
    loss = linear_cross_entropy_tiled(h, w, t, vocab_per_split=16, tiles=SMALL)
    ref, ref_grads = _reference(h, w, t)
    # logits in fp32 from the exact products of dtype inputs: the loss is fp32-accurate
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(loss, (h, w)), ref_grads):
        assert a.dtype == dtype
        eps = torch.finfo(dtype).eps                     # the gradient is rounded to dtype once (on a GPU twice:
        torch.testing.assert_close(a.float(), b, rtol=2 * eps, atol=2 * eps * b.abs().max().item())  # g, then out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_vocab_chunks_match_eager_in_the_same_dtype(dtype):
    h, w, t = _inputs(37, 50, 24, dtype, ignore_every=4)
    loss = linear_cross_entropy_tiled(h, w, t, vocab_per_split=16, vocab_chunk=16, tiles=SMALL)
    ref = linear_cross_entropy_reference(h, w, t)               # eager: logits rounded to dtype, as our chunks are
    torch.testing.assert_close(loss, ref.float(), rtol=1e-3, atol=2e-2)   # ours from fp32 logits: ~|z| 2^-9 apart
    # both round the logits to dtype before the softmax; grad_hidden sums 4 chunks in dtype (eager 1)
    for a, b in zip(torch.autograd.grad(loss, (h, w)), torch.autograd.grad(ref, (h, w))):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_large_logits_do_not_overflow():
    h, w, t = _inputs(20, 40, 16, ignore_every=3, scale=100.0)        # logits ~ ±2000: exp() overflows fp32 at 89
    loss = linear_cross_entropy_tiled(h, w, t, vocab_per_split=16, tiles=SMALL)
    ref, ref_grads = _reference(h, w, t)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-2)       # fp32 ulp at 2000 is 1.2e-4
    for a, b in zip(torch.autograd.grad(loss, (h, w)), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_other_ignore_index_and_all_ignored():
    h, w, t = _inputs(20, 40, 16)
    t[::2] = 7                                                        # a real class id used as the ignored one
    loss = linear_cross_entropy_tiled(h, w, t, ignore_index=7, vocab_per_split=16, tiles=SMALL)
    ref, ref_grads = _reference(h, w, t, ignore_index=7)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(loss, (h, w)), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    t[:] = -100
    loss = linear_cross_entropy_tiled(h, w, t)
    assert torch.isnan(loss) and torch.isnan(linear_cross_entropy_reference(h, w, t))
    assert not torch.autograd.grad(loss, h)[0].any()
    assert linear_cross_entropy_tiled(h, w, t, reduction="sum").item() == 0.0


def test_no_logits_are_saved_only_one_float_per_token():
    h, w, t = _inputs(64, 256, 16)
    with measure.count_saved_tensors(exclude=[h, w, t]) as rec:
        linear_cross_entropy_tiled(h, w, t)
    assert rec.nbytes == 64 * 4 + 8                                   # lse (N,) fp32 and the count of valid tokens


def test_bad_arguments_are_refused():
    h, w, t = _inputs(4, 10, 8)
    with pytest.raises(ValueError, match="vocab_per_split"):
        linear_cross_entropy_tiled(h, w, t, vocab_per_split=10)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy_tiled(h, w, t, reduction="none")
    with pytest.raises(ValueError, match="vocab_chunk"):
        linear_cross_entropy_tiled(h, w, t, vocab_chunk=0)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy_tiled(h, w, t[:3])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab_chunk", [None, 2048])
def test_gpu_gradients_equal_eager_at_a_real_vocabulary(dtype, vocab_chunk):
    h, w, t = _inputs(1000, 50257, 256, dtype, ignore_every=7)         # 50257: GPT-2's, off every tile
    w = (0.05 * w.detach()).requires_grad_()
    loss = linear_cross_entropy_tiled(h, w, t, vocab_chunk=vocab_chunk)
    ref, ref_grads = _reference(h, w, t)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    eps = torch.finfo(dtype).eps if dtype != torch.float32 else 1e-6
    for a, b in zip(torch.autograd.grad(loss, (h, w)), ref_grads):
        torch.testing.assert_close(a.float(), b, rtol=4 * eps, atol=4 * eps * b.abs().max().item())


def test_other_tile_shapes_give_the_same_answer():
    from frugal.kernels.linear_cross_entropy_tiled import TileConfig
    h, w, t = _inputs(37, 50, 24, ignore_every=3)
    ref, ref_grads = _reference(h, w, t)
    tiles = TileConfig(block_n=32, block_v=16, block_d=32, group_n=1, num_warps=1, num_stages=1)
    loss = linear_cross_entropy_tiled(h, w, t, vocab_per_split=32, tiles=tiles)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(loss, (h, w)), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="powers of two"):
        linear_cross_entropy_tiled(h, w, t, tiles=TileConfig(block_n=24))
