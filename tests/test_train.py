import pytest
import torch

from frugal.model import TinyGPT, preset
from frugal.train import TrainConfig, build, train, train_step


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


def test_sequence_longer_than_the_model_allows_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="block_size=64"):
        build(preset("tiny"), _cfg(seq_len=65))
