import gc
import time
import weakref

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from frugal import estimate, measure
from frugal.model import TinyGPT, preset


def test_measure_time_warms_up_then_takes_the_median():
    calls = []
    timing = measure.measure_time(lambda: calls.append(time.sleep(0.002)), "cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and timing.warmup == 2 and len(timing.times_s) == 5
    assert timing.median_s >= 0.002 and timing.min_s <= timing.median_s
    assert timing.median_s == sorted(timing.times_s)[2]


def test_measure_time_inner_times_calls_back_to_back_and_divides():
    calls = []
    timing = measure.measure_time(lambda: calls.append(time.sleep(0.002)), "cpu", warmup=1, repeats=3, inner=4)
    assert len(calls) == 1 + 3 * 4 and len(timing.times_s) == 3
    assert 0.002 <= timing.median_s < 0.008          # per call, not per window of 4 (8 ms and more)


@pytest.mark.parametrize("warmup,repeats,inner", [(-1, 5, 1), (0, 0, 1), (0, 5, 0)])
def test_measure_time_refuses_bad_counts(warmup, repeats, inner):
    with pytest.raises(ValueError, match="repeats"):
        measure.measure_time(lambda: None, "cpu", warmup, repeats, inner)


def test_peak_memory_is_none_on_cpu_but_runs_fn():
    calls = []
    assert measure.measure_peak_memory(lambda: calls.append(1), "cpu") is None and calls == [1]


def test_saved_tensors_are_counted_once_per_storage_and_parameters_left_out():
    w = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    with measure.count_saved_tensors(exclude=[w]) as saved:
        h = x @ w                     # saves x and w (w excluded)
        y = (h * h.view(4, 8)).sum()  # saves h twice, as two views of one storage
    assert saved.skipped_params == 1
    assert saved.nbytes == x.nbytes + h.nbytes
    y.backward()                      # the hooks give back the very tensors: backward still works
    torch.testing.assert_close(x.grad, 2 * h.detach() @ w.detach().T)



def test_counting_frees_a_forward_without_backward():
    """exp saves its own output: a pack hook returning that tensor itself would close node -> tensor -> node,
    a cycle through C++ that not even gc.collect() frees, so each measured forward leaked all its activations."""
    x = torch.randn(3, requires_grad=True)
    gc.disable()
    try:
        with measure.count_saved_tensors() as saved:
            y = x.exp()
        alive = weakref.ref(y)
        del y
        assert alive() is None
    finally:
        gc.enable()
    assert len(saved.tensors) == 1

@pytest.mark.parametrize("name,batch,seq", [("tiny", 8, 64), ("tiny", 3, 17), ("small", 2, 128)])
def test_counted_activation_bytes_agree_with_the_estimate(name, batch, seq):
    """Within 1%: the count also holds a few small tensors the estimate leaves out (the position index,
    the loss's scalar), a few hundred bytes; a wrong term in the estimate would miss by several percent."""
    cfg = preset(name)
    model = TinyGPT(cfg)
    x = torch.randint(cfg.vocab_size, (batch, seq))
    counted = measure.measure_activation_bytes(model, x, x)
    predicted = sum(estimate.estimate_activation_bytes(cfg, batch, seq).values())
    assert counted == pytest.approx(predicted, rel=0.01)


def test_activation_bytes_are_counted_even_under_no_grad():
    model = TinyGPT(preset("tiny"))
    x = torch.randint(256, (2, 16))
    with torch.no_grad():
        assert measure.measure_activation_bytes(model, x, x) == measure.measure_activation_bytes(model, x, x) > 0


def test_flops_per_token_matches_pytorchs_flop_counter():
    """PyTorch's FlopCounterMode counts every matmul of forward + backward. With the math attention
    (plain bmm, which it counts) it must equal B·T·(6·W + 12·L·d·T) exactly, W = the matmul weights;
    flops_per_token's N adds biases and LayerNorm parameters, which do no matmul (a few percent)."""
    cfg = preset("tiny")
    model = TinyGPT(cfg)
    B, T = 2, 32
    x = torch.randint(cfg.vocab_size, (B, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, x)[1].backward()
    W = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))   # lm_head = wte
    assert counter.get_total_flops() == B * T * (6 * W + 12 * cfg.n_layer * cfg.n_embd * T)
    ours = measure.model_flops_per_token(model, T) * B * T
    assert counter.get_total_flops() == pytest.approx(ours, rel=0.03)
    assert measure.flops_per_token(100, 2, 8, 4) == 6 * 100 + 12 * 2 * 8 * 4


def test_mfu_is_achieved_over_peak():
    assert measure.mfu(1000, 6e6, 1.2e10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="peak_flops"):
        measure.mfu(1000, 6e6, 0)
    with pytest.raises(ValueError, match="tokens_per_s"):
        measure.mfu(-1, 6e6, 1e12)
    with pytest.raises(ValueError, match="seq_len"):
        measure.flops_per_token(100, 2, 8, 0)


def test_cpu_peak_is_a_plausible_matmul_rate():
    peak = measure.measure_cpu_peak_flops(seconds=0.05, n=256)
    assert 1e8 < peak < 1e14       # from a slow laptop core to a large server: anything else is a unit bug
    with pytest.raises(ValueError, match="seconds"):
        measure.measure_cpu_peak_flops(seconds=0)


@pytest.mark.gpu
def test_cuda_timing_and_peak_memory():
    a = torch.randn(1024, 1024, device="cuda")
    t = measure.measure_time(lambda: a @ a, "cuda", warmup=2, repeats=5)
    assert 0 < t.median_s < 1
    peak = measure.measure_peak_memory(lambda: torch.empty(2 ** 26, device="cuda"), "cuda")
    assert peak >= 2 ** 28


@pytest.mark.gpu
def test_gpt2_small_activation_estimate_on_cuda():
    """At GPT-2 size on a GPU the bound is 15%: CUDA's fused attention may pad its log-sum-exp
    and keep RNG state, which the estimate does not model term by term."""
    cfg = preset("gpt2-small")
    model = TinyGPT(cfg).cuda()
    x = torch.randint(cfg.vocab_size, (8, 1024), device="cuda")
    counted = measure.measure_activation_bytes(model, x, x)
    assert counted == pytest.approx(sum(estimate.estimate_activation_bytes(cfg, 8, 1024).values()), rel=0.15)
