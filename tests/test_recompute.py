import functools
import gc
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.utils.checkpoint as tcp

from frugal import estimate, measure, recompute
from frugal.model import TinyGPT, preset
from frugal.recompute import (Recompute, checkpoint, checkpoint_selective, checkpoint_sequential, from_spec,
                              sqrt_segments)
from frugal.train import TrainConfig, build

torch_checkpoint = functools.partial(tcp.checkpoint, use_reentrant=False)


def _model(dropout=0.0, n_layer=2):
    torch.manual_seed(0)
    return TinyGPT(preset("tiny", dropout=dropout, n_layer=n_layer))


def _grads(model, recompute, seed=1):
    """Parameter gradients of one forward/backward, with model.recompute set and the RNG seeded."""
    model.recompute = recompute
    model.zero_grad(set_to_none=True)
    x = torch.randint(model.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(seed)
    _, loss = model(x, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_equal(a, b):
    for ga, gb in zip(a, b):
        assert torch.equal(ga, gb)


# Recompute runs exactly the same kernels on exactly the same inputs, so equality is exact (not allclose).
@pytest.mark.parametrize("policy,dropout", [("full", 0.0), ("selective", 0.0), ("full", 0.1), ("every:2", 0.1),
                                            ("first:1", 0.1), ("selective", 0.1), ("sqrt", 0.1)])
def test_gradients_are_bit_identical_to_no_checkpoint(policy, dropout):
    model = _model(dropout, n_layer=4)
    loss0, ref = _grads(model, None)
    loss1, got = _grads(model, from_spec(policy))
    assert torch.equal(loss0, loss1)
    _assert_equal(ref, got)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradients_equal_torch_utils_checkpoint(dropout):
    model = _model(dropout)
    _, ours = _grads(model, Recompute("full"))
    _, theirs = _grads(model, Recompute("full", checkpoint_fn=torch_checkpoint))
    _assert_equal(ours, theirs)


def test_dropout_needs_the_restored_rng():
    """Without preserve_rng_state the recomputed dropout masks differ, and so do the gradients."""
    model = _model(dropout=0.5)
    _, ref = _grads(model, None)
    no_rng = Recompute("full", checkpoint_fn=functools.partial(checkpoint, preserve_rng_state=False))
    _, got = _grads(model, no_rng)
    assert not all(torch.equal(a, b) for a, b in zip(ref, got))


def test_rng_after_checkpointed_backward_is_as_without():
    """The recomputation puts the RNG back: code after backward draws the same numbers either way."""
    model = _model(dropout=0.1)
    _grads(model, None)
    after_plain = torch.rand(3)
    _grads(model, Recompute("full"))
    after_ckpt = torch.rand(3)
    assert torch.equal(after_plain, after_ckpt)


def test_checkpoint_sequential_matches_torch():
    torch.manual_seed(0)
    layers = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(9)])
    x = torch.randn(4, 8, requires_grad=True)
    ref = torch.autograd.grad(layers(x).sum(), [x, *layers.parameters()])
    ours = torch.autograd.grad(checkpoint_sequential(layers, None, x).sum(), [x, *layers.parameters()])
    theirs = torch.autograd.grad(tcp.checkpoint_sequential(layers, 3, x, use_reentrant=False).sum(),
                                 [x, *layers.parameters()])
    _assert_equal(ours, ref)
    _assert_equal(ours, theirs)


def test_sqrt_segments_keeps_fewer_bytes_than_no_checkpoint():
    layers = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.GELU()) for _ in range(9)])
    x = torch.randn(8, 16, requires_grad=True)
    with measure.count_saved_tensors(list(layers.parameters())) as plain:
        layers(x)
    with measure.count_saved_tensors(list(layers.parameters())) as seg:
        checkpoint_sequential(layers, None, x)
    assert sqrt_segments(9) == 3
    # plain keeps 2 tensors per layer (Linear input, GELU input): 18 of 8x16; √n keeps 2 segment inputs + the last
    # segment's 6 tensors = 8 of them.
    assert plain.nbytes == 18 * 8 * 16 * 4
    assert seg.nbytes == 8 * 8 * 16 * 4


def test_nested_checkpoints():
    torch.manual_seed(0)
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    x = torch.randn(3, 8, requires_grad=True)
    inner = lambda h: torch.tanh(b(h))
    outer = lambda h: checkpoint(inner, torch.sin(a(h)))
    ref = torch.autograd.grad(inner(torch.sin(a(x))).sum(), [x, a.weight, b.weight])
    got = torch.autograd.grad(checkpoint(outer, x).sum(), [x, a.weight, b.weight])
    _assert_equal(ref, got)


def test_kwargs_non_tensor_args_and_several_outputs():
    lin = nn.Linear(4, 4)

    def fn(x, scale, mode, bias=None):
        h = torch.tanh(lin(x)) * scale
        return (h + bias if mode == "add" else h), h.exp()

    x = torch.randn(2, 4, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    ref = fn(x, 2.0, "add", bias=bias)
    got = checkpoint(fn, x, 2.0, "add", bias=bias)
    g_ref = torch.autograd.grad(ref[0].sum() + ref[1].sum(), [x, bias, lin.weight])
    g_got = torch.autograd.grad(got[0].sum() + got[1].sum(), [x, bias, lin.weight])
    _assert_equal(g_ref, g_got)


def test_inputs_without_grad_still_give_parameter_gradients():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)                       # no requires_grad: only the weights learn
    ref = torch.autograd.grad(torch.tanh(lin(x)).sum(), list(lin.parameters()))
    got = torch.autograd.grad(checkpoint(lambda t: torch.tanh(lin(t)), x).sum(), list(lin.parameters()))
    _assert_equal(ref, got)


@pytest.mark.parametrize("run", [checkpoint, checkpoint_selective])
def test_checkpoint_inside_autocast_recomputes_in_bf16(run):
    model = _model()
    block = model.blocks[0]
    x = torch.randn(2, 16, 64, requires_grad=True)

    def grads(f, enabled=True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = f(block, x)
        return torch.autograd.grad(out.square().sum(), [x, *block.parameters()])

    ref = grads(lambda b, h: b(h))
    _assert_equal(ref, grads(run))          # backward runs outside autocast: the recomputation re-enters it
    assert not torch.equal(ref[0], grads(lambda b, h: b(h), enabled=False)[0])   # bf16 did change the numbers


def test_backward_twice_without_retain_graph_gives_pytorchs_error():
    lin = nn.Linear(4, 4)
    loss = checkpoint(lambda t: torch.tanh(lin(t)), torch.randn(2, 4)).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_backward_twice_with_retain_graph_recomputes_again():
    lin = nn.Linear(4, 4)
    loss = checkpoint(lambda t: torch.tanh(lin(t)), torch.randn(2, 4)).sum()
    loss.backward(retain_graph=True)
    once = lin.weight.grad.clone()
    loss.backward()
    torch.testing.assert_close(lin.weight.grad, 2 * once, rtol=0, atol=0)


def test_all_blocks_checkpointed_keep_at_most_block_inputs_plus_head():
    """Bound: L block inputs (B·T·d fp32 each) + what the head keeps when nothing is checkpointed
    (token ids, ln_f input/output and stats, the loss's log-softmax and targets)."""
    model = _model(n_layer=4)
    x = torch.randint(256, (2, 32))
    plain = measure.measure_saved_bytes_by_module(model, x, x)
    head = sum(v for k, v in plain.items() if not k.startswith("blocks."))
    model.recompute = Recompute("full")
    counted = measure.measure_activation_bytes(model, x, x)
    assert counted <= 4 * 2 * 32 * 64 * 4 + head
    assert counted < 0.25 * sum(plain.values())


@pytest.mark.parametrize("policy,checkpointed,selective,segments",
                         [("none", 0, False, None), ("full", 4, False, None), ("first:3", 3, False, None),
                          ("selective", 4, True, None), ("sqrt", 2, False, 1)])
def test_counted_bytes_match_the_estimate(policy, checkpointed, selective, segments):
    model = _model(n_layer=4)
    x = torch.randint(256, (2, 32))
    model.recompute = from_spec(policy)
    counted = measure.measure_activation_bytes(model, x, x)
    predicted = sum(estimate.estimate_recompute_activation_bytes(model.cfg, 2, 32, checkpointed, selective,
                                                                 segments=segments).values())
    assert abs(predicted - counted) / counted < 0.02     # the estimate leaves out the loss's int64 targets
    assert estimate.sqrt_segmentation(4) == (2, 1)


def test_largest_batch_fits_its_budget_and_checkpointing_raises_it():
    cfg = preset("tiny", n_layer=4)
    budget = 4 * 2 ** 20
    plain = estimate.largest_batch(cfg, 64, budget)
    ckpt = estimate.largest_batch(cfg, 64, budget, checkpointed=4)
    assert ckpt > plain > 0
    model = _model(n_layer=4)
    x = torch.randint(256, (plain, 64))
    assert measure.measure_activation_bytes(model, x, x) <= budget * 1.01


def test_selective_keeps_matmul_outputs_and_drops_the_rest():
    model = _model(n_layer=2)
    x = torch.randint(256, (2, 32))
    model.recompute = from_spec("selective")
    selective = measure.measure_activation_bytes(model, x, x)
    model.recompute = None
    plain = measure.measure_activation_bytes(model, x, x)
    sbh = 2 * 32 * 64 * 4
    # per block: 16 s·b·h kept plainly, 9 (input + q,k,v + attention out + MLP up) selectively
    assert plain - selective == pytest.approx(2 * 7 * sbh, rel=0.02)
    # keeping the attention's output projection too (keep names it): one s·b·h more per block
    model.recompute = Recompute("selective", keep=("attn.c_attn", "attn.core", "attn.c_proj", "mlp.c_fc"))
    assert measure.measure_activation_bytes(model, x, x) - selective == pytest.approx(2 * sbh, rel=0.02)


@pytest.mark.parametrize("keep", [("attn.c_attn", "mlp.c_fc"), ("attn", "mlp.c_fc"), None])
def test_selective_scopes_give_identical_gradients(keep):
    model = _model(n_layer=2, dropout=0.1)
    ref_loss, ref = _grads(model, None)
    loss, got = _grads(model, Recompute("selective", keep=keep))
    assert torch.equal(loss, ref_loss) and all(torch.equal(a, b) for a, b in zip(ref, got))


def test_scoped_selective_sends_only_the_kept_modules_through_python(monkeypatch):
    import frugal.recompute as R
    from frugal.recompute_frame import _KeepOutputs
    dispatched = []
    original = _KeepOutputs.__torch_dispatch__

    def counting(self, func, types, args=(), kwargs=None):
        dispatched.append(func)
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(_KeepOutputs, "__torch_dispatch__", counting)
    model = _model(n_layer=2)
    counts = {}
    for keep in (None, R.SELECTIVE_KEEP):
        dispatched.clear()
        _grads(model, Recompute("selective", keep=keep))
        counts[keep] = len(dispatched)
    # a few ops per kept module (view, addmm, ...) instead of every op of every block, forward and recomputation
    assert 0 < counts[R.SELECTIVE_KEEP] < counts[None] / 3
    # in forward the kept Linears are seen from a hook: only the attention core's op goes through Python
    dispatched.clear()
    model.recompute = Recompute("selective")
    model(*[torch.randint(model.cfg.vocab_size, (2, 32))] * 2)
    names = {str(f) for f in dispatched}
    assert any("attention" in n for n in names)
    assert {n for n in names if "attention" not in n} == {"aten.detach.default"}   # autograd keeping q, k, v


def test_selective_keep_names_that_do_not_exist_are_refused():
    model = _model(n_layer=1)
    model.recompute = Recompute("selective", keep=("attn.qkv",))
    with pytest.raises(ValueError, match="submodules are"):
        model(torch.randint(256, (1, 8)))
    with pytest.raises(TypeError, match="keep_in"):
        checkpoint_selective(model.blocks[0], torch.randn(1, 8, 64), keep_in=["attn.c_attn"])


def test_train_config_switch_trains_the_same():
    base = TrainConfig(steps=1, batch_size=2, seq_len=16, progress=False, data="synthetic", device="cpu")
    model, _, _, _ = build(preset("tiny"), TrainConfig(**{**base.__dict__, "recompute": "every:2"}))
    assert model.recompute == Recompute("every", 2)
    assert model.recompute.checkpointed(4) == [0, 2]


def test_checkpoint_under_no_grad_just_runs():
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        assert torch.equal(checkpoint(lin, torch.ones(1, 4)), lin(torch.ones(1, 4)))


def test_nondeterministic_fn_is_caught():
    calls = []

    def fn(x):
        calls.append(1)
        return x.exp() if len(calls) == 1 else x[:1].exp()   # a different computation the second time

    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="same thing"):
        checkpoint(fn, x).sum().backward()



def _live_frames() -> int:
    return sum(type(o) is recompute._Frame for o in gc.get_objects())


@pytest.mark.parametrize("policy", ["full", "selective"])   # fused LayerNorms: tests/test_recompute_fused.py
@pytest.mark.parametrize("backward", [True, False])
def test_no_frame_outlives_its_step_without_gc(policy, backward):
    """A _Frame holds its block's kept tensors (gigabytes on a GPU) and GPU memory never triggers Python's gc:
    freed by reference counting alone, after backward or when the graph is dropped without one."""
    model = _model()
    model.recompute = Recompute(policy)
    x = torch.randint(model.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    before = _live_frames()
    gc.disable()
    try:
        for _ in range(2):
            logits, loss = model(x, x)
            if backward:
                loss.backward()
            del logits, loss
            assert _live_frames() == before
    finally:
        gc.enable()


def test_first_selective_step_of_a_process_leaves_no_frame():
    """In a fresh interpreter the mode's first dispatch imported torch._dynamo inside the forward, and that import
    pinned the whole stack (the _Frame too) until a gc pass. A subprocess: this one has long imported it."""
    script = textwrap.dedent("""
        import gc
        gc.disable()
        import torch
        from frugal import recompute
        from frugal.model import TinyGPT, preset
        model = TinyGPT(preset("tiny", n_layer=2))
        model.recompute = recompute.Recompute("selective")
        x = torch.randint(model.cfg.vocab_size, (2, 32))
        _, loss = model(x, x)
        loss.backward()
        del loss
        print(sum(type(o) is recompute._Frame for o in gc.get_objects()))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"]

def test_bad_inputs_name_the_fix():
    with pytest.raises(TypeError, match="callable"):
        checkpoint(torch.ones(2), torch.ones(2))
    with pytest.raises(TypeError, match="True or False"):
        checkpoint(torch.sin, torch.ones(2), preserve_rng_state="yes")
    with pytest.raises(ValueError, match="use_reentrant=False"):
        checkpoint(torch.sin, torch.ones(2), use_reentrant=True)
    with pytest.raises(ValueError, match="1..3"):
        checkpoint_sequential([torch.sin] * 3, 4, torch.ones(2))
    with pytest.raises(TypeError, match="non-empty"):
        checkpoint_sequential([], 1, torch.ones(2))
    with pytest.raises(ValueError, match="every:K"):
        from_spec("every")
    with pytest.raises(ValueError, match="selective"):
        from_spec("sometimes")
    with pytest.raises(ValueError, match="pick 'none'"):
        TrainConfig(recompute="al")
    with pytest.raises(TypeError, match="aten op"):
        checkpoint_selective(torch.sin, torch.ones(2), keep={"mm"})
    with pytest.raises(TypeError, match="fuse_norms"):
        checkpoint_selective(torch.sin, torch.ones(2), fuse_norms=["ln_1"])
    with pytest.raises(ValueError, match="checkpointed"):
        estimate.estimate_recompute_activation_bytes(preset("tiny"), 1, 8, checkpointed=3)
