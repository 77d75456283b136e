"""Lesson 04's experiment: the run spec and the per-rank peak-memory prediction (runs themselves: test_zero.py)."""
import pytest

from frugal import estimate
from frugal.model import preset
from frugal.train import TrainConfig
from frugal.zero_experiment import COMPARED, ZeroRun, _unit_numels, peak_by_kind, predict_peak_bytes, run_rank

CFG = preset("gpt2-small")
B, S = 8, 1024


def test_run_spec_rejects_unknown_data_parallel_and_precision():
    with pytest.raises(ValueError, match="data_parallel"):
        ZeroRun(data_parallel="zero4")
    with pytest.raises(ValueError, match="precision"):
        ZeroRun(precision="fp8")


def test_run_spec_is_a_train_config_that_also_knows_fsdp():
    run = ZeroRun(data_parallel="fsdp", world_size=2, batch_size=8, recompute="full", precision="bf16")
    assert isinstance(run, TrainConfig) and run.data_parallel == "fsdp"
    with pytest.raises(ValueError, match="multiple of 3"):              # batch_size is the global batch
        ZeroRun(world_size=3, batch_size=4)
    with pytest.raises(ValueError, match="bf16"):                      # checked as stage 3: no loss scaler
        ZeroRun(data_parallel="fsdp", world_size=2, batch_size=4, precision="fp16")
    with pytest.raises(ValueError, match="'full'"):                    # frugal.recompute's names
        ZeroRun(recompute="yes")


def test_run_rank_refuses_a_world_size_other_than_the_launch():
    with pytest.raises(ValueError, match="world_size=2"):
        run_rank(0, 2, ZeroRun(data_parallel="zero1", batch_size=4))


def test_prediction_refuses_unknown_data_parallel_and_precision():
    with pytest.raises(ValueError, match="pick one of"):
        predict_peak_bytes("zero4", CFG, B, S, 2)
    with pytest.raises(ValueError, match="pick one of"):
        predict_peak_bytes("zero2", CFG, B, S, 2, precision="fp8")


@pytest.mark.parametrize("world", [2, 3])
def test_state_parts_are_the_zero_papers_bytes_per_parameter(world):
    units, _ = _unit_numels(CFG)
    psi = sum(units)
    padded = sum(-(-u // world) * world for u in units)       # each unit padded to a multiple of the world size
    ddp, z1, z3 = (predict_peak_bytes(m, CFG, B, S, world) for m in ("ddp", "zero1", "zero3"))
    assert ddp["weights (fp32)"] + ddp["gradient buckets (fp32)"] + ddp["optimizer (Adam m, v)"] == 16 * psi
    assert z1["optimizer (Adam m, v shard)"] == z3["optimizer (Adam m, v shard)"] == 8 * padded / world
    assert z1["weights (full, flat)"] == 2 * padded                     # bf16 compute copies, whole
    assert z3["compute weights (shard)"] == 2 * padded / world          # ... only a shard under stage 3
    # against estimate.py's ZeRO table (Rajbhandari et al. 2020, fig. 1): the same 4 + 8 bytes of fp32 states
    paper = estimate.estimate_state_memory(psi, "mixed", "adam", 3, world)
    assert z3["master weights (fp32 shard)"] + z3["optimizer (Adam m, v shard)"] == pytest.approx(
        paper.optimizer, rel=1e-4)                                  # padding: a few parameters per unit


def test_what_every_plan_shares_and_how_the_plans_order():
    totals = {m: sum(predict_peak_bytes(m, CFG, B, S, 2).values()) for m in COMPARED}
    loss = predict_peak_bytes("zero3", CFG, B, S, 2)["loss: fp32 log-probs, their grad, logits' grad"]
    assert loss == 3 * 4 * B * S * CFG.vocab_size                       # the peak sits in the loss's backward
    assert totals["ddp"] == totals["bucket"]                            # same state, same activations
    assert totals["zero1"] == totals["zero2"]                           # no gradient exists at that moment
    assert totals["ddp"] > totals["zero1"] > totals["zero3"]


def test_peak_by_kind_keeps_every_byte():
    for plan in COMPARED:
        parts = predict_peak_bytes(plan, CFG, B, S, 2)
        kinds = peak_by_kind(parts)
        assert set(kinds) <= {"weights", "gradients", "optimizer", "activations"}
        assert sum(kinds.values()) == pytest.approx(sum(parts.values()))


def test_run_many_reports_each_run_as_it_finishes():
    """Lesson 04's bar ticks once per finished run: each rank reports every run's name, in order."""
    from frugal.dist import launch
    from frugal.zero_experiment import run_many

    base = dict(model="tiny", steps=1, batch_size=4, seq_len=16, world_size=2, progress=False)
    runs = {m: ZeroRun(data_parallel=m, **base) for m in ("ddp", "zero1")}
    heard = []
    out = launch(run_many, 2, runs, timeout=120, on_report=lambda rank, msg: heard.append((rank, msg)))
    assert set(out[0]) == {"ddp", "zero1"} and not any("error" in r for r in out[0].values())
    for rank in (0, 1):
        assert [m for r, m in heard if r == rank] == ["joined", "ddp", "zero1", "done"]
