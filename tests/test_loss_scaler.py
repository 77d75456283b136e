import copy
from contextlib import contextmanager, nullcontext

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from matplotlib.figure import Figure

from frugal import plots
from frugal.loss_scaler import LossScaler
from frugal.model import preset
from frugal.train import TrainConfig, make_scaler, matmul_precision, train, train_step, build

SPECIALS = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def _pair(seed: int, fused: bool = False):
    """Two identical models with AdamW; fused=True: the scaler hands S and the flag to the optimizer's kernel."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    return ((model, torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)),
            (twin, torch.optim.AdamW(twin.parameters(), lr=1e-2, fused=fused)))


def _step(model, opt, scaler, x, y, inject=(), clip=False):
    loss = torch.nn.functional.mse_loss(model(x), y)
    scaler.scale(loss).backward()
    params = list(model.parameters())
    for idx, where, kind in inject:                       # inf/NaN in the scaled gradients, same places in both
        g = params[idx % len(params)].grad.view(-1)
        g[int(where * g.numel()) % g.numel()] = SPECIALS[kind]
    if clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def _adam_steps(opt) -> int:
    """Optimizer steps actually taken (AdamW counts them per parameter): how we see GradScaler's skips."""
    return int(next(iter(opt.state.values()))["step"]) if opt.state else 0


STEPS_PER_EXAMPLE, EXAMPLES = 30, 40           # 1,200 random steps in all (asserted below)


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "fused-adamw"])
def test_same_scales_skips_and_bit_identical_weights_as_torch_gradscaler(fused):
    """Exact equality, not a tolerance: both multiply the loss by the same float32 S, unscale by float32(1/S)
    computed in float64 (or hand the same S to the same fused kernel), and apply the same update rule
    (S * factor in float64, rounded to float32), so every float must match."""
    total = [0]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2 ** 16), init_exp=st.integers(-4, 127), growth_interval=st.integers(1, 5),
           growth_factor=st.floats(1.01, 8.0), backoff_factor=st.floats(0.01, 0.99), clip=st.booleans(),
           inject=st.lists(st.tuples(st.integers(0, STEPS_PER_EXAMPLE - 1), st.integers(0, 3),
                                     st.floats(0, 1), st.sampled_from(list(SPECIALS))), max_size=12))
    def run(seed, init_exp, growth_interval, growth_factor, backoff_factor, clip, inject):
        (m1, o1), (m2, o2) = _pair(seed, fused)
        kw = dict(init_scale=2.0 ** init_exp, growth_factor=growth_factor, backoff_factor=backoff_factor,
                  growth_interval=growth_interval)
        ours, ref = LossScaler(**kw), torch.amp.GradScaler("cpu", **kw)
        gen = torch.Generator().manual_seed(seed)
        ref_skipped = []
        for step in range(STEPS_PER_EXAMPLE):
            x, y = torch.randn(8, 6, generator=gen) * 3, torch.randn(8, 3, generator=gen)
            here = [(i, w, k) for s, i, w, k in inject if s == step]
            before = _adam_steps(o2)
            _step(m1, o1, ours, x, y, here, clip)
            _step(m2, o2, ref, x, y, here, clip)
            if _adam_steps(o2) == before:
                ref_skipped.append(step)
            assert ours.get_scale() == ref.get_scale(), f"scale differs after step {step}"
            total[0] += 1
        assert ours.skipped_steps == ref_skipped
        assert ours.state_dict() == ref.state_dict()
        for a, b in zip(m1.parameters(), m2.parameters()):
            assert torch.equal(a, b)

    run()
    assert total[0] >= 1000


def test_a_skipped_step_leaves_weights_and_optimizer_state_untouched():
    (model, opt), _ = _pair(0)
    scaler = LossScaler(growth_interval=1)
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    _step(model, opt, scaler, x, y)                                   # a clean step creates Adam's state
    weights, state, scale = copy.deepcopy(list(model.parameters())), copy.deepcopy(opt.state_dict()), scaler.get_scale()
    _step(model, opt, scaler, x, y, inject=[(0, 0.5, "nan")])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), weights))
    after = opt.state_dict()["state"]
    for k, v in state["state"].items():
        for name, t in v.items():
            assert torch.equal(after[k][name], t), name
    assert scaler.get_scale() == scale * 0.5 and scaler.skipped_steps == [1]
    assert scaler.history == {"scale": [2.0 ** 16, 2.0 ** 17], "skipped": [1]}


def _run(model, opt, scaler, steps, start=0):
    gen = torch.Generator().manual_seed(123)
    data = [(torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(40)]
    scales = []
    for i in range(start, start + steps):
        _step(model, opt, scaler, *data[i], inject=[(1, 0.3, "inf")] if i % 7 == 3 else ())
        scales.append(scaler.get_scale())
    return scales


@pytest.mark.parametrize("resume_with", [LossScaler, lambda **kw: torch.amp.GradScaler("cpu", **kw)])
def test_state_dict_round_trips_mid_run_and_the_resumed_run_matches(resume_with):
    (m1, o1), (m2, o2) = _pair(1)
    kw = dict(init_scale=2.0 ** 10, growth_interval=3)
    straight = _run(m1, o1, LossScaler(**kw), 30)
    first = LossScaler(**kw)
    resumed = _run(m2, o2, first, 15)
    saved = copy.deepcopy((m2.state_dict(), o2.state_dict(), first.state_dict()))
    (m3, o3), _ = _pair(99)                                           # fresh objects, other weights
    m3.load_state_dict(saved[0])
    o3.load_state_dict(saved[1])
    scaler = resume_with(init_scale=1.0)                              # state comes from the dict, not here
    scaler.load_state_dict(saved[2])
    resumed += _run(m3, o3, scaler, 15, start=15)
    assert resumed == straight
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m3.parameters()))


def _misuse(scaler, what):
    (model, opt), _ = _pair(0)
    loss = model(torch.randn(2, 6)).sum()
    if what == "step before scale":
        loss.backward()
        scaler.step(opt)
    scaler.scale(loss).backward()
    if what == "unscale_ twice":
        scaler.unscale_(opt)
        scaler.unscale_(opt)
    if what == "unscale_ after step":
        scaler.step(opt)
        scaler.unscale_(opt)
    if what == "step twice":
        scaler.step(opt)
        scaler.step(opt)
    if what == "update before step":
        scaler.update()
    if what == "closure":
        scaler.step(opt, closure=lambda: 0.0)


@pytest.mark.parametrize("what,error", [
    ("unscale_ twice", "unscale_\\(\\) has already been called on this optimizer since the last update"),
    ("unscale_ after step", "unscale_\\(\\) is being called after step"),
    ("step twice", "step\\(\\) has already been called since the last update"),
    ("step before scale", "Attempted step but _scale is None"),
    ("update before step", "No inf checks were recorded prior to update"),
    ("closure", "Closure use is not currently supported"),
])
def test_misuse_gets_gradscalers_error(what, error):
    # GradScaler raises AssertionError for some of these; ours raises RuntimeError (asserts vanish under -O)
    with pytest.raises((RuntimeError, AssertionError), match=error):
        _misuse(torch.amp.GradScaler("cpu"), what)
    with pytest.raises(RuntimeError, match=error):
        _misuse(LossScaler(), what)


@pytest.mark.parametrize("kw,match", [({"growth_factor": 1.0}, "growth factor must be > 1.0"),
                                      ({"growth_factor": -2.0}, "growth factor must be > 1.0"),
                                      ({"backoff_factor": 1.0}, "backoff factor must be in \\(0, 1\\)"),
                                      ({"backoff_factor": 0.0}, "backoff factor must be in \\(0, 1\\)"),
                                      ({"init_scale": 0.0}, "init_scale"),
                                      ({"growth_interval": 0}, "growth_interval")])
def test_bad_factors_are_refused_with_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        LossScaler(**kw)


def test_fp16_gradients_are_refused_as_gradscaler_does():
    model = torch.nn.Linear(3, 2).half()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = LossScaler()
    scaler.scale(model(torch.randn(2, 3).half()).float().sum()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.step(opt)


def test_one_host_sync_per_step_whatever_the_number_of_parameters(monkeypatch):
    """A non-fused optimizer: the inf/NaN check is one reduction over all gradients, read once to decide the skip
    (not one .item() per parameter); update() reads nothing."""
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(10)])   # 20 parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = LossScaler()
    scaler.scale(model(torch.randn(2, 4)).sum()).backward()
    calls = [0]
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (calls.__setitem__(0, calls[0] + 1), item(self))[1])
    scaler.step(opt)
    scaler.update()
    assert calls[0] == 1


# Every way a tensor's value reaches Python; each forces a device-to-host copy (a sync) on a GPU.
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__array__",
              "__format__", "__repr__")


@contextmanager
def _no_host_reads(monkeypatch):
    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name}() read a tensor on the host")
        return read
    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, refuse(name))
        yield


@pytest.mark.parametrize("clip", [False, True], ids=["step", "unscale_-clip-step"])
def test_fused_optimizer_steps_without_reading_the_device_and_a_skip_touches_nothing(monkeypatch, clip):
    """With fused AdamW the flag goes to the optimizer's kernel, so scale/unscale_/step/update never read a tensor."""
    (model, opt), _ = _pair(0, fused=True)
    scaler = LossScaler(growth_interval=1)
    gen = torch.Generator().manual_seed(0)
    snapshots = []
    for i in range(4):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        snapshots.append((copy.deepcopy(list(model.parameters())), copy.deepcopy(opt.state_dict()["state"])))
        loss = torch.nn.functional.mse_loss(model(x), y)
        with _no_host_reads(monkeypatch):
            scaled = scaler.scale(loss)
        scaled.backward()
        if i == 2:
            model[0].weight.grad[3, 1] = float("nan")
        if clip:
            with _no_host_reads(monkeypatch):
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with _no_host_reads(monkeypatch):
            scaler.step(opt)
            scaler.update()
        assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")   # cleared after the step
        opt.zero_grad(set_to_none=True)
    (before, state_before), (after, state_after) = snapshots[2], snapshots[3]   # around step 2, the NaN
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert not any(torch.equal(a, b) for a, b in zip(snapshots[1][0], before))  # step 1 did move every weight
    assert not any(torch.equal(a, b) for a, b in zip(after, model.parameters()))  # and so did step 3
    for k, v in state_before.items():
        for name, t in v.items():
            assert torch.equal(state_after[k][name], t), name                   # m, v and the step count
    assert scaler.history == {"scale": [2.0 ** 16, 2.0 ** 17, 2.0 ** 18, 2.0 ** 17], "skipped": [2]}
    assert scaler._scale.dtype == torch.float32 and scaler._growth_tracker.dtype == torch.int32


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "fused-adamw"])
def test_history_read_at_the_end_equals_reading_it_every_step(monkeypatch, fused):
    """The history stays on the device until read; reading it late (across stacked chunks) changes nothing."""
    monkeypatch.setattr(LossScaler, "_COMPACT", 4)   # so 30 steps stack several chunks
    (m1, o1), (m2, o2) = _pair(3, fused)
    every, once = (LossScaler(init_scale=2.0 ** 20, growth_interval=2) for _ in range(2))
    gen = torch.Generator().manual_seed(3)
    per_step, scale_before = [], []
    for i in range(30):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        bad = [(1, 0.5, "inf")] if i % 6 == 4 else ()
        scale_before.append(every.get_scale())
        _step(m1, o1, every, x, y, bad)
        _step(m2, o2, once, x, y, bad)
        per_step.append(every.history)
        if i % 3 == 0:                               # also read in the middle of a chunk
            assert every.scales == per_step[-1]["scale"] and every.skipped_steps == per_step[-1]["skipped"]
    final = once.history
    assert final == per_step[-1] and once.scales == final["scale"] and once.skipped_steps == final["skipped"]
    for k, h in enumerate(per_step):
        assert h == {"scale": final["scale"][:k + 1], "skipped": [s for s in final["skipped"] if s <= k]}
    assert final["scale"] == scale_before and final["skipped"] == [4, 10, 16, 22, 28]
    assert all(type(s) is float for s in final["scale"]) and all(type(s) is int for s in final["skipped"])


def test_update_with_a_new_scale_matches_gradscaler():
    for new in (3.0e5, 0.1, torch.tensor(0.1)):      # 0.1 is rounded to float32 as it is stored
        (m1, o1), (m2, o2) = _pair(0)
        ours, ref = LossScaler(), torch.amp.GradScaler("cpu")
        x, y = torch.randn(8, 6), torch.randn(8, 3)
        for scaler, model, opt in ((ours, m1, o1), (ref, m2, o2)):
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            scaler.step(opt)
            scaler.update(new)
        assert ours.get_scale() == ref.get_scale() and ours.state_dict() == ref.state_dict()
        assert ours.scales == [2.0 ** 16] and ours.skipped_steps == []
    with pytest.raises(ValueError, match="1-element tensor"):
        ours.update(torch.ones(2))


def test_disabled_scaler_is_a_pass_through():
    (model, opt), _ = _pair(0)
    scaler = LossScaler(enabled=False)
    loss = model(torch.randn(2, 6)).sum()
    assert scaler.scale(loss) is loss and scaler.get_scale() == 1.0 and scaler.state_dict() == {}


@pytest.mark.gpu
def test_nan_and_inf_are_caught_on_cuda():
    """The foreach max-norm must propagate NaN on CUDA too (a max that ignored NaN would miss it)."""
    for bad in (float("nan"), float("inf")):
        grads = [torch.zeros(1000, device="cuda") for _ in range(3)]
        grads[1][517] = bad
        assert LossScaler._non_finite(grads).item()
    assert not LossScaler._non_finite([torch.ones(10, device="cuda")]).item()


@contextmanager
def _cuda_sync_is_an_error():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_fused_cuda_step_never_synchronizes_and_matches_gradscaler():
    """The real check of the fused path: CUDA's sync debug mode raises on any wait for the device (a .item(), a
    device-to-host copy), during scale, step (with a skip) and update; weights stay bit-identical to GradScaler's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8)).cuda()
    twin = copy.deepcopy(model)
    runs = [(model, torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True), LossScaler(growth_interval=1)),
            (twin, torch.optim.AdamW(twin.parameters(), lr=1e-2, fused=True),
             torch.amp.GradScaler("cuda", growth_interval=1))]
    gen = torch.Generator(device="cuda").manual_seed(0)
    for i in range(5):
        x, y = torch.randn(16, 64, device="cuda", generator=gen), torch.randn(16, 8, device="cuda", generator=gen)
        for m, opt, scaler in runs:
            loss = torch.nn.functional.mse_loss(m(x), y)
            with _cuda_sync_is_an_error() if scaler is runs[0][2] else nullcontext():
                scaled = scaler.scale(loss)
            scaled.backward()
            if i == 3:
                m[2].bias.grad[1] = float("inf")
            with _cuda_sync_is_an_error() if scaler is runs[0][2] else nullcontext():
                scaler.step(opt)
                scaler.update()
            opt.zero_grad(set_to_none=True)
    ours, ref = runs[0][2], runs[1][2]
    assert ours._scale.device.type == "cuda" and ours._growth_tracker.device.type == "cuda"
    assert ours.get_scale() == ref.get_scale() and ours.skipped_steps == [3]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


# ----------------------------------------------------------------------------- the scaler in train.py

def test_fp16_training_with_ours_and_with_gradscaler_is_identical():
    cfg = dict(steps=3, batch_size=2, seq_len=16, precision="fp16", progress=False, device="cpu", init_scale=2.0 ** 40)
    a = train(preset("tiny"), TrainConfig(scaler="frugal", **cfg))
    b = train(preset("tiny"), TrainConfig(scaler="torch", **cfg))
    assert a.column("loss") == b.column("loss") and a.column("loss_scale") == b.column("loss_scale")
    assert a.column("skipped") == b.column("skipped") and any(a.column("skipped"))  # 2^40 overflows at first
    assert isinstance(plots.scale_history(a.column("loss_scale"), [r.step for r in a.history if r.skipped]), Figure)


def test_fp16_without_a_scaler_is_refused_unless_asked_for():
    cfg = TrainConfig(precision="fp16", batch_size=2, seq_len=8, progress=False, device="cpu")
    model, opt, next_batch, device = build(preset("tiny"), cfg)
    with pytest.raises(ValueError, match="make_scaler"):
        train_step(model, opt, *next_batch(), cfg)
    assert make_scaler(TrainConfig(precision="fp16", scaler="none"), device) is None
    assert make_scaler(TrainConfig(precision="bf16"), device) is None


def test_tf32_flags_are_set_and_restored():
    saved = torch.backends.cuda.matmul.allow_tf32
    with matmul_precision(TrainConfig(precision="tf32")):
        assert torch.backends.cuda.matmul.allow_tf32
    with matmul_precision(TrainConfig(precision="fp32")):
        assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == saved


@pytest.mark.parametrize("field,value", [("precision", "fp4"), ("scaler", "apex"), ("loss_divisor", 0.0)])
def test_bad_precision_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
