"""Wrong calls a learner makes, table-driven: each raises ValueError or TypeError whose message names the
argument and says what to pass instead, never an error from deep inside torch."""
import math

import pytest
import torch

from frugal import collectives, data, device, dist, estimate, numerics, pipeline_parallel as pp, serialization, \
    tensor_parallel as tp
from frugal.bench.report import update_readme
from frugal.train import TrainConfig, train
from frugal.loss_scaler import MIN_SCALE, LossScaler
from frugal.model import TinyGPT, preset

MODEL = TinyGPT(preset("tiny", n_layer=1))
IDS = torch.randint(256, (2, 8))

def _scaled() -> LossScaler:
    """A scaler in mid-iteration (scale() called), where update() is legal."""
    scaler = LossScaler()
    scaler.scale(torch.ones(()))
    return scaler


WRONG = [
    # (call, error type, a phrase the message must hold)
    (lambda: MODEL(IDS.float()), TypeError, "pass idx.long()"),
    (lambda: MODEL(IDS + 1000), ValueError, "outside [0, vocab_size=256)"),
    (lambda: MODEL(IDS - 300), ValueError, "outside [0, vocab_size"),
    (lambda: MODEL(IDS[0]), ValueError, "pass (batch, time)"),
    (lambda: MODEL(IDS[None]), ValueError, "pass (batch, time)"),
    (lambda: MODEL(IDS, IDS[:, :4]), ValueError, "differ in shape"),
    (lambda: MODEL(IDS, IDS.float()), TypeError, "pass targets.long()"),
    (lambda: MODEL([[1, 2]]), TypeError, "torch.long tensor"),
    (lambda: MODEL.generate(IDS, 2, temperature=-1), ValueError, "temperature=-1"),
    (lambda: MODEL.generate(IDS, 2, temperature=math.nan), ValueError, "finite number >= 0"),
    (lambda: MODEL.generate(IDS, -1), ValueError, "max_new_tokens=-1"),
    (lambda: preset("tiny", n_layers=4), TypeError, "n_layers"),
    (lambda: data.synthetic_batch(0, 2, 8), ValueError, "vocab_size=0"),
    (lambda: data.synthetic_batch(256, 2, 2.5), ValueError, "seq_len=2.5"),
    (lambda: data.synthetic_batch(256, 0, 8), ValueError, "batch_size=0"),
    (lambda: pp.schedule_1f1b(2, 5, 4), ValueError, "stage=5"),
    (lambda: pp.schedule_1f1b(2, -1, 4), ValueError, "pick a stage in 0..1"),
    (lambda: pp.schedule_gpipe(0, 0, 4), ValueError, "n_stages=0"),
    (lambda: pp.measure_bubble([]), ValueError, "one non-empty timeline per stage"),
    (lambda: tp.shard_columns(torch.zeros(8, 4), -1, 2), ValueError, "rank=-1"),
    (lambda: tp.shard_columns(torch.zeros(8, 4), 0, 0), ValueError, "world_size=0"),
    (lambda: tp.shard_columns(torch.zeros(9, 4), 0, 2), ValueError, "do not split evenly"),
    (lambda: tp.shard_columns(torch.zeros(8, 4), 0, 2, parts=3), ValueError, "parts=3"),
    (lambda: tp.shard_rows(torch.zeros(4, 6), 2, 2), ValueError, "rank=2"),
    (lambda: tp.shard_rows(torch.zeros(4, 7), 0, 2), ValueError, "7 input features"),
    (lambda: device.pick_device("gpu"), ValueError, "'cuda'"),
    (lambda: device.pick_device("mps"), ValueError, "use 'cpu'"),
    (lambda: device.pick_device("potato"), ValueError, "not a device name"),
    (lambda: dist.launch(abs, 2, timeout=math.nan), ValueError, "timeout=nan"),
    (lambda: dist.launch(abs, 2, timeout="60"), ValueError, "positive number of seconds"),
    (lambda: dist.launch(abs, 2, deadline=-1), ValueError, "deadline=-1"),
    (lambda: _scaled().update(new_scale=0.0), ValueError, "new_scale=0.0"),
    (lambda: _scaled().update(new_scale=math.nan), ValueError, "positive finite"),
    (lambda: TrainConfig(steps=2.5), ValueError, "positive integer"),
    (lambda: TrainConfig(batch_size=True), ValueError, "batch_size=True"),
    (lambda: TrainConfig(device="gpu"), ValueError, "'cuda'"),
    (lambda: TrainConfig(lr=math.nan), ValueError, "positive finite"),
    (lambda: TrainConfig(lr=math.inf), ValueError, "lr=inf"),
    (lambda: TrainConfig(grad_clip=-1), ValueError, "or None for no clipping"),
    (lambda: TrainConfig(grad_clip=0), ValueError, "grad_clip=0"),
    (lambda: TrainConfig(grad_clip=math.nan), ValueError, "positive finite norm"),
    (lambda: TrainConfig(seed="a"), ValueError, "seed='a'"),
    (lambda: train("tiny"), TypeError, "preset('tiny')"),
    (lambda: train(preset("tiny"), {}), TypeError, "TrainConfig"),
    (lambda: collectives.estimate_ring_bytes(1e6, 0), ValueError, "world_size=0"),
    (lambda: collectives.estimate_naive_root_bytes(-1, 2), ValueError, "nbytes=-1"),
    (lambda: numerics.stats_table(torch.randn(8), ["nope"]), ValueError, "pick from"),
    (lambda: update_readme("no/such/README.md"), ValueError, "pass --readme"),
    (lambda: serialization.BatchSampler(IDS.flatten(), 4, 8, world_size=0), ValueError, "world_size=0"),
    (lambda: serialization.BatchSampler(IDS.flatten(), 4, 8, rank=2, world_size=2), ValueError, "rank in 0..1"),
    (lambda: serialization.BatchSampler(IDS.flatten(), 0, 8), ValueError, "batch_size=0"),
    (lambda: LossScaler().load_state_dict({"scale": 0.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                           "growth_interval": 2000, "_growth_tracker": 0}), ValueError, "damaged"),
]


@pytest.mark.parametrize("call,error,phrase", WRONG, ids=[w[2] for w in WRONG])
def test_a_wrong_call_names_the_argument_and_the_fix(call, error, phrase):
    with pytest.raises(error) as info:
        call()
    assert phrase in str(info.value), str(info.value)
    # Raised by frugal's own check, not from inside torch or Python's internals.
    assert "frugal" in info.traceback[-1].path.parts[-3:-1], info.traceback[-1].path   # frugal/ or frugal/bench/


def test_generate_at_temperature_zero_is_greedy():
    torch.manual_seed(0)
    a = MODEL.generate(IDS, 3, temperature=0)
    b = MODEL.generate(IDS, 3, temperature=0)
    assert torch.equal(a, b)
    logits, _ = MODEL(IDS)
    assert torch.equal(a[:, IDS.size(1)], logits[:, -1].argmax(-1))


def test_the_loss_scale_never_backs_off_to_zero():
    """GradScaler's scale reaches 0 after ~150 overflowing steps in a row, and unscale_ then makes NaN; ours floors."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = LossScaler(init_scale=1.0)
    for _ in range(200):
        scaler.scale((p * math.inf).sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert scaler.get_scale() == pytest.approx(MIN_SCALE) and torch.equal(p.detach(), torch.ones(3))
    scaler.scale((p * 2).sum()).backward()       # a clean step at the floor still trains, with finite weights
    scaler.step(opt)
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), torch.ones(3))
