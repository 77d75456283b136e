"""GPipe and 1F1B on 2 gloo ranks against single-process training (one launch for every schedule and m), on 3
and 4 ranks (one launch each), plus the schedules' orders, the ideal simulator, and the estimator's model-parallel
formulas."""
import pytest
import torch

from frugal import estimate
from frugal import pipeline_parallel as pp
from frugal.data import synthetic_batch
from frugal.dist import launch
from frugal.model import TinyGPT, preset

P, BATCH, SEQ, SEED = 2, 8, 16, 0
CFG = preset("tiny", n_layer=3)            # 3 blocks on 2 stages: an uneven split, on purpose
MS = [1, 2, 4, 8]
RUNS = [(s, m) for s in ("gpipe", "1f1b") for m in MS]
# fp32: the pipeline sums m micro-batch losses (and their gradients) of 1/m each where the single process
# averages over the batch at once, and the tied embedding's two gradient halves are added in another order.
ATOL, RTOL = 1e-6, 1e-4


@pytest.fixture(scope="module")
def launched():
    heard = []                                          # what the ranks reported while they ran
    out = launch(pp.pipeline_rank, P, CFG, BATCH, SEQ, RUNS, SEED, 1, True, 1, backend="gloo", timeout=60,
                 on_report=lambda rank, msg: heard.append((rank, msg)))
    return out, heard


@pytest.fixture(scope="module")
def runs(launched):
    return {(r["schedule"], r["m"]): r for r in pp.gather_runs(launched[0])}


def test_each_rank_reports_each_run_as_it_finishes(launched):
    """A progress bar can tick once per (schedule, m): every rank reports them in order, then is done."""
    _, heard = launched
    for rank in range(P):
        assert [m for r, m in heard if r == rank] == ["joined", *RUNS, "done"]


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(SEED)
    model = TinyGPT(CFG)
    x, y = synthetic_batch(CFG.vocab_size, BATCH, SEQ, torch.Generator().manual_seed(SEED + 1))
    _, loss = model(x, y)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("schedule,m", RUNS)
def test_loss_and_gradients_equal_single_process(runs, reference, schedule, m):
    loss, grads = reference
    run = runs[(schedule, m)]
    assert run["loss"] == pytest.approx(loss, rel=RTOL)
    assert set(run["grads"]) == set(grads)                       # every parameter lives on some stage
    for name, per_stage in run["grads"].items():
        for g in per_stage:                                       # wte is on both stages, each with the full grad
            torch.testing.assert_close(g, grads[name], atol=ATOL, rtol=RTOL)
    assert len(run["grads"]["wte.weight"]) == 2


@pytest.mark.slow
def test_three_stages_with_a_middle_stage(reference):
    """A middle stage receives and sends in both directions, which 2 stages never exercise."""
    runs = [("gpipe", 2), ("1f1b", 2), ("gpipe", 4), ("1f1b", 4)]
    out = pp.gather_runs(launch(pp.pipeline_rank, 3, CFG, BATCH, SEQ, runs, SEED, 1, True, 1,
                                backend="gloo", timeout=60))
    loss, grads = reference
    for run in out:
        assert run["loss"] == pytest.approx(loss, rel=RTOL)
        for name, per_stage in run["grads"].items():
            for g in per_stage:
                torch.testing.assert_close(g, grads[name], atol=ATOL, rtol=RTOL)
        m = run["m"]
        assert run["in_flight"] == ([m] * 3 if run["schedule"] == "gpipe" else [min(3, m), min(2, m), 1])


@pytest.mark.slow
def test_four_stages_match_single_process():
    """bench_model_parallel's rank function at 4 stages (two middle ones; 5 blocks split 2, 1, 1, 1), m below, at
    and above p. Same tolerances as at 2 stages, for the same reasons (ATOL, RTOL)."""
    cfg = preset("tiny", n_layer=5)
    torch.manual_seed(SEED)
    model = TinyGPT(cfg)
    x, y = synthetic_batch(cfg.vocab_size, BATCH, SEQ, torch.Generator().manual_seed(SEED + 1))
    _, loss = model(x, y)
    loss.backward()
    runs = [(s, m) for s in ("gpipe", "1f1b") for m in (2, 4, 8)]
    out = pp.gather_runs(launch(pp.pipeline_rank, 4, cfg, BATCH, SEQ, runs, SEED, 1, True, 1,
                                backend="gloo", timeout=60))
    assert [(r["schedule"], r["m"]) for r in out] == runs
    for run in out:
        assert run["loss"] == pytest.approx(loss.item(), rel=RTOL)
        assert {n for n, _ in model.named_parameters()} == set(run["grads"])
        for name, per_stage in run["grads"].items():
            for g in per_stage:
                torch.testing.assert_close(g, dict(model.named_parameters())[name].grad, atol=ATOL, rtol=RTOL)
        m = run["m"]
        assert run["in_flight"] == ([m] * 4 if run["schedule"] == "gpipe" else [min(4 - s, m) for s in range(4)])


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < P, reason=f"needs {P} GPUs for NCCL ranks")
def test_nccl_pipeline_matches_single_process(reference):
    out = pp.gather_runs(launch(pp.pipeline_rank, P, CFG, BATCH, SEQ, [("gpipe", 4), ("1f1b", 4)], SEED, 1, True,
                                backend="nccl", timeout=120))
    loss, grads = reference                           # on CPU: GPU kernels round differently, within ATOL
    for run in out:
        assert run["loss"] == pytest.approx(loss, rel=RTOL)
        for name, per_stage in run["grads"].items():
            for g in per_stage:
                torch.testing.assert_close(g, grads[name], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("m", MS)
def test_1f1b_holds_fewer_micro_batches_than_gpipe(runs, m):
    g, f = runs[("gpipe", m)], runs[("1f1b", m)]
    assert g["in_flight"] == [m, m]
    assert f["in_flight"] == [min(P, m), 1]
    per_mb = g["activation_bytes"][0] / m                         # one micro-batch's saved activations
    assert f["activation_bytes"][0] <= P / m * g["activation_bytes"][0] + per_mb
    if m > P:
        assert f["activation_bytes"][0] < g["activation_bytes"][0]


@pytest.mark.parametrize("schedule,m", RUNS)
def test_timeline_follows_the_schedule(runs, schedule, m):
    timelines = runs[(schedule, m)]["timelines"][0]
    for s, tl in enumerate(timelines):
        assert [(e["kind"], e["mb"]) for e in tl] == pp.SCHEDULES[schedule](P, s, m)
        assert all(e["end"] >= e["start"] for e in tl)
        assert all(a["end"] <= b["start"] for a, b in zip(tl, tl[1:]))
    for i in range(m):                           # stage 1 runs F_i only after stage 0 finished it; B the other way
        f0 = next(e for e in timelines[0] if e["kind"] == "F" and e["mb"] == i)
        f1 = next(e for e in timelines[1] if e["kind"] == "F" and e["mb"] == i)
        b0 = next(e for e in timelines[0] if e["kind"] == "B" and e["mb"] == i)
        b1 = next(e for e in timelines[1] if e["kind"] == "B" and e["mb"] == i)
        assert f0["end"] <= f1["start"] and b1["end"] <= b0["start"]
    assert 0 < pp.measure_bubble(timelines) < 1


def test_schedule_orders():
    assert pp.schedule_gpipe(4, 0, 3) == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("B", 1), ("B", 2)]
    assert pp.schedule_1f1b(4, 0, 6) == [("F", 0), ("F", 1), ("F", 2), ("F", 3), ("B", 0), ("F", 4), ("B", 1),
                                         ("F", 5), ("B", 2), ("B", 3), ("B", 4), ("B", 5)]
    assert pp.schedule_1f1b(4, 3, 2) == [("F", 0), ("B", 0), ("F", 1), ("B", 1)]
    for p in (2, 3, 4):
        for m in (1, 3, 8):
            for s in range(p):
                assert pp.in_flight(pp.schedule_gpipe(p, s, m)) == m
                assert pp.in_flight(pp.schedule_1f1b(p, s, m)) == min(p - s, m)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_ideal_bubble_is_the_formula(schedule):
    for p in (1, 2, 3, 4):
        for m in (1, 2, 3, 4, 8, 16):
            for tb in (1.0, 2.0):
                sim = pp.simulate(schedule, p, m, 1.0, tb)
                assert pp.measure_bubble(sim) == pytest.approx(estimate.pipeline_bubble_fraction(p, m), abs=1e-12)


def test_simulator_detects_a_deadlocking_schedule():
    backwards_first = lambda p, s, m: [("B", i) for i in range(m)] + [("F", i) for i in range(m)]
    with pytest.raises(RuntimeError, match="deadlock"):
        pp.simulate(backwards_first, 2, 2)


def test_partition():
    assert pp.partition(3, 2) == [(0, 2), (2, 3)]
    assert pp.partition(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_fewer_layers_than_stages():
    with pytest.raises(ValueError, match="n_layer=2 blocks cannot fill 3 pipeline stages"):
        pp.partition(2, 3)
    with pytest.raises(ValueError, match="n_layer=2 blocks cannot fill 3"):
        pp.PipelineStage(TinyGPT(preset("tiny")), 0, 3)


@pytest.mark.parametrize("m", [0, -1, 1.5])
def test_micro_batches_below_one(m):
    with pytest.raises(ValueError, match="micro-batches: must be an integer >= 1"):
        pp.schedule_1f1b(2, 0, m)
    with pytest.raises(ValueError, match="micro-batches: must be an integer >= 1"):
        pp.schedule_gpipe(2, 0, m)


def test_step_refuses_bad_input_before_communicating():
    stage = pp.PipelineStage(TinyGPT(preset("tiny")), 0, 1)
    x = torch.zeros(6, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="batch 6 is not divisible into m=4"):
        pp.pipeline_step(stage, x, x, 4)
    with pytest.raises(ValueError, match="m=0"):
        pp.pipeline_step(stage, x, x, 0)
    with pytest.raises(ValueError, match="schedule='zigzag'"):
        pp.pipeline_step(stage, x, x, 2, "zigzag")


# ----------------------------------------------------------------------------- estimate.py's model-parallel part

def test_bubble_fraction_formula():
    assert estimate.pipeline_bubble_fraction(1, 8) == 0
    assert estimate.pipeline_bubble_fraction(4, 1) == 0.75
    assert estimate.pipeline_bubble_fraction(4, 12) == pytest.approx(3 / 15)
    with pytest.raises(ValueError, match="n_micro=0"):
        estimate.pipeline_bubble_fraction(4, 0)


def test_parallel_memory_splits_states_and_activations():
    gpt3 = dict(n_layer=96, hidden=12288, heads=96, vocab=51200, seq=2048, micro_batch=1)
    one = estimate.estimate_parallel_memory(**gpt3, layout=estimate.ParallelLayout())
    n = 96 * (12 * 12288 ** 2 + 13 * 12288) + 51200 * 12288 + 2048 * 12288     # ~175B
    assert one.weights == pytest.approx(2 * n) and one.optimizer == pytest.approx(12 * n)
    # Korthikanti et al. 2022, table 2, no parallelism: s·b·h·(34 + 5as/h) bytes per layer
    assert one.activations == pytest.approx(96 * 2048 * 12288 * (34 + 5 * 96 * 2048 / 12288))
    tp8 = estimate.estimate_parallel_memory(**gpt3, layout=estimate.ParallelLayout(tp=8))
    assert tp8.weights == pytest.approx((2 * n - 2 * 2048 * 12288) / 8 + 2 * 2048 * 12288)
    assert tp8.activations < one.activations / 3                 # 10 s·b·h per layer stays replicated
    kw = dict(layout=estimate.ParallelLayout(tp=8, pp=8), n_micro=32)
    gpipe = estimate.estimate_parallel_memory(**gpt3, schedule="gpipe", **kw)
    f1b = estimate.estimate_parallel_memory(**gpt3, schedule="1f1b", **kw)
    assert f1b.activations == pytest.approx(gpipe.activations * 8 / 32)   # p of m micro-batches in flight
    z1 = estimate.estimate_parallel_memory(**gpt3, zero_stage=1, **dict(kw, layout=estimate.ParallelLayout(4, 8, 8)))
    assert z1.optimizer == pytest.approx(f1b.optimizer / 4)


def test_parallel_memory_bad_layouts():
    gpt3 = dict(n_layer=96, hidden=12288, heads=96, vocab=51200, seq=2048, micro_batch=1)
    with pytest.raises(ValueError, match="pp=5"):
        estimate.estimate_parallel_memory(**gpt3, layout=estimate.ParallelLayout(pp=5))
    with pytest.raises(ValueError, match="tp=7"):
        estimate.estimate_parallel_memory(**gpt3, layout=estimate.ParallelLayout(tp=7))
    with pytest.raises(ValueError, match="schedule"):
        estimate.estimate_parallel_memory(**gpt3, layout=estimate.ParallelLayout(), schedule="zigzag")


# ----------------------------------------------------------------------------- lesson 05's plots and widgets
# (kept here so this branch adds no file that lesson 00's test_plots.py / test_widgets.py also add)

def test_gantt_draws_one_bar_per_event():
    from frugal import plots
    sim = {s: pp.simulate(s, 3, 4) for s in pp.SCHEDULES}
    fig = plots.pipeline_gantt(sim)
    assert len(fig.axes) == 2
    assert all(len(ax.patches) == 3 * 2 * 4 for ax in fig.axes)         # p stages x (F + B) x m
    fig = plots.bubble_vs_formula({"gpipe": {1: 0.5, 4: 0.25}}, 2)
    assert len(fig.axes[0].lines) == 2
    fig = plots.activation_per_stage({"gpipe": [4.0, 4.0], "1f1b": [2.0, 1.0]})
    assert len(fig.axes[0].patches) == 4


def test_rank_grid_numbers_ranks_tp_innermost():
    from frugal import plots
    fig = plots.rank_grid(2, 2, 3)
    labels = [[t.get_text() for t in ax.texts] for ax in fig.axes]
    assert labels[0] == ["0", "1", "4", "5", "8", "9"] and labels[1] == ["2", "3", "6", "7", "10", "11"]


def test_widgets_build(runs):
    widgets = pytest.importorskip("frugal.widgets")
    assert widgets.pipeline_explorer(list(runs.values())) is not None
    assert widgets.layout_explorer() is not None
