import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from frugal import bench, data_sources, to_target  # noqa: E402
from frugal.model import preset  # noqa: E402
from frugal.plots.economics_quality import dollars_to_target  # noqa: E402
from frugal.train import TrainConfig  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
TINY = preset("tiny")
SHARED = dict(steps=40, batch_size=4, seq_len=32, eval_every=5, eval_batches=2, progress=False)


def test_training_stops_at_the_target_and_prices_the_steps():
    run = to_target.train_to_target(TINY, TrainConfig(**SHARED), price_per_hour=3.6, target_loss=4.0)
    assert run.reached and run.final_val_loss <= 4.0
    assert run.steps == run.curve[-1]["step"] < 40 and run.steps % 5 == 0
    assert all(p["val_loss"] > 4.0 for p in run.curve[:-1])            # the first evaluation below it stops it
    assert run.dollars == pytest.approx(run.train_time_s * 3.6 / 3600)  # $3.60/h = $0.001 per second
    assert run.curve[-1]["seconds"] == pytest.approx(run.train_time_s)
    assert [p["tokens"] for p in run.curve] == [s * 4 * 32 for s in range(0, run.steps + 1, 5)]
    assert all(a["dollars"] <= b["dollars"] for a, b in zip(run.curve, run.curve[1:]))


def test_a_target_out_of_reach_runs_to_the_step_cap():
    run = to_target.train_to_target(TINY, TrainConfig(**{**SHARED, "steps": 10}), 1.0, target_loss=0.01)
    assert not run.reached and run.steps == 10 and run.final_val_loss > 0.01
    assert to_target.savings({"naive fp32 Adam": run, "other": run})["other"] is None


def test_two_ranks_pay_for_two_devices():
    run = to_target.train_to_target(TINY, TrainConfig(**{**SHARED, "steps": 5, "world_size": 2}), 3600.0, 0.01)
    assert run.dollars == pytest.approx(2 * run.train_time_s)           # $3600/h per device, 2 devices


def test_naive_and_recipe_differ_only_in_the_recipe_switches():
    plans = to_target.naive_and_recipe(**SHARED, data="corpus")
    naive, recipe = plans["naive fp32 Adam"], plans["full recipe"]
    assert (naive.precision, naive.recompute) == ("fp32", "none")
    assert (recipe.precision, recipe.recompute, recipe.data_parallel) == ("bf16", "full", "zero3")
    for f in ("steps", "batch_size", "seq_len", "lr", "eval_every", "data", "world_size"):
        assert getattr(naive, f) == getattr(recipe, f)


def test_compare_runs_both_plans_and_names_the_saving():
    plans = to_target.naive_and_recipe(**SHARED)
    runs = to_target.compare_to_target(TINY, plans, 2.0, target_loss=4.0)
    assert set(runs) == set(plans) and all(r.reached for r in runs.values())
    s = to_target.savings(runs)
    assert s["naive fp32 Adam"] == 1.0
    assert s["full recipe"] == pytest.approx(runs["naive fp32 Adam"].dollars / runs["full recipe"].dollars)
    naive = runs["naive fp32 Adam"]
    assert to_target.dollars_to(naive, 4.0) == naive.dollars and to_target.dollars_to(naive, 0.01) is None
    assert to_target.dollars_to(naive, 10.0) == 0.0                  # the untrained model is already there
    fig = dollars_to_target({n: [(p["dollars"], p["val_loss"]) for p in r.curve] for n, r in runs.items()}, 4.0)
    assert len(fig.axes[0].lines) >= 2


@pytest.mark.parametrize("kw,match", [
    (dict(price_per_hour=-1.0), "price_per_hour=-1.0"),
    (dict(price_per_hour=math.inf), "price_per_hour=inf"),
    (dict(target_loss=0), "target_loss=0"),
])
def test_bad_arguments_are_refused(kw, match):
    args = {"price_per_hour": 1.0, "target_loss": 2.0, **kw}
    with pytest.raises(ValueError, match=match):
        to_target.train_to_target(TINY, TrainConfig(**SHARED), **args)
    with pytest.raises(ValueError, match="eval_every > 0"):
        to_target.train_to_target(TINY, TrainConfig(steps=2), 1.0, 2.0)


@pytest.mark.slow
def test_quick_bench_sections_train_on_the_standard_library(tmp_path, monkeypatch):
    monkeypatch.setattr(data_sources, "default_cache_dir", lambda: tmp_path / "cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                         # short runs: one thread is faster on a busy 2-core CPU
    try:
        out = bench.run(["dollars_to_target", "parity"], tmp_path, quick=True, device="cpu")["sections"]
    finally:
        torch.set_num_threads(threads)
    rows = {r["plan"]: r for r in out["dollars_to_target"]["rows"]}
    assert set(rows) == {"naive fp32 Adam", "full recipe"}
    for r in rows.values():
        assert r["reached"] and r["final_val_loss"] <= r["target"] == 3.5 and r["dollars"] > 0
    assert set(out["dollars_to_target"]["curves"]) == set(rows)
    assert all(0 < r["dollars_to_common_loss"] <= r["dollars"] for r in rows.values())
    assert [r["technique"] for r in out["parity"]["rows"]] == ["fp32", "bf16", "recompute full",
                                                          "fp32, again"]
    assert out["parity"]["rows"][2]["diff_from_fp32"] == 0.0            # recompute: the same fp32 ops
    for section in out.values():
        for f in section["figures"]:
            assert (tmp_path / f).read_bytes()[:8] == PNG
    assert list((tmp_path / "cache").glob("stdlib-*.bin"))
    report = bench.markdown_report(tmp_path)
    assert "Dollars to validation loss 3.5" in report and "Parity on the standard library" in report


def test_plan_race_fits_the_largest_size_and_the_fastest_recipe_that_fit():
    from frugal.recipe import count_params, estimate_training_bytes
    shared = dict(batch_size=8, seq_len=1024)
    roomy = to_target.plan_race(141e9, 90e6, on_gpu=True, **shared)          # an H200, GPT-2-small sized cap
    assert (roomy.model.n_layer, roomy.model.n_embd) == (12, 768) and count_params(roomy.model) <= 90e6
    assert list(roomy.plans) == ["naive fp32 Adam", "full recipe"]
    recipe = roomy.plans["full recipe"]
    assert (recipe.precision, recipe.recompute, recipe.fused_cross_entropy) == ("bf16", "none", True)
    assert roomy.plans["naive fp32 Adam"].precision == "fp32" and recipe.batch_size == 8
    # 2 GB: bf16 without recompute needs 3.8 GB, so the rung with full recompute; naive (6.3 GB) stays out
    tight = to_target.plan_race(2e9, 90e6, on_gpu=True, **shared)
    assert tight.plans["full recipe"].recompute == "full" and "naive fp32 Adam" not in tight.plans
    total = sum(estimate_training_bytes(tight.model, tight.plans["full recipe"], 8, 1024).values())
    assert total <= 2e9 < tight.estimated_bytes["naive fp32 Adam"]
    assert any("cannot train" in r for r in tight.reasons)
    # 0.5 GB: the 12 x 768 size fits no rung, so a smaller size is picked, said to be the memory's choice
    small = to_target.plan_race(0.5e9, 90e6, on_gpu=True, **shared)
    assert count_params(small.model) < count_params(tight.model) and "memory allows" in small.reasons[0]
    cpu = to_target.plan_race(8e9, 150_000, on_gpu=False, batch_size=8, seq_len=64)
    assert cpu.plans["full recipe"].fused_cross_entropy is False and cpu.model.n_embd == 64


def test_plan_race_refuses_what_cannot_be_picked():
    with pytest.raises(ValueError, match="max_params"):
        to_target.plan_race(16e9, 10, on_gpu=True)
    with pytest.raises(ValueError, match="lower batch_size"):
        to_target.plan_race(1e5, 90e6, on_gpu=True, batch_size=8, seq_len=1024)
    with pytest.raises(ValueError, match="budget_bytes"):
        to_target.plan_race(float("nan"), 90e6, on_gpu=True)


def test_no_saving_is_claimed_without_the_baseline():
    run = to_target.train_to_target(TINY, TrainConfig(**{**SHARED, "steps": 5}), 1.0, target_loss=0.01)
    assert to_target.savings({"full recipe": run}) == {"full recipe": None}
