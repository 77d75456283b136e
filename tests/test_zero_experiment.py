"""Lesson 04's experiment: the run spec and the per-rank peak-memory prediction (runs themselves: test_zero.py)."""
import pytest

from frugal import estimate
from frugal.model import preset
from frugal.zero_experiment import MODES, ZeroRun, _unit_numels, peak_by_kind, predict_peak_bytes

CFG = preset("gpt2-small")
B, S = 8, 1024


def test_run_spec_rejects_unknown_mode_and_dtype():
    with pytest.raises(ValueError, match="mode"):
        ZeroRun(mode="zero4")
    with pytest.raises(ValueError, match="dtype"):
        ZeroRun(dtype="fp8")


def test_prediction_refuses_unknown_mode_and_dtype():
    with pytest.raises(ValueError, match="pick one of"):
        predict_peak_bytes("zero4", CFG, B, S, 2)
    with pytest.raises(ValueError, match="pick one of"):
        predict_peak_bytes("zero2", CFG, B, S, 2, dtype="fp8")


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
    totals = {m: sum(predict_peak_bytes(m, CFG, B, S, 2).values()) for m in MODES}
    loss = predict_peak_bytes("zero3", CFG, B, S, 2)["loss: fp32 log-probs, their grad, logits' grad"]
    assert loss == 3 * 4 * B * S * CFG.vocab_size                       # the peak sits in the loss's backward
    assert totals["ddp"] == totals["bucket"]                            # same state, same activations
    assert totals["zero1"] == totals["zero2"]                           # no gradient exists at that moment
    assert totals["ddp"] > totals["zero1"] > totals["zero3"]


def test_peak_by_kind_keeps_every_byte():
    for mode in MODES:
        parts = predict_peak_bytes(mode, CFG, B, S, 2)
        kinds = peak_by_kind(parts)
        assert set(kinds) <= {"weights", "gradients", "optimizer", "activations"}
        assert sum(kinds.values()) == pytest.approx(sum(parts.values()))
