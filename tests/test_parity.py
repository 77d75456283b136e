import pytest
import torch
from matplotlib.figure import Figure

from frugal import parity
from frugal.model import preset
from frugal.plots.economics_quality import parity_gaps, val_loss_overlay
from frugal.train import TrainConfig

BASE = TrainConfig(steps=40, batch_size=8, seq_len=64, eval_every=10, eval_batches=4, progress=False)


@pytest.fixture(scope="module")
def table():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # eleven short runs: one thread each is 10x faster on a busy 2-core CPU
    try:
        results = parity.run_parity(preset("tiny"), BASE)
    finally:
        torch.set_num_threads(threads)
    return results, {r["technique"]: r for r in parity.parity_table(results)}


@pytest.mark.slow
def test_every_technique_of_the_table_was_trained(table):
    results, rows = table
    assert list(rows) == list(parity.techniques())
    assert all(len(r.history) == BASE.steps and r.val_loss[-1][0] == BASE.steps for r in results.values())
    assert rows["fp32"]["diff_from_fp32"] == 0.0


@pytest.mark.slow
def test_exact_techniques_match_fp32_within_float_noise(table):
    _, rows = table
    exact = [r for r in rows.values() if r["kind"] == "exact"]
    assert len(exact) == 8                                    # fp32, 2 recomputes, fused CE, DP, ZeRO 1-3
    for r in exact:
        assert abs(r["rel_diff"]) <= parity.EXACT_REL_TOL, r  # 1e-3: fp32 rounding carried by Adam (parity.py)
        assert r["within"]
    # recompute replays the same fp32 ops in the same order on a CPU: bit for bit
    assert rows["recompute full"]["diff_from_fp32"] == rows["recompute selective"]["diff_from_fp32"] == 0.0
    assert rows["tf32"]["diff_from_fp32"] == 0.0              # a CPU has no TF32: the same math


# 40 steps on a CPU stop while the loss still falls by ~0.02 per step: bf16 lands 3% from fp32, fp16 1% (the
# trajectories separate early and have not met again). 5% bounds that; MIXED_REL_TOL's 1% is the GPU figure
# for a run long enough to flatten.
CPU_MIXED_REL_TOL = 0.05


@pytest.mark.slow
def test_mixed_precision_stays_near_fp32(table):
    _, rows = table
    for name in ("bf16", "fp16 + LossScaler"):
        assert abs(rows[name]["rel_diff"]) <= CPU_MIXED_REL_TOL, rows[name]
        assert rows[name]["final_val_loss"] < rows["fp32"]["final_val_loss"] * 1.05


@pytest.mark.slow
def test_overlay_plot_draws_every_run_against_tokens(table):
    results, _ = table
    c = parity.curves(results)
    assert c["fp32"][1][0] == BASE.eval_every * BASE.batch_size * BASE.seq_len
    fig = val_loss_overlay(c)
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == len(results)


def test_an_exact_technique_off_by_more_than_noise_fails_the_table():
    class R:
        def __init__(self, loss, **cfg):
            self.val_loss, self.history = [(10, loss)], []
            self.train_time_s = 0.0
    rows = {r["technique"]: r for r in parity.parity_table({"fp32": R(2.0), "recompute full": R(2.01),
                                                            "bf16": R(2.01)})}
    assert not rows["recompute full"]["within"]             # 0.5% is no float noise
    assert rows["bf16"]["within"]                           # but is within mixed precision's 1%


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="eval_every > 0"):
        parity.run_parity(preset("tiny"), TrainConfig(steps=2))
    with pytest.raises(ValueError, match="unknown techniques"):
        parity.run_parity(preset("tiny"), BASE, names=["fp64"])


def test_parity_over_seeds_averages_the_gaps_and_measures_the_noise_floor():
    base = TrainConfig(steps=6, batch_size=4, seq_len=32, eval_every=3, eval_batches=2, progress=False)
    rows, first = parity.parity_over_seeds(preset("tiny"), base, ["fp32", "recompute full", "bf16"], seeds=(0, 1))
    rows = {r["technique"]: r for r in rows}
    assert list(rows) == ["fp32", "recompute full", "bf16", "fp32, again"]
    assert first["fp32"].config.seed == 0 and set(first) == set(rows)
    for r in rows.values():
        assert r["seeds"] == 2 and len(r["rel_diffs"]) == 2
        assert r["rel_diff"] == pytest.approx(sum(r["rel_diffs"]) / 2, abs=0)
    # a CPU reruns fp32 bit for bit: no noise, so the exact tolerance is EXACT_REL_TOL's floor
    assert rows["fp32, again"]["rel_diffs"] == [0.0, 0.0] and rows["fp32, again"]["noise_sigma"] == 0.0
    assert rows["recompute full"]["tolerance"] == parity.EXACT_REL_TOL and rows["recompute full"]["within"]
    assert rows["bf16"]["tolerance"] == parity.MIXED_REL_TOL
    assert rows["bf16"]["rel_diffs"][0] != rows["bf16"]["rel_diffs"][1]       # two seeds, two trajectories


def test_the_exact_tolerance_grows_with_the_measured_noise(monkeypatch):
    """Where a rerun lands apart (a GPU), the exact tolerance is 3 sigma of a mean over the seeds."""
    class R:
        def __init__(self, loss):
            self.val_loss, self.train_time_s = [(10, loss)], 0.0
    gaps = {0: 0.004, 1: -0.002}                       # the reruns' gaps on seeds 0 and 1
    monkeypatch.setattr(parity, "run_parity",
                        lambda m, cfg, names, ws: {"fp32": R(2.0), "recompute full": R(2.0 * (1 + 0.003))})
    monkeypatch.setattr(parity, "train", lambda m, cfg: R(2.0 * (1 + gaps[cfg.seed])))
    rows = {r["technique"]: r for r in parity.parity_over_seeds(None, BASE, seeds=(0, 1))[0]}
    sigma = ((0.004 ** 2 + 0.002 ** 2) / 2) ** 0.5
    assert rows["fp32, again"]["noise_sigma"] == pytest.approx(sigma)
    assert rows["recompute full"]["tolerance"] == pytest.approx(3 * sigma / 2 ** 0.5)   # 0.0067
    assert rows["recompute full"]["within"]                                             # 0.3% < 0.67%
    with pytest.raises(ValueError, match="at least one seed"):
        parity.parity_over_seeds(None, BASE, seeds=())


def test_parity_gaps_draws_each_gap_over_its_tolerance():
    rows = [{"technique": "fp32", "rel_diff": 0.0, "tolerance": 1e-3, "within": True},
            {"technique": "recompute full", "rel_diff": -0.0007, "tolerance": 0.005, "within": True},
            {"technique": "bf16", "rel_diff": 0.013, "tolerance": 0.01, "within": False}]
    ax = parity_gaps(rows).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["recompute full (±0.5%)", "bf16 (±1%)"]                # fp32, the baseline, is no bar
    bands, gaps = ax.patches[0::2], ax.patches[1::2]
    assert [b.get_width() for b in bands] == pytest.approx([1.0, 2.0])      # ±tolerance, in percent
    assert [g.get_width() for g in gaps] == pytest.approx([-0.07, 1.3])
    assert gaps[1].get_facecolor() != gaps[0].get_facecolor()              # outside: another colour
    assert "%" in ax.get_xlabel()
