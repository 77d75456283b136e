"""frugal.recompute_fused: the optional speed path of selective recompute (LayerNorms rebuilt in one pass)."""
import ast
import gc
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from frugal import measure, recompute, recompute_fused
from frugal.model import TinyGPT, preset
from frugal.recompute import Recompute, checkpoint_selective


def _model(dropout=0.0, n_layer=2):
    torch.manual_seed(0)
    return TinyGPT(preset("tiny", dropout=dropout, n_layer=n_layer))


def _assert_equal(a, b):
    for ga, gb in zip(a, b):
        assert torch.equal(ga, gb)


def _fused_everywhere(monkeypatch):
    """Fused LayerNorm recompute on any device (Recompute only fuses on a GPU), recording each kernel call as
    (writes a residual add?, writes a second LayerNorm of the add's x?)."""
    pytest.importorskip("triton", reason="fused LayerNorm recompute needs `pip install triton`")
    import frugal.kernels.layer_norm_recompute as K
    calls = []
    original = K.layer_norm_from_stats

    def counting(*args, **kwargs):
        calls.append((kwargs.get("residual") is not None, kwargs.get("x_norm") is not None))
        return original(*args, **kwargs)

    monkeypatch.setattr(K, "layer_norm_from_stats", counting)
    monkeypatch.setattr(Recompute, "fused_norms", lambda self, block, x: [block.ln_1, block.ln_2] if self.fused else None)
    return calls


def _grads_under(model, recompute, amp: bool):
    model.recompute = recompute
    model.zero_grad(set_to_none=True)
    x = torch.randint(model.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)).to(
        next(model.parameters()).device)
    torch.manual_seed(1)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        _, loss = model(x, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


# On a GPU the kernel computes PyTorch's CUDA formula: bitwise equal. On a CPU it runs in Triton's interpreter,
# whose rounding of w·(rstd·(x − mean)) + b differs from PyTorch's CPU LayerNorm by a few fp32 ulps (one bf16 ulp
# after the cast): gradients agree to that, not bitwise.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


ONE_PASS = [(True, True)]                   # ln_2 with the add before it, and ln_1, read from the same x
TWO_PASSES = [(False, False), (True, False)]  # ln_1 on its own (something read its output), then ln_2 and the add


@pytest.mark.parametrize("amp,tol,keep,passes", [
    (False, 1e-5, recompute.SELECTIVE_KEEP, ONE_PASS), (True, 2e-2, recompute.SELECTIVE_KEEP, ONE_PASS),
    (True, 2e-2, ("attn", "mlp.c_fc"), ONE_PASS),
    (True, 2e-2, ("attn.core", "mlp.c_fc"), TWO_PASSES),   # the qkv matmul runs: it reads ln_1's output
    (True, 2e-2, None, TWO_PASSES)])                      # every op through the keeping mode, read as it goes
def test_fused_norms_rebuild_each_block_s_layer_norms_in_one_pass(monkeypatch, amp, tol, keep, passes):
    calls = _fused_everywhere(monkeypatch)
    tol = 0 if DEVICE == "cuda" else tol
    model = _model(n_layer=3, dropout=0.1).to(DEVICE)
    ref_loss, ref = _grads_under(model, None, amp)
    loss, got = _grads_under(model, Recompute("selective", keep=keep), amp)
    assert calls == passes * 3
    assert torch.equal(loss, ref_loss)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_fused_norms_fill_what_other_ops_read(monkeypatch):
    """A residual sum read by anything but a LayerNorm is filled first, and a LayerNorm output read in fp32 (no
    autocast) is the fp32 output: values, never a placeholder."""
    calls = _fused_everywhere(monkeypatch)
    torch.manual_seed(0)
    ln1, ln2, lin = (m.to(DEVICE) for m in (nn.LayerNorm(16), nn.LayerNorm(16), nn.Linear(16, 16)))

    def fn(x):
        h = x + lin(ln1(x)).to(torch.bfloat16)       # a fusable add whose sum is also read below
        y = ln2(h)
        return (y.exp() + lin(y) + h * 2).sum()      # ln2's fp32 output, then h, read directly

    x = torch.randn(3, 5, 16, device=DEVICE, requires_grad=True)
    ref = torch.autograd.grad(fn(x), [x, *lin.parameters(), *ln1.parameters(), *ln2.parameters()])
    out = checkpoint_selective(fn, x, fuse_norms=[ln1, ln2])
    got = torch.autograd.grad(out, [x, *lin.parameters(), *ln1.parameters(), *ln2.parameters()])
    # one pass per LayerNorm: lin reads ln1's output at once; ln2's writes h, which h * 2 then reads
    assert calls == [(False, False), (True, False)]
    tol = 0 if DEVICE == "cuda" else 1e-5
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)

    class Net(nn.Module):                            # the sum handed to a submodule that is not a fused LayerNorm
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2, self.lin, self.other = ln1, ln2, lin, nn.Linear(16, 16).to(DEVICE)

        def forward(self, x):
            h = x + self.lin(self.ln1(x))
            return (self.other(h) + self.lin(self.ln2(h))).sum()

    net = Net()
    calls.clear()
    ref = torch.autograd.grad(net(x), [x, *net.parameters()])
    got = torch.autograd.grad(checkpoint_selective(net, x, fuse_norms=[ln1, ln2]), [x, *net.parameters()])
    assert calls == [(False, False)] * 2   # `other` got h filled first, so ln2 normalises it without the add
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("where", ["module", "global"])
def test_a_forward_hook_on_a_fused_layer_norm_reads_its_output_filled(monkeypatch, where):
    """A LayerNorm with forward hooks writes its output at once: its hooks run before the mode watches again."""
    calls = _fused_everywhere(monkeypatch)
    model = _model(n_layer=2).to(DEVICE)
    seen = []

    def hook(module, args, out):
        if module is model.blocks[0].ln_1:
            seen.append(out.float().clone())

    handle = (model.blocks[0].ln_1.register_forward_hook(hook) if where == "module"
              else nn.modules.module.register_module_forward_hook(hook))
    try:
        _grads_under(model, Recompute("selective"), amp=True)
    finally:
        handle.remove()
    forward, recomputed = seen
    # the rebuilt output comes in bf16, the cast the qkv matmul makes (fp32 in forward): one bf16 rounding apart
    torch.testing.assert_close(recomputed, forward, rtol=2 ** -7, atol=2 ** -7)
    # backward recomputes block 1, then block 0; a global hook sees every LayerNorm, so none waits
    assert calls == (ONE_PASS + TWO_PASSES if where == "module" else TWO_PASSES * 2)


def test_a_forward_pre_hook_on_a_fused_layer_norm_reads_its_input_filled(monkeypatch):
    calls = _fused_everywhere(monkeypatch)
    model = _model(n_layer=1).to(DEVICE)
    seen = []
    model.blocks[0].ln_2.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    _grads_under(model, Recompute("selective"), amp=True)
    forward, recomputed = seen
    assert torch.equal(recomputed, forward)         # x + attn written before the hook (the eager add: exact)
    assert calls == [(False, False)] * 2            # so neither LayerNorm pass writes the add


def test_fused_norms_fill_a_sum_before_an_in_place_op_overwrites_what_it_adds(monkeypatch):
    calls = _fused_everywhere(monkeypatch)
    torch.manual_seed(0)
    ln2, lin = nn.LayerNorm(16).to(DEVICE), nn.Linear(16, 16).to(DEVICE)

    def fn(x):
        t = x * 1.0
        h = t + lin(x)                               # an unfilled sum in the recomputation...
        t.mul_(2)                                    # ...whose t changes before ln2 reads h (legal: nothing saved t)
        return (ln2(h) * t).sum()

    x = torch.randn(3, 5, 16, device=DEVICE, requires_grad=True)
    ref = torch.autograd.grad(fn(x), [x, *lin.parameters(), *ln2.parameters()])
    got = torch.autograd.grad(checkpoint_selective(fn, x, fuse_norms=[ln2]), [x, *lin.parameters(), *ln2.parameters()])
    assert calls == [(False, False)]                # h was written before mul_, so ln2 reads it whole
    tol = 0 if DEVICE == "cuda" else 1e-5
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_fused_norms_keep_only_eight_bytes_a_row_more(monkeypatch):
    _fused_everywhere(monkeypatch)
    model = _model(n_layer=2).to(DEVICE)
    x = torch.randint(256, (2, 32), device=DEVICE)
    model.recompute = Recompute("selective", fused=False)
    eager = measure.measure_activation_bytes(model, x, x)
    model.recompute = Recompute("selective")
    fused = measure.measure_activation_bytes(model, x, x)
    # per block and LayerNorm, a float32 mean and 1/std for each of the 2·32 rows
    assert fused - eager == 2 * 2 * (2 * 2 * 32 * 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_selective_is_bit_identical_on_gpu(dropout):
    model = _model(dropout, n_layer=3).cuda()
    # Recompute fuses by default on a GPU (with Triton)
    assert Recompute("selective").fused_norms(model.blocks[0], torch.ones(1, device="cuda"))
    ref_loss, ref = _grads_under(model, None, amp=True)
    loss, got = _grads_under(model, Recompute("selective"), amp=True)
    assert torch.equal(loss, ref_loss)
    _assert_equal(ref, got)


def _live_frames() -> int:
    return sum(type(o) is recompute._Frame for o in gc.get_objects())


@pytest.mark.parametrize("backward", [True, False])
def test_no_frame_outlives_its_step_without_gc(backward, monkeypatch):
    """As tests/test_recompute.py's test of the same name, with fused LayerNorms: their modes and hooks point back
    at the recomputation, and let go of it, so the _Frame goes by reference counting alone."""
    _fused_everywhere(monkeypatch)                   # the kernel runs where the tensors are (interpreted on a CPU)
    model = _model().to(DEVICE)
    model.recompute = Recompute("selective")
    x = torch.randint(model.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)).to(DEVICE)
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


def test_the_speed_path_imports_nothing_of_the_core():
    """frugal.recompute imports recompute_fused; the other way round would be a cycle."""
    tree = ast.parse(Path(recompute_fused.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(name.startswith("frugal.recompute") and name != "frugal.recompute_fused" for name in imported)
