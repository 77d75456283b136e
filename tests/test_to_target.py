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
    assert [r["technique"] for r in out["parity"]["rows"]] == ["fp32", "bf16", "recompute full"]
    assert out["parity"]["rows"][2]["diff_from_fp32"] == 0.0            # recompute: the same fp32 ops
    for section in out.values():
        for f in section["figures"]:
            assert (tmp_path / f).read_bytes()[:8] == PNG
    assert list((tmp_path / "cache").glob("stdlib-*.bin"))
    report = bench.markdown_report(tmp_path)
    assert "Dollars to validation loss 3.5" in report and "Parity on the standard library" in report
