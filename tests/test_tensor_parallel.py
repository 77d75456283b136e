"""Megatron tensor parallelism on 2 gloo ranks against the unsplit TinyGPT block (one launch for all checks), and
on 4 ranks (one more)."""
import pytest
import torch

from frugal import tensor_parallel as tp
from frugal.dist import launch
from frugal.model import Block, preset

WORLD, BATCH, SEQ, SEED = 2, 2, 16, 0
CFG = preset("tiny")                    # n_embd=64, n_head=4: 2 heads and 128 MLP units per rank
# fp32: the split matmuls add partial sums in another order than one full matmul (and the all-reduce adds
# the two halves), so outputs differ by rounding only: a few ulps of values of order 1.
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def ranks():
    return launch(tp.tp_equivalence_rank, WORLD, CFG, BATCH, SEQ, SEED, backend="gloo", timeout=60)


def _reference(what):
    """The unsplit module on the same seed and input, with the same loss."""
    torch.manual_seed(SEED)
    full = Block(CFG)
    mod = {"mlp": full.mlp, "attn": full.attn, "block": full}[what]
    x = torch.randn(BATCH, SEQ, CFG.n_embd, generator=torch.Generator().manual_seed(SEED + 1)).requires_grad_(True)
    y = mod(x)
    y.pow(2).sum().backward()
    return y.detach(), x.grad, dict(mod.named_parameters())


@pytest.mark.parametrize("what", ["mlp", "attn", "block"])
def test_outputs_and_gradients_equal_the_unsplit_module(ranks, what):
    y, x_grad, params = _reference(what)
    for rank, out in enumerate(ranks):
        o = out[what]
        torch.testing.assert_close(o["y"], y, atol=ATOL, rtol=RTOL)             # every rank holds the full output
        torch.testing.assert_close(o["x_grad"], x_grad, atol=ATOL, rtol=RTOL)   # f's all-reduce completed it
        assert set(o["grads"]) == set(params)
        for name, g in o["grads"].items():
            torch.testing.assert_close(g, tp.shard_of(name, params[name].grad, rank, WORLD), atol=ATOL, rtol=RTOL)


def test_ranks_hold_different_halves_of_the_weights(ranks):
    shapes = ranks[0]["block"]["shapes"]
    C = CFG.n_embd
    assert shapes["attn.c_attn.weight"] == (3 * C // WORLD, C)     # q, k, v of n_head/2 heads
    assert shapes["attn.c_proj.weight"] == (C, C // WORLD)
    assert shapes["mlp.c_fc.weight"] == (4 * C // WORLD, C)
    assert shapes["mlp.c_proj.weight"] == (C, 4 * C // WORLD)
    assert shapes["ln_1.weight"] == (C,)                          # replicated
    g0, g1 = ranks[0]["block"]["grads"], ranks[1]["block"]["grads"]
    assert not torch.allclose(g0["mlp.c_fc.weight"], g1["mlp.c_fc.weight"])
    torch.testing.assert_close(g0["ln_1.weight"], g1["ln_1.weight"], atol=0, rtol=0)  # same all-reduced grad


def test_communication_is_four_all_reduces_per_layer(ranks):
    """Megatron fig. 4: g in forward and f in backward, for attention and for the MLP."""
    events = ranks[0]["block"]["comm"]
    assert [(e["where"], e["phase"]) for e in events] == [
        ("block.attn.c_proj.g", "forward"), ("block.mlp.c_proj.g", "forward"),
        ("block.mlp.c_fc.f", "backward"), ("block.attn.c_attn.f", "backward")]
    pred = tp.comm_per_layer(CFG, BATCH, SEQ, WORLD)
    assert len(events) == pred["all_reduces"]
    assert all(e["bytes"] == pred["bytes_per_all_reduce"] == BATCH * SEQ * CFG.n_embd * 4 for e in events)
    assert [e["phase"] for e in ranks[0]["mlp"]["comm"]] == ["forward", "backward"]


@pytest.mark.slow
def test_four_ranks_match_the_unsplit_block():
    """At 4 ranks each holds one of tiny's 4 heads and a quarter of the MLP; the all-reduces add 4 partial sums.
    Same tolerances as at 2 ranks, for the same reason (ATOL, RTOL)."""
    world = 4
    out = launch(tp.tp_equivalence_rank, world, CFG, BATCH, SEQ, SEED, backend="gloo", timeout=60)
    for what in ("mlp", "attn", "block"):
        y, x_grad, params = _reference(what)
        for rank, res in enumerate(out):
            o = res[what]
            torch.testing.assert_close(o["y"], y, atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(o["x_grad"], x_grad, atol=ATOL, rtol=RTOL)
            for name, g in o["grads"].items():
                torch.testing.assert_close(g, tp.shard_of(name, params[name].grad, rank, world), atol=ATOL, rtol=RTOL)
    assert out[0]["block"]["shapes"]["attn.c_attn.weight"] == (3 * CFG.n_embd // world, CFG.n_embd)
    assert len(out[0]["block"]["comm"]) == tp.comm_per_layer(CFG, BATCH, SEQ, world)["all_reduces"]


def test_shard_helpers_split_q_k_v_by_head():
    w = torch.arange(12.0).repeat_interleave(2).view(12, 2)      # rows 0..11 = q(0-3), k(4-7), v(8-11)
    r0 = tp.shard_columns(w, 0, 2, parts=3)[:, 0].tolist()
    assert r0 == [0, 1, 4, 5, 8, 9]                               # the first heads of q, k and v
    assert tp.shard_rows(torch.arange(8.0).view(2, 4), 1, 2).tolist() == [[2, 3], [6, 7]]


def test_heads_not_divisible_by_world_size():
    with pytest.raises(ValueError, match="n_head=4 is not divisible .* world size 3"):
        tp.check_config(CFG, 3)


def test_hidden_not_divisible_by_world_size():
    with pytest.raises(ValueError, match="out_features=10 is not divisible .* world size 4"):
        tp.divide(10, 4, "out_features")
    # (with GPTConfig, n_head dividing by w implies 4*n_embd does: the layers' own check is divide())


def test_dropout_is_refused():
    with pytest.raises(ValueError, match="dropout=0.0"):
        tp.check_config(preset("tiny", dropout=0.1), 2)


def test_layers_need_a_process_group():
    with pytest.raises(RuntimeError, match="frugal.dist.launch"):
        tp.ColumnParallelLinear(8, 8)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < WORLD, reason=f"needs {WORLD} GPUs for NCCL ranks")
def test_nccl_ranks_match_the_unsplit_block():
    out = launch(tp.tp_equivalence_rank, WORLD, CFG, BATCH, SEQ, SEED, backend="nccl", timeout=120)
    y, x_grad, params = _reference("block")           # on CPU: GPU kernels round differently, within ATOL
    for rank, o in enumerate(out):
        torch.testing.assert_close(o["block"]["y"], y, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(o["block"]["x_grad"], x_grad, atol=ATOL, rtol=RTOL)
        for name, g in o["block"]["grads"].items():
            torch.testing.assert_close(g, tp.shard_of(name, params[name].grad, rank, WORLD), atol=ATOL, rtol=RTOL)
