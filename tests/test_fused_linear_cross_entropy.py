"""frugal.kernels.fused_linear_cross_entropy against F.cross_entropy on the full logits."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="frugal.kernels needs `pip install triton` (Linux)")
from frugal import measure  # noqa: E402
from frugal.kernels.fused_linear_cross_entropy import (default_chunk_size,  # noqa: E402
                                                       estimate_linear_cross_entropy_memory,
                                                       linear_cross_entropy, linear_cross_entropy_reference)
from frugal.model import TinyGPT, preset  # noqa: E402
from frugal.train import TrainConfig, train  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32: the chunked path sums the loss and grad_weight in another order than one big matmul and
# log_softmax, so a few ulps differ; 1e-5 is ~100 ulps at these magnitudes.
TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(n, v, c, ignore_every=0):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, c, generator=g).to(DEVICE).requires_grad_()
    w = torch.randn(v, c, generator=g).to(DEVICE).requires_grad_()
    t = torch.randint(v, (n,), generator=g).to(DEVICE)
    if ignore_every:
        t[::ignore_every] = -100
    return h, w, t


@pytest.mark.parametrize("n,v,c,chunk", [(37, 50, 16, 8), (1, 3, 4, None), (20, 1000, 8, 7), (64, 300, 32, 64)])
def test_loss_and_gradients_equal_full_logits(n, v, c, chunk):
    h, w, t = _inputs(n, v, c, ignore_every=3 if n > 1 else 0)      # every third token ignored
    loss = linear_cross_entropy(h, w, t, chunk_size=chunk)
    ref = linear_cross_entropy_reference(h, w, t)
    torch.testing.assert_close(loss, ref, **TOL)
    for a, b in zip(torch.autograd.grad(2 * loss, (h, w)), torch.autograd.grad(2 * ref, (h, w))):
        torch.testing.assert_close(a, b, **TOL)


def test_all_tokens_ignored_gives_nan_loss_and_zero_gradients_like_torch():
    h, w, t = _inputs(4, 10, 8)
    t[:] = -100
    loss = linear_cross_entropy(h, w, t)
    assert torch.isnan(loss) and torch.isnan(linear_cross_entropy_reference(h, w, t))
    assert not torch.autograd.grad(loss, h)[0].any()


def test_empty_batch_is_nan_like_torch():
    h, w, t = _inputs(0, 10, 8)
    assert torch.isnan(linear_cross_entropy(h, w, t))


def test_no_logits_tensor_is_saved_for_backward():
    h, w, t = _inputs(64, 256, 16)
    with measure.count_saved_tensors() as ours:
        linear_cross_entropy(h, w, t, chunk_size=16)
    with measure.count_saved_tensors() as ref:
        linear_cross_entropy_reference(h, w, t)
    assert all(s.shape != (64, 256) for s in ours.tensors)
    assert ours.nbytes == 64 * 16 * 4 + 256 * 16 * 4             # grad_hidden and grad_weight, nothing else
    assert ref.nbytes >= 64 * 256 * 4                             # the full logits (or log-probs) at least


def test_estimate_shrinks_with_chunks():
    unfused = estimate_linear_cross_entropy_memory(8192, 50304, 768, None)
    chunked = estimate_linear_cross_entropy_memory(8192, 50304, 768, default_chunk_size(8192, 50304))
    assert chunked < 0.3 * unfused


def test_chunk_rule_passes_the_ridge_within_the_memory_bound():
    from frugal.kernels.fused_linear_cross_entropy import RIDGE_FLOP_PER_BYTE
    for size in (2, 4):
        c = default_chunk_size(1 << 20, 50304, element_size=size)
        assert c / size >= 2 * RIDGE_FLOP_PER_BYTE                 # grad_weight's update: c / size FLOP per byte
        assert c & (c - 1) == 0
    assert default_chunk_size(100, 50304, element_size=2) == 100   # never more than the tokens
    c = default_chunk_size(1 << 20, 128256, element_size=2, max_chunk_bytes=2 ** 28)
    assert c * 128256 * 2 <= 2 ** 28 < 2 * c * 128256 * 2           # the bound wins, as large as it allows
    with pytest.raises(TypeError):
        default_chunk_size(8192, 50304, 768)                       # n_embd no longer decides: keyword-only


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_eager_in_the_same_dtype(dtype):
    h, w, t = _inputs(70, 300, 32, ignore_every=4)
    h, w = h.detach().to(dtype).requires_grad_(), (0.3 * w.detach()).to(dtype).requires_grad_()
    loss = linear_cross_entropy(h, w, t, chunk_size=16)
    ref = linear_cross_entropy_reference(h, w, t)             # logits rounded to dtype by the same matmul
    # the logits are rounded to dtype in both; the chunks sum grad_weight with 5 roundings to dtype instead of 1
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-3)
    for a, b in zip(torch.autograd.grad(loss, (h, w)), torch.autograd.grad(ref, (h, w))):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_sum_reduction_and_large_logits():
    h, w, t = _inputs(40, 100, 16, ignore_every=5)
    h50 = (50 * h).detach().requires_grad_()                      # logits in the hundreds: exp() would overflow
    for reduction in ("sum", "mean"):
        loss = linear_cross_entropy(h50, w, t, chunk_size=16, reduction=reduction)
        ref = linear_cross_entropy_reference(h50, w, t, reduction=reduction)
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-3)   # fp32 at |logits| ~ 500: ulps of ~3e-5
        # logits ~500 carry ~1e-4 of fp32 rounding that depends on the matmul's summation order (cuBLAS sums
        # in another order than a CPU); the softmax turns it into a relative error of ~2e-4 in the gradients
        for a, b in zip(torch.autograd.grad(loss, (h50, w)), torch.autograd.grad(ref, (h50, w))):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_bad_reduction_and_chunk_are_refused():
    h, w, t = _inputs(4, 10, 8)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, t, reduction="none")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(h, w, t, chunk_size=0)


def test_tinygpt_switch_gives_the_same_loss_and_gradients():
    cfg = preset("tiny", n_layer=1)
    torch.manual_seed(0)
    model = TinyGPT(cfg).to(DEVICE)
    x, y = torch.randint(cfg.vocab_size, (2, 2, 16), device=DEVICE)
    logits, ref = model(x, y)
    g_ref = torch.autograd.grad(ref, model.wte.weight)[0]
    model.fused_cross_entropy = True
    none, loss = model(x, y)
    assert none is None
    torch.testing.assert_close(loss, ref, **TOL)
    torch.testing.assert_close(torch.autograd.grad(loss, model.wte.weight)[0], g_ref, **TOL)
    assert model(x)[0].shape == logits.shape                   # no targets: logits as before


def test_train_config_switch_trains():
    res = train(preset("tiny", n_layer=1), TrainConfig(steps=2, batch_size=2, seq_len=16, progress=False,
                                                       fused_cross_entropy=True, data="synthetic", device=DEVICE))
    assert res.model.fused_cross_entropy and all(torch.isfinite(torch.tensor(res.column("loss"))))


def test_shape_mismatch_is_refused():
    h, w, t = _inputs(4, 10, 8)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(h, w, t[:3])
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(h, w[:, :4], t)


def test_target_out_of_range_is_refused():
    h, w, t = _inputs(4, 10, 8)
    t[0] = 10
    with pytest.raises(ValueError, match="ignore_index"):
        linear_cross_entropy(h, w, t)


def test_dtypes_are_checked():
    h, w, t = _inputs(4, 10, 8)
    with pytest.raises(TypeError, match="int64"):
        linear_cross_entropy(h, w, t.int())
    with pytest.raises(TypeError, match="dtype"):
        linear_cross_entropy(h, w.double(), t)


def test_non_contiguous_and_device_mismatch_are_refused():
    h, w, t = _inputs(4, 10, 8)
    with pytest.raises(ValueError, match="contiguous"):
        linear_cross_entropy(torch.randn(8, 4, device=DEVICE).t(), w, t)
    with pytest.raises(ValueError, match="device"):
        linear_cross_entropy(h, w, torch.zeros(4, dtype=torch.long, device="meta"))


@pytest.mark.gpu
def test_gpu_bf16_and_memory_below_unfused():
    from frugal.measure import measure_peak_memory
    h, w, t = _inputs(4096, 50304, 256, ignore_every=5)
    loss = linear_cross_entropy(h, w, t)
    torch.testing.assert_close(loss, linear_cross_entropy_reference(h, w, t), rtol=1e-4, atol=1e-4)
    ours = measure_peak_memory(lambda: torch.autograd.grad(linear_cross_entropy(h, w, t), (h, w)), "cuda")
    ref = measure_peak_memory(lambda: torch.autograd.grad(linear_cross_entropy_reference(h, w, t), (h, w)), "cuda")
    assert ours < 0.5 * ref


def test_autocast_runs_the_head_in_autocasts_dtype_like_the_plain_head():
    h, w, t = _inputs(32, 64, 16)
    with torch.autocast(device_type=torch.device(DEVICE).type, dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, t, chunk_size=8)
        ref = F.cross_entropy(F.linear(h, w).float(), t)           # autocast rounds hidden, weight and logits
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-3)
    grads, ref_grads = torch.autograd.grad(loss, (h, w)), torch.autograd.grad(ref, (h, w))
    for a, b in zip(grads, ref_grads):
        assert a.dtype == torch.float32                               # back to the fp32 leaves through the cast
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_second_backward_is_refused_not_scaled_twice():
    h, w, t = _inputs(8, 10, 8)
    loss = linear_cross_entropy(h, w, t)
    g1 = torch.autograd.grad(3 * loss, h, retain_graph=True)[0]
    torch.testing.assert_close(g1, torch.autograd.grad(3 * linear_cross_entropy_reference(h, w, t), h)[0], **TOL)
    with pytest.raises(RuntimeError, match="forward again"):
        torch.autograd.grad(loss, h)
