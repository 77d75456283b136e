import subprocess
import sys

import pytest
import torch

from frugal.model import TinyGPT, preset
from frugal.recompute import Recompute
from frugal.measure_training import measure_precision, measure_recompute
from frugal.train import TrainConfig, build, time_steps, train, train_step


def _cfg(**kw):
    return TrainConfig(**{"steps": 20, "batch_size": 8, "seq_len": 32, "device": "cpu", "progress": False, **kw})


@pytest.mark.parametrize("field,value", [("steps", 0), ("batch_size", -1), ("seq_len", 0), ("lr", 0.0),
                                         ("data", "wiki"), ("precision", "fp7")])
def test_bad_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_training_on_the_corpus_lowers_the_loss():
    result = train(preset("tiny"), _cfg(steps=12, batch_size=4))
    losses = result.column("loss")
    assert len(losses) == 12
    assert losses[0] == pytest.approx(5.55, abs=0.2)            # ln(256): uniform over bytes at init
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0               # byte statistics are learned in a few steps


def test_history_records_time_speed_and_memory():
    result = train(preset("tiny"), _cfg(steps=4, data="synthetic"))
    for r in result.history:
        assert r.time_s > 0 and r.tokens_per_s == pytest.approx(8 * 32 / r.time_s)
        assert r.peak_memory_bytes is None                      # CPU: no CUDA allocator to ask
    s = result.summary()
    assert s["final_loss"] == result.history[-1].loss and s["config"]["steps"] == 4
    assert result.median_tokens_per_s() > 0
    slowest, fastest = result.tokens_per_s_spread(skip=1)        # steps 1-3: the median lies between them
    assert slowest == min(result.column("tokens_per_s")[1:]) and fastest == max(result.column("tokens_per_s")[1:])
    assert slowest <= result.median_tokens_per_s(skip=1) <= fastest


def test_same_seed_same_losses():
    a = train(preset("tiny"), _cfg(steps=3)).column("loss")
    b = train(preset("tiny"), _cfg(steps=3)).column("loss")
    assert a == b                                               # CPU fp32 kernels are deterministic here


def test_a_model_passed_in_is_trained_in_place():
    model = TinyGPT(preset("tiny"))
    before = model.wte.weight.detach().clone()
    result = train(model, _cfg(steps=2))
    assert result.model is model and not torch.equal(before, model.wte.weight)


def test_train_step_is_one_adamw_step():
    """Our step against the same step written out with PyTorch directly."""
    torch.manual_seed(0)
    model = TinyGPT(preset("tiny"))
    ref = TinyGPT(preset("tiny"))
    ref.load_state_dict(model.state_dict())
    cfg = _cfg(grad_clip=None)
    model, opt, next_batch, _ = build(model, cfg)
    x, y = next_batch()
    loss = train_step(model, opt, x, y, cfg)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    _, ref_loss = ref(x, y)
    ref_loss.backward()
    ref_opt.step()
    assert loss.item() == ref_loss.item()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)       # same ops in the same order: exact
        assert p.grad is None                                   # zeroed for the next step


def test_accumulation_is_one_step_on_the_summed_micro_batch_gradients():
    """accumulation_steps=2: backward of loss/2 on each half of the batch, then one clipped AdamW step, exactly as
    written out by hand; against one backward on the whole batch only fp32 rounding of the sum differs."""
    torch.manual_seed(0)
    model = TinyGPT(preset("tiny"))
    hand, whole = TinyGPT(preset("tiny")), TinyGPT(preset("tiny"))
    hand.load_state_dict(model.state_dict())
    whole.load_state_dict(model.state_dict())
    cfg = _cfg(accumulation_steps=2)
    model, opt, next_batch, _ = build(model, cfg)
    x, y = next_batch()
    loss = train_step(model, opt, x, y, cfg)
    hand_opt = torch.optim.AdamW(hand.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    for xm, ym in ((x[:4], y[:4]), (x[4:], y[4:])):             # (B / 2, T) each
        _, micro = hand(xm, ym)
        (micro / 2).backward()
        losses.append(micro.detach())
    torch.nn.utils.clip_grad_norm_(hand.parameters(), cfg.grad_clip)
    hand_opt.step()
    assert loss.item() == torch.stack(losses).mean().item()
    for p, q in zip(model.parameters(), hand.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # Against one backward on the whole batch: compare the gradients, not the weights after AdamW, whose first
    # step is about lr * sign(g) and so turns a rounding difference in a near-zero gradient into a step of lr.
    _, full = whole(x, y)
    full.backward()
    torch.nn.utils.clip_grad_norm_(whole.parameters(), cfg.grad_clip)
    for p, q in zip(hand.parameters(), whole.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)   # fp32 sums in another order


def test_accumulation_that_does_not_split_the_batch_is_refused():
    with pytest.raises(ValueError, match="accumulation_steps=3"):
        TrainConfig(batch_size=8, accumulation_steps=3)
    with pytest.raises(ValueError, match="batch_size / world_size = 2"):
        TrainConfig(batch_size=4, world_size=2, accumulation_steps=4)
    with pytest.raises(ValueError, match="no_sync"):
        TrainConfig(batch_size=4, world_size=2, data_parallel="zero2", accumulation_steps=2)


def test_time_steps_times_train_steps_after_warm_up():
    model, opt, next_batch, device = build(preset("tiny"), _cfg(data="synthetic"))
    drawn = []
    timing = time_steps(model, opt, lambda: drawn.append(1) or next_batch(), _cfg(), warmup=2, repeats=3)
    assert len(drawn) == 5 and len(timing.times_s) == 3 and timing.median_s > 0 and timing.device == "cpu"


def test_measure_recompute_saves_less_and_leaves_the_model_as_it_was():
    model = TinyGPT(preset("tiny", n_layer=2))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(256, (2, 32))
    plain = measure_recompute(model, x, x, None, warmup=0, repeats=1)
    full = measure_recompute(model, x, x, Recompute("full"), warmup=0, repeats=3)
    assert full["saved_bytes"] < plain["saved_bytes"] and full["step_s"] > 0
    assert full["step_min_s"] <= full["step_s"] <= full["step_max_s"]          # the spread of the repeats
    assert full["peak_memory_bytes"] is None                    # CPU
    assert model.recompute is None and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))   # no optimizer step


def test_measure_precision_reports_what_lesson_01_plots():
    out = measure_precision(preset("tiny"), _cfg(steps=3, batch_size=2, precision="bf16"))
    assert len(out["loss"]) == 3 and out["step_ms"] > 0 and out["skipped"] == []
    assert out["memory_kind"] == "saved activations" and out["memory_bytes"] > 0 and out["memory_estimate_bytes"] > 0


@pytest.mark.parametrize("module", ["frugal.data_parallel", "frugal.measure", "frugal.numerics", "frugal.dist",
                                    "frugal.zero"])
def test_modules_below_the_trainer_do_not_import_it(module):
    """The trainer sits above the mechanisms it drives; a module below importing it would be a cycle."""
    code = f"import sys, {module}; assert 'frugal.train' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sequence_longer_than_the_model_allows_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="block_size=64"):
        build(preset("tiny"), _cfg(seq_len=65))


# ----------------------------------------------------------------------------- lesson 07: ZeRO and compile switches

@pytest.mark.slow
@pytest.mark.parametrize("stage,extra", [
    ("zero1", {}), ("zero2", {}), ("zero3", {}),
    pytest.param("zero3", {"recompute": "full", "fused_cross_entropy": True}, marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="the fused head on CPU ranks needs Triton's interpreter, off where a GPU is"))])
def test_zero_through_train_matches_single_process(stage, extra):
    """train() with data_parallel='zeroN' on 2 gloo ranks ends where one process on the whole batch ends.

    Not exact: the ranks sum half-batch gradients in another order (fp32 rounding, 1e-7), which Adam's
    normalised update turns into parameter differences of ~1e-5 after three steps."""
    from frugal.model import preset
    kw = dict(steps=3, batch_size=4, seq_len=32, progress=False, data="synthetic", device="cpu", **extra)
    ref = train(preset("tiny"), TrainConfig(**kw))
    run = train(preset("tiny"), TrainConfig(**kw, world_size=2, data_parallel=stage))
    ref_params = dict(ref.model.named_parameters())
    assert max((p - ref_params[n]).abs().max().item() for n, p in run.model.named_parameters()) < 1e-4
    assert run.column("loss") == pytest.approx(ref.column("loss"), abs=1e-5)


def test_zero_refuses_fp16_naming_bf16():
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(precision="fp16", world_size=2, batch_size=4, data_parallel="zero2")


def test_unknown_data_parallel_and_compile_are_refused():
    with pytest.raises(ValueError, match="zero3"):
        TrainConfig(data_parallel="zero4")
    with pytest.raises(ValueError, match="blocks"):
        TrainConfig(compile="yes")
    # compiling the whole model fails inside our recompute's hooks (a StopIteration or a None input from deep in
    # torch.compile); refused up front, naming the combination that works
    with pytest.raises(ValueError, match="compile='blocks'"):
        TrainConfig(compile="model", recompute="selective")
    # selective works inside each block, where the compiled graph saves other tensors than eager (GPU test below)
    with pytest.raises(ValueError, match="recompute='full' with compile='blocks'"):
        TrainConfig(compile="blocks", recompute="selective")


def test_compile_blocks_compiles_in_place_keeping_parameter_names():
    from frugal.model import preset
    from frugal.train import build
    model, *_ = build(preset("tiny"), TrainConfig(compile="blocks", progress=False, device="cpu"))
    eager, *_ = build(preset("tiny"), TrainConfig(progress=False, device="cpu"))
    assert all(b._compiled_call_impl is not None for b in model.blocks)        # torch's compiler, not run here
    assert list(model.state_dict()) == list(eager.state_dict())


def test_selective_recompute_refuses_compiled_blocks_before_running_them():
    from frugal.recompute import Recompute
    model, *_ = build(preset("tiny"), TrainConfig(compile="blocks", progress=False, device="cpu"))
    model.recompute = Recompute("selective")
    x = torch.randint(256, (2, 16))
    with pytest.raises(ValueError, match=r"block 0 is compiled.*Recompute\('full'\)"):
        model(x, x)


@pytest.mark.gpu
def test_compiled_blocks_recompute_all_to_the_same_gradients_on_gpu():
    """Full recompute re-runs each compiled block under saved-tensor hooks. Gradients match the compiled blocks
    without recompute to within bf16 rounding (relative 2e-2 of each gradient's norm) rather than bitwise: under
    the hooks torch.compile builds a graph of its own, which may fuse and round differently."""
    from frugal.recompute import from_spec
    model, *_ = build(preset("small"), TrainConfig(compile="blocks", precision="bf16", device="cuda", progress=False))
    x = torch.randint(256, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()

    def grads(spec):
        model.recompute = from_spec(spec)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(x, x)
        loss.backward()
        return [p.grad.float() for p in model.parameters()]

    ref, got = grads("none"), grads("full")
    for (name, _), a, b in zip(model.named_parameters(), got, ref):
        assert (a - b).norm() <= 2e-2 * b.norm() + 1e-6, name


@pytest.mark.gpu
def test_compiled_blocks_train_like_eager_on_gpu():
    """Same losses within bf16 rounding: inductor fuses pointwise ops and rounds them once, eager per op."""
    from frugal.model import preset
    kw = dict(steps=3, batch_size=4, seq_len=64, progress=False, data="synthetic", precision="bf16", device="cuda")
    eager = train(preset("small"), TrainConfig(**kw))
    compiled = train(preset("small"), TrainConfig(**kw, compile="blocks"))
    assert compiled.column("loss") == pytest.approx(eager.column("loss"), abs=2e-2)


def test_learning_rate_schedule_warms_up_then_decays_to_a_tenth():
    from frugal.config import lr_at
    cfg = TrainConfig(steps=101, lr=1e-3, warmup_steps=10, lr_decay="cosine")
    lrs = [lr_at(cfg, s) for s in range(cfg.steps)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])     # linear warm-up
    assert lrs[10] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)         # peak, then a tenth
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))                           # never rises after warm-up
    assert lrs[55] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))                        # halfway down the cosine
    flat = TrainConfig(steps=20, lr=2e-3)
    assert {lr_at(flat, s) for s in range(20)} == {2e-3}


def test_train_steps_with_the_scheduled_learning_rate():
    cfg = TrainConfig(steps=6, batch_size=2, seq_len=16, lr=1e-3, warmup_steps=2, lr_decay="cosine",
                      progress=False, device="cpu")
    seen = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)
    torch.optim.AdamW.step = spy
    try:
        train(preset("tiny"), cfg)
    finally:
        torch.optim.AdamW.step = real_step
    from frugal.config import lr_at
    assert seen == pytest.approx([lr_at(cfg, s) for s in range(6)])


@pytest.mark.parametrize("field, value", [("warmup_steps", -1), ("warmup_steps", 2.5), ("lr_decay", "linear")])
def test_bad_schedule_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
