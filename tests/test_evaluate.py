import math

import pytest
import torch
import torch.nn.functional as F

from frugal import data
from frugal.evaluate import bits_per_byte, evaluate
from frugal.model import preset
from frugal.train import TrainConfig, train

TINY = preset("tiny")


def _cfg(**kw):
    base = dict(steps=12, batch_size=4, seq_len=32, eval_every=4, eval_batches=3, progress=False)
    return TrainConfig(**{**base, **kw})


def test_val_loss_is_recorded_at_start_every_n_steps_and_at_the_end():
    r = train(TINY, _cfg(steps=10))
    assert [s for s, _ in r.val_loss] == [0, 4, 8, 10]
    assert r.val_loss[0][1] == pytest.approx(math.log(256), abs=0.3)      # untrained: about uniform over bytes
    assert r.val_loss[-1][1] < r.val_loss[0][1] - 1.0                     # it learns
    assert r.eval_time_s > 0 and r.train_time_s == pytest.approx(sum(r.column("time_s")))
    assert r.val_bpb[-1][1] == pytest.approx(r.val_loss[-1][1] / math.log(2))
    assert r.model.training                                               # back in training mode


def test_evaluating_changes_nothing_about_training():
    with_val, without = train(TINY, _cfg()), train(TINY, _cfg(eval_every=0))
    assert with_val.column("loss") == without.column("loss")              # same batches, same steps
    for a, b in zip(with_val.model.parameters(), without.model.parameters()):
        assert torch.equal(a, b)
    assert without.val_loss == [] and without.eval_time_s == 0


def test_val_loss_is_the_cross_entropy_of_the_fixed_held_out_batches():
    cfg = _cfg()
    r = train(TINY, cfg)
    _, val = data.split(data.load_tokens("corpus"))
    batches = data.validation_batches(val, cfg.eval_batches, cfg.batch_size, cfg.seq_len)
    with torch.no_grad():
        r.model.eval()
        ours = [F.cross_entropy(r.model(x)[0].flatten(0, 1), y.flatten()).item() for x, y in batches]
    assert r.val_loss[-1][1] == pytest.approx(sum(ours) / len(ours), rel=1e-6)   # same fp32 ops, averaged


def test_evaluate_runs_without_gradients_and_restores_the_mode():
    model = torch.nn.Linear(4, 4)
    seen = []

    def loss_of(m, x, y):
        seen.append((m.training, torch.is_grad_enabled()))
        return ((m(x) - y) ** 2).mean()
    batches = [(torch.randn(2, 4), torch.randn(2, 4)) for _ in range(3)]
    assert evaluate(model, batches, loss_of) == pytest.approx(
        sum(((model(x) - y) ** 2).mean().item() for x, y in batches) / 3, rel=1e-6)
    assert seen == [(False, False)] * 3 and model.training and model.weight.grad is None


def test_a_target_loss_stops_training_at_the_first_evaluation_below_it():
    r = train(TINY, _cfg(steps=400, target_loss=3.2))
    assert r.val_loss[-1][1] <= 3.2 < min(v for _, v in r.val_loss[:-1])
    assert len(r.history) == r.val_loss[-1][0] < 400


def test_bits_per_byte():
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)
    assert bits_per_byte(math.log(2) * 4, bytes_per_token=4) == pytest.approx(1.0)


def test_training_on_a_folder_through_a_glob(tmp_path):
    (tmp_path / "src").mkdir()
    for i in range(20):
        (tmp_path / "src" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + 1\n" * 20)
    (tmp_path / "src" / "README.md").write_text("not read")
    cfg = _cfg(data=str(tmp_path / "src"), data_glob="**/*.py", data_cache=str(tmp_path / "cache"))
    r = train(TINY, cfg)
    assert r.val_loss[-1][1] < r.val_loss[0][1]
    assert list((tmp_path / "cache").glob("*.bin"))


def test_text_shorter_than_a_sequence_is_refused(tmp_path):
    (tmp_path / "short.txt").write_text("x" * 40)
    cfg = _cfg(data=str(tmp_path / "short.txt"), data_cache=str(tmp_path))
    with pytest.raises(ValueError, match="fewer than one sequence of seq_len=32"):
        train(TINY, cfg)


@pytest.mark.parametrize("kw,match", [
    (dict(data="synthetic"), "nothing to hold out"),
    (dict(eval_every=0, target_loss=2.0), "set eval_every"),
    (dict(eval_batches=0), "eval_batches=0"),
    (dict(eval_every=-1), "eval_every=-1"),
    (dict(target_loss=-1.0), "target_loss=-1.0"),
    (dict(data="no/such/folder"), "pick 'corpus'"),
])
def test_bad_evaluation_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


@pytest.mark.slow
def test_data_parallel_ranks_evaluate_their_rows_and_agree_with_one_rank():
    one = train(TINY, _cfg(steps=8))
    two = train(TINY, _cfg(steps=8, world_size=2, data_parallel="bucket"))
    assert [s for s, _ in two.val_loss] == [s for s, _ in one.val_loss]
    assert two.val_loss[0][1] == pytest.approx(one.val_loss[0][1], abs=1e-6)    # same weights: only summation order
    for (_, a), (_, b) in zip(one.val_loss, two.val_loss):
        assert b == pytest.approx(a, abs=1e-3)    # averaged gradients differ in the last bits; 8 steps keep it small
    assert two.eval_time_s > 0


@pytest.mark.parametrize("module", ["frugal.data", "frugal.data_sources", "frugal.evaluate"])
def test_data_and_evaluation_sit_below_the_trainer(module):
    """train.py imports these; they must not import it back."""
    import subprocess
    import sys
    code = f"import sys, {module}; assert 'frugal.train' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
