import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
import pytest
from matplotlib.figure import Figure

matplotlib.use("Agg")

from frugal import plots  # noqa: E402


def _bar_heights(ax):
    return [p.get_height() for p in ax.patches]


def _texts(fig) -> list[str]:
    """Every piece of text a learner reads on the figure: titles, labels, ticks, annotations, legends."""
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def _drawn(fig) -> bool:
    """Render the figure with Agg, as the inline backend does (tick labels exist only after a draw)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return True


# ----------------------------------------------------------------------------- lesson 00

def test_memory_bars_stack_each_kind_and_draw_one_line_per_gpu_size():
    plans = {"a": {"weights": 2e9, "gradients": 2e9, "optimizer": 12e9, "activations": 4e9},
             "b": {"weights": 1e9}}
    fig = plots.memory_bars(plans, {"A100-80GB": 80, "H100": 80, "T4": 16}, log=False)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heights = _bar_heights(ax)                       # 4 kinds × 2 plans, in GB
    assert len(heights) == 8 and sum(heights) == pytest.approx(21.0)
    tops = {round(p.get_y() + p.get_height(), 6) for p in ax.patches}
    assert 20.0 in tops and 1.0 in tops              # stacked: plan a tops out at its total
    assert {"20 GB", "1 GB"} <= set(_texts(fig))     # and says it
    assert sorted(line.get_ydata()[0] for line in ax.lines) == [16, 80]   # 80 GB drawn once
    assert "A100-80GB / H100 80 GB" in _texts(fig)


def test_cost_bars_are_sorted_cheapest_first():
    fig = plots.cost_bars({"H100": 300.0, "T4": 100.0, "L4": 200.0})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["T4", "L4", "H100"]
    assert [p.get_x() + p.get_width() for p in ax.patches] == [100.0, 200.0, 300.0]   # each bar ends at its cost


def test_loss_curve_draws_each_run():
    fig = plots.loss_curve({"fp32": [3, 2, 1], "bf16": [3, 2.5, 1.5]})
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[3, 2, 1], [3, 2.5, 1.5]]


def test_predicted_vs_measured_stacks_the_estimate_beside_the_count():
    fig = plots.predicted_vs_measured({"mlp": 3 * 2 ** 20, "attention": 1 * 2 ** 20}, 5 * 2 ** 20)
    assert _bar_heights(fig.axes[0]) == [3.0, 1.0, 5.0]


# ----------------------------------------------------------------------------- lesson 02

def test_recompute_tradeoff_joins_the_curves_and_leaves_alternatives_as_points():
    def pt(label, ms, mib, peak=None):
        return dict(label=label, step_s=ms / 1e3, saved_bytes=mib * 2 ** 20, peak_memory_bytes=peak)

    curves = {"ours": [pt("0", 100, 30), pt("1", 110, 20)], "torch": [pt("0", 100, 30), pt("1", 110.2, 20)]}
    fig = plots.recompute_tradeoff(curves, alternatives={"selective": [pt("sel", 104, 25), pt("+proj", 103, 27)]})
    ax = fig.axes[0]                                 # no peak memory measured: one panel
    assert len(fig.axes) == 1
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["ours"].get_linestyle() == "-" and lines["selective"].get_linestyle() == "None"
    assert list(lines["selective"].get_xdata()) == [104, 103]
    # the "0" and "1" of both curves sit on (nearly) the same spots: labelled once each
    assert sorted(t.get_text() for t in ax.texts) == ["+proj", "0", "1", "sel"]


def test_recompute_tradeoff_draws_the_repeats_spread_and_the_committed_gpu_panel_beside():
    def pt(label, ms, mib, lo, hi):
        return dict(label=label, step_s=ms / 1e3, step_min_s=lo / 1e3, step_max_s=hi / 1e3,
                    saved_bytes=mib * 2 ** 20, peak_memory_bytes=None)

    live = {"ours": [pt("0", 60, 30, 50, 90), pt("1", 240, 20, 55, 900)]}
    gpu = {"title": "H200, 2026-12-02 (committed)",
           "series": {"ours": [dict(label="0", step_s=0.090, saved_bytes=17 * 2 ** 30),
                               dict(label="12", step_s=0.105, saved_bytes=8 * 2 ** 30)]},
           "alternatives": {"ours, selective": [dict(label="sel", step_s=0.094, saved_bytes=13 * 2 ** 30)]}}
    fig = plots.recompute_tradeoff(live, title="this CPU", reference=gpu)
    here, there = fig.axes
    assert _drawn(fig) and len(fig.axes) == 2
    (bars,) = [c for c in here.containers if c.has_xerr]            # one min-max bar per live point
    segments = [seg[:, 0].tolist() for seg in bars.lines[2][0].get_segments()]
    assert segments == [pytest.approx([50.0, 90.0]), pytest.approx([55.0, 900.0])]
    assert "min-max of the repeats" in _texts(fig)
    assert there.get_title() == "H200, 2026-12-02 (committed)" and there.get_ylabel() == "saved activations (GiB)"
    assert [list(line.get_xdata()) for line in there.get_lines()][:2] == [[90.0, 105.0], [94.0]]
    assert list(there.get_lines()[0].get_ydata()) == [17, 8]
    assert not [c for c in there.containers if getattr(c, "has_xerr", False)]   # the run kept medians only
    assert here.get_ylabel() == "saved activations (MiB)"


# ----------------------------------------------------------------------------- lesson 03

def test_overlap_timeline_puts_the_committed_gpu_steps_beside_and_writes_what_was_not_hidden():
    timeline = [(0, 0.004, 0.020, 50_000), (1, 0.007, 0.030, 50_000)]
    gpu = dict(title="2× H200, 2026-11-22 (committed)", alone_ms=26.9, steps_ms={"naive": 32.3, "bucket": 28.7})
    fig = plots.overlap_timeline(timeline, 0.010, title="this machine", reference=gpu)
    live, there = fig.axes
    assert _drawn(fig) and live.get_title() == "this machine" and there.get_title() == gpu["title"]
    compute, hidden_not = there.containers                          # one bar of each kind per row
    assert [b.get_width() for b in compute] == [26.9, 26.9, 26.9]
    assert [b.get_width() for b in hidden_not] == pytest.approx([0.0, 5.4, 1.8])
    assert {"26.9 ms", "32.3 ms (+5.4)", "28.7 ms (+1.8)"} <= {t.get_text().strip() for t in there.texts}
    assert [t.get_text() for t in there.get_yticklabels()][2] == "ours, bucketed\n(during backward)"
    assert "communication not hidden" in _texts(fig)
    alone = plots.overlap_timeline(timeline, 0.010)                 # without a committed run: the live panel only
    assert len(alone.axes) == 1 and [p.get_width() for p in alone.axes[0].patches][:1] == [10.0]


def test_scaling_reads_tokens_per_second_in_thousands_and_draws_the_ideal_from_one_rank():
    fig = plots.scaling({"bucket": {1: 300_000.0, 2: 571_000.0}}, ideal_from="bucket")
    ax = fig.axes[0]
    assert _drawn(fig) and list(ax.lines[1].get_ydata()) == [300_000.0, 600_000.0]
    ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and all(t.endswith(" K") for t in ticks), ticks


# ----------------------------------------------------------------------------- the package

def test_every_public_figure_of_every_lesson_module_is_reexported():
    import importlib
    import inspect
    import pkgutil

    for info in pkgutil.iter_modules(plots.__path__):
        module = importlib.import_module(f"frugal.plots.{info.name}")
        public = {n for n, f in inspect.getmembers(module, inspect.isfunction)
                  if not n.startswith("_") and f.__module__ == module.__name__ and n != "new_figure"}
        assert public <= set(plots.__all__), f"frugal.plots.{info.name}: add {public - set(plots.__all__)} to __init__"
        for name in public:
            assert getattr(plots, name) is getattr(module, name)


# ----------------------------------------------------------------------------- lesson 01

def test_step_time_bars_put_both_clocks_beside_each_setting():
    fig = plots.step_time_bars({"fp32": 160.0, "bf16": 30.0}, {"fp32": 161.0, "bf16": 33.0})
    ax = fig.axes[0]
    assert _bar_heights(ax) == [160.0, 30.0, 161.0, 33.0]      # steady state first, then synced each step
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fp32", "bf16"]
    assert ax.patches[0].get_facecolor()[:3] == ax.patches[2].get_facecolor()[:3]   # one colour per format


# ----------------------------------------------------------------------------- what a learner reads

def test_cost_bars_label_the_log_axis_start_every_bar_at_a_stated_baseline_and_keep_ticks_apart():
    costs = {"T4": 41_000.0, "L4": 25_000.0, "A100-80GB": 9_500.0, "H100": 5_200.0, "H200": 4_900.0}
    fig = plots.cost_bars(costs, title="dollars", highlight="T4")
    ax = fig.axes[0]
    assert _drawn(fig) and ax.get_xscale() == "log"
    assert "log scale" in ax.get_xlabel() and "$1,000" in ax.get_xlabel()   # each bar starts at $1,000
    assert {p.get_x() for p in ax.patches} == {1000.0} and ax.get_xlim()[0] == 1000.0   # no bar is cut
    ticks = [t for t in ax.get_xticklabels() if t.get_text()]
    renderer = fig.canvas.get_renderer()
    boxes = sorted((t.get_window_extent(renderer) for t in ticks), key=lambda b: b.x0)
    assert len(boxes) >= 2 and all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))   # no two ticks overlap
    assert all(t.get_text().startswith("$") for t in ticks)                            # in dollars, not 10^4
    colors = {lab.get_text(): p.get_facecolor()[:3] for lab, p in zip(ax.get_yticklabels(), ax.patches)}
    assert colors["T4"] != colors["H100"]                                               # the chosen GPU stands out
    assert "$41,000" in " ".join(_texts(fig))


def test_memory_bars_go_log_when_small_plans_sit_beside_80_gb_and_show_79_against_80():
    plans = {"dp": {"weights": 40e9, "optimizer": 39e9}, "zero3": {"weights": 1.5e9, "optimizer": 0.4e9}}
    fig = plots.memory_bars(plans, {"H100": 80}, highlight="H100")
    ax = fig.axes[0]
    assert _drawn(fig) and ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    assert "79 GB" in _texts(fig) and "1.9 GB" in _texts(fig)
    line = next(l for l in ax.lines if l.get_ydata()[0] == 80)
    assert line.get_linewidth() == 2                                                    # the chosen GPU, bold


def test_memory_bars_wrap_long_plan_names_so_labels_do_not_overlap():
    plans = {name: {"weights": 1e9} for name in ("1 GPU", "tp=8", "tp=8 pp=8", "tp=8 pp=16", "dp=8 tp=8 pp=16 ZeRO-1")}
    fig = plots.memory_bars(plans)
    assert _drawn(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))


def test_gpt3_layouts_memory_bars_are_log_stacked_by_kind_with_no_kind_hidden_and_the_80_gb_line_named():
    from frugal import estimate
    gpt3 = dict(n_layer=96, hidden=12288, heads=96, vocab=51200, seq=2048, micro_batch=1)   # lesson 05's figure
    layouts = {"1 GPU": (1, 1, 1), "tp=8": (1, 8, 1), "tp=8 pp=8": (1, 8, 8), "tp=8 pp=16": (1, 8, 16),
               "dp=8 tp=8 pp=16 ZeRO-1": (8, 8, 16)}
    plans = {k: estimate.estimate_parallel_memory(**gpt3, layout=estimate.ParallelLayout(*v), n_micro=64,
                                                  schedule="1f1b", zero_stage=1 if v[0] > 1 else 0).as_dict()
             for k, v in layouts.items()}
    fig = plots.memory_bars(plans, {"H100": 80})
    ax = fig.axes[0]
    assert _drawn(fig) and ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()    # 3 TB beside 64 GB
    kinds = ["weights", "gradients", "optimizer", "activations"]
    assert fig.legends[0].get_texts() and [t.get_text() for t in fig.legends[0].get_texts()] == kinds
    bottom = ax.get_ylim()[0]
    patches = iter(ax.patches)                      # drawn kind by kind, plan by plan
    for kind in kinds:
        for name in plans:
            p = next(patches)
            want = plans[name][kind] / 1e9
            assert p.get_y() + p.get_height() > bottom and p.get_height() > 0.2 * want, (name, kind)
    dp8 = [p for p in ax.patches if round(p.get_x() + p.get_width() / 2) == 4]
    assert [round(p.get_y() + p.get_height(), 1) for p in dp8] == [2.9, 5.9, 8.0, 63.6]   # ZeRO-1's stack
    texts = _texts(fig)
    assert {"3.07 TB", "405 GB", "101 GB", "79 GB", "63.6 GB", "H100 80 GB"} <= set(texts)
    line = next(l for l in ax.lines if l.get_ydata()[0] == 80)
    assert line.get_zorder() > max(p.get_zorder() for p in ax.patches)                 # drawn over the bars
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))
    totals = [t for t in ax.texts if t.get_text().endswith("B")]
    assert all(t.get_bbox_patch() is not None for t in totals)                          # a white box over the line


def test_max_model_bars_say_billion_not_b_and_mark_the_chosen_stage():
    fig = plots.max_model_bars({"DP": 5e9, "stage 1": 19e9, "stage 3": 320e9}, 80, 64, highlight="stage 3")
    texts = _texts(fig)
    assert "320 billion" in texts and not any(t.endswith(" B") for t in texts)
    ax = fig.axes[0]
    assert ax.patches[2].get_facecolor()[:3] != ax.patches[0].get_facecolor()[:3]


def test_pipeline_gantt_puts_each_panel_in_its_own_units():
    measured = [[{"kind": "F", "mb": 0, "start": 1.000, "end": 1.004}],
                [{"kind": "F", "mb": 0, "start": 1.004, "end": 1.010}]]
    ideal = [[{"kind": "F", "mb": 0, "start": 0, "end": 1}], [{"kind": "F", "mb": 0, "start": 1, "end": 2}]]
    fig = plots.pipeline_gantt({"measured": measured, "ideal": ideal}, units={"ideal": ("time units", 1.0)})
    (ax_m, ax_i) = fig.axes
    assert ax_m.get_xlabel() == "ms" and ax_i.get_xlabel() == "time units"
    assert [p.get_width() for p in ax_m.patches] == pytest.approx([4.0, 6.0])     # seconds shown in ms
    assert [p.get_width() for p in ax_i.patches] == pytest.approx([1.0, 1.0])     # simulation units kept


def test_bandwidth_plot_is_log_so_a_slow_line_is_not_flat_at_zero():
    sizes = [2 ** 8, 2 ** 10, 2 ** 12, 2 ** 14]
    fig = plots.bandwidth_vs_size({"ours": (sizes, [0.001, 0.003, 0.01, 0.02]),
                                   "torch.add": (sizes, [2.0, 5.0, 9.0, 10.0])})
    ax = fig.axes[0]
    assert _drawn(fig) and ax.get_yscale() == "log"
    lo, hi = ax.get_ylim()
    assert lo < 0.001 and hi > 10                                                    # both lines inside the axes
    assert "20 MB/s" in _texts(fig) and "10 GB/s" in _texts(fig)                    # ends labelled, in units
    assert len(ax.lines[0].get_xdata()) == 4


def test_bandwidth_end_labels_of_lines_that_end_together_do_not_overlap():
    sizes = [2 ** 20, 2 ** 24, 2 ** 28]                          # a GPU: ours, torch.add and a copy level off together
    fig = plots.bandwidth_vs_size({"ours": (sizes, [500.0, 3000.0, 4036.0]), "torch.add": (sizes, [800.0, 3500.0, 4288.0]),
                                   "copy": (sizes, [700.0, 3400.0, 4100.0]), "interpreter": (sizes, [0.001, 0.002, 0.003])})
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    labels = [t for t in fig.axes[0].texts if t.get_text().endswith("B/s")]
    assert len(labels) == 4
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), [t.get_text() for t in labels]


def test_frontier_stars_are_labelled_with_the_real_parameter_count():
    rows = [dict(params=p, estimated_bytes=b) for p, b in ((200_000, 5e6), (437_760, 9e6), (834_304, 30e6))]
    fig = plots.model_size_frontiers({"plan": rows}, 20e6)
    assert "438 K" in _texts(fig) and "0M" not in _texts(fig)


def test_format_ranges_name_the_value_inside_the_axes_and_read_the_top_axis_in_powers_of_ten():
    import math

    from frugal import numerics
    table = numerics.format_table()
    fig = plots.format_ranges(table, value=1e-6, highlight="fp16")
    assert _drawn(fig)
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    label = next(t for t in ax.texts if t.get_text().strip() == "|x| = 1e-06")
    box, title = label.get_window_extent(renderer), ax.title.get_window_extent(renderer)
    assert ax.get_window_extent(renderer).contains(box.x0, box.y0) and not box.overlaps(title)
    top = next(a for a in fig.axes[0].child_axes)
    ticks = [t.get_text() for t in top.get_xticklabels()]
    assert "1e-10" in ticks and "1" in ticks and "1e30" in ticks and "powers of ten" in top.get_xlabel()
    assert top.get_xlim()[0] == pytest.approx(ax.get_xlim()[0] / math.log2(10))          # log2 axis / log2(10)
    lanes = [p for p in ax.patches]
    assert all(not box.overlaps(p.get_window_extent(renderer)) for p in lanes)          # under the lanes


def test_gradient_histogram_counts_like_the_table_one_denominator():
    import torch
    from frugal import numerics

    g = torch.cat([torch.zeros(100), torch.full((300,), 1e-9), torch.full((600,), 1e-3)])   # 10% exact zeros
    fig = plots.gradient_histogram(g, numerics.format_table(), formats=("fp16",))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    table = numerics.format_stats(g, "fp16").underflow
    assert table == pytest.approx(0.3) and legend == [f"fp16: {table:.1%} round to 0"]
    assert "10.0% exactly 0" in fig.axes[0].get_title()


def test_predicted_vs_measured_labels_bytes_with_units():
    fig = plots.predicted_vs_measured({"mlp": 3 * 2 ** 20}, 3 * 2 ** 20)
    assert _texts(fig).count("3 MiB") == 2
    ax = fig.axes[0]
    assert _drawn(fig) and [t.get_text() for t in ax.get_xticklabels()] == ["estimated", "counted"]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1                   # beside the axes: no bar hidden under it


def test_frontier_axes_read_in_parameters_and_bytes():
    rows = [dict(params=p, estimated_bytes=b) for p, b in ((130_000, 5e6), (437_760, 12e6), (3.2e6, 70e6))]
    fig = plots.model_size_frontiers({"plan": rows}, 20e6)
    assert _drawn(fig)
    ax = fig.axes[0]
    assert {"200 K", "500 K", "1 M"} <= {t.get_text() for t in ax.get_xticklabels()}
    assert {"10 MB", "20 MB"} <= {t.get_text() for t in ax.get_yticklabels()}
    assert "budget 20 MB " in _texts(fig)


def test_frontier_tick_labels_never_run_into_each_other_over_many_decades():
    # lesson 07's 16 GB search: 3 million to 10 billion parameters, labels in words ('2 billion')
    rows = [dict(params=p, estimated_bytes=5e9 + p * 20) for p in (3e6, 1e7, 1.2e8, 5.4e8, 2.65e9, 1e10)]
    fig = plots.model_size_frontiers({"plan": rows}, 16e9)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    shown = [t for t, x in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= x <= hi and t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in shown]
    assert len(boxes) >= 3, [t.get_text() for t in shown]
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 < b.x0, [t.get_text() for t in shown]


def test_zero_on_gpus_labels_speed_against_the_first_plan_and_peaks_against_the_prediction():
    rows = {"DDP": dict(tokens_per_s=524_000.0, peak_bytes_measured=10.04e9, peak_bytes_predicted=9.95e9),
            "stage 3": dict(tokens_per_s=497_000.0, peak_bytes_measured=8.33e9, peak_bytes_predicted=8.26e9)}
    fig = plots.zero_on_gpus(rows, "2× H200, 2026-11-22 (committed)")
    assert _drawn(fig)
    texts = _texts(fig)
    assert " 524 K (1.00× DDP)" in texts and " 497 K (0.95× DDP)" in texts
    assert any(t.startswith(" 9.35 GiB (+0.9%)") for t in texts)
    speed = fig.axes[0]
    assert [t.get_text() for t in speed.get_yticklabels()] == ["DDP", "stage 3"]


def test_cross_entropy_memory_reads_its_log_axis_in_bytes():
    xs = [2 ** k for k in range(8, 19)]
    fig = plots.cross_entropy_memory({"unfused": (xs, [x * 1e5 for x in xs])}, {"unfused": (xs, [x * 1e5 for x in xs])},
                                     vocab=65536, tokens=8192)
    FigureCanvasAgg(fig).draw()
    ticks = {t.get_text() for t in fig.axes[0].get_yticklabels()}
    assert {"100 MiB", "1 GiB", "10 GiB"} <= ticks, ticks


def test_recipe_runs_write_each_measured_value_in_its_unit():
    run = dict(tokens_per_s=777.0, memory_bytes=1.71 * 2 ** 20, dollars_per_billion_tokens=0.64,
               predicted_memory_bytes=1.33 * 2 ** 20, predicted_dollars_per_billion_tokens=0.01)
    fig = plots.recipe_runs({"plain bf16": run})
    assert {"777", "1.71 MiB", "$0.64"} <= set(_texts(fig))
    assert {"estimator", "estimator, at its assumed MFU"} <= set(_texts(fig))   # the ticks say what they assume


def test_recipe_runs_axes_read_in_tokens_dollars_and_gib_on_a_gpu():
    runs = {n: dict(tokens_per_s=t, memory_bytes=m * 2 ** 30, dollars_per_billion_tokens=d)
            for n, t, m, d in (("plain", 30_000.0, 33.5, 0.05), ("recipe", 4_000.0, 4.3, 0.07))}
    fig = plots.recipe_runs(runs)
    FigureCanvasAgg(fig).draw()
    speed, memory, dollars = fig.axes
    assert {"10 K", "20 K", "30 K"} <= {t.get_text() for t in speed.get_yticklabels()}
    assert memory.get_ylabel() == "memory (GiB)" and max(memory.get_ylim()) < 100    # 33.5, not 34,304 MiB
    assert {"$0.02", "$0.04"} <= {t.get_text() for t in dollars.get_yticklabels()}


def test_dollars_to_target_reads_its_axis_and_its_mark_in_dollars():
    from frugal.plots.economics_quality import dollars_to_target
    fig = dollars_to_target({"tiny": [(0.0, 5.4), (1e-5, 3.0), (2.86e-5, 2.6), (6e-5, 2.4)]}, target=2.7)
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert "$0.00002" in {t.get_text() for t in ax.get_xticklabels()}     # not 2 under a '1e-5' offset
    assert ax.xaxis.get_offset_text().get_text() == ""
    assert "$0.0000286" in _texts(fig)


def test_recipe_runs_legends_sit_above_the_bars_not_on_them():
    runs = {n: dict(tokens_per_s=t, memory_bytes=m * 2 ** 20, dollars_per_billion_tokens=d,
                    predicted_memory_bytes=m * 2 ** 20, predicted_dollars_per_billion_tokens=d)
            for n, t, m, d in (("plain", 900.0, 3.0, 0.5), ("recipe", 400.0, 1.0, 1.4))}
    fig = plots.recipe_runs(runs)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes[1:]:
        box = ax.get_legend().get_window_extent(renderer)
        assert box.y0 >= ax.get_window_extent(renderer).y1 - 1            # over the axes' top edge
        for bar in ax.patches:
            assert not box.overlaps(bar.get_window_extent(renderer))


def test_recipe_ranking_puts_the_fastest_first_in_units_and_colours_the_runs_the_lesson_names():
    runs = {"plain bf16 B32": dict(tokens_per_s=363_000.0, memory_bytes=33.5 * 2 ** 30, dollars_per_billion_tokens=2.9),
            "recipe B32": dict(tokens_per_s=300_000.0, memory_bytes=4.29 * 2 ** 30, dollars_per_billion_tokens=3.51),
            "compile B32": dict(tokens_per_s=484_000.0, memory_bytes=21.3 * 2 ** 30, dollars_per_billion_tokens=2.18)}
    fig = plots.recipe_ranking(runs, title="H200, 2026-12-02 (committed)", highlight={"recipe B32": "C2"})
    speed, memory, dollars = fig.axes
    assert _drawn(fig) and fig._suptitle.get_text() == "H200, 2026-12-02 (committed)"
    assert [t.get_text() for t in speed.get_yticklabels()] == ["compile B32", "plain bf16 B32", "recipe B32"]
    assert [b.get_width() for b in memory.patches] == pytest.approx([21.3, 33.5, 4.29])
    assert memory.get_xlabel() == "peak memory (GiB)"
    assert {"484 K", "4.29 GiB", "$3.51"} <= {t.get_text().strip() for t in fig.findobj(matplotlib.text.Text)}
    colours = [matplotlib.colors.to_hex(b.get_facecolor()) for b in speed.patches]
    assert colours[2] == matplotlib.colors.to_hex("C2") and colours[0] == colours[1] == "#bbbbbb"
    assert all(t.get_text().endswith(" K") for t in speed.get_xticklabels()[1:] if t.get_text())


def test_bubble_vs_formula_draws_the_committed_gpu_bubble_beside_the_live_one():
    live = {"gpipe": {1: 0.51, 2: 0.33, 4: 0.40, 8: 0.57}}
    gpu = dict(title="2× H200, 2026-11-22 (committed)", n_stages=2, measured={"1f1b": {1: 0.504, 16: 0.104}})
    fig = plots.bubble_vs_formula(live, 2, title="this machine", reference=gpu)
    here, there = fig.axes
    assert _drawn(fig) and (here.get_title(), there.get_title()) == ("this machine", gpu["title"])
    formula, points = there.get_lines()
    assert list(points.get_xdata()) == [1, 16] and list(points.get_ydata()) == [0.504, 0.104]
    assert formula.get_ydata()[0] == pytest.approx(0.5) and formula.get_ydata()[-1] == pytest.approx(1 / 17)
    assert [t.get_text() for t in there.get_xticklabels()] == ["1", "16"]
    assert len(plots.bubble_vs_formula(live, 2).axes) == 1


def test_fp8_recipe_trace_reads_its_log_axes_as_plain_numbers():
    amax = [0.5 ** (t / 20) * (20.0 if t == 30 else 1.0) for t in range(60)]
    fig = plots.recipe_trace(amax, [a / 2 for a in amax], [0.0] * 60, "delayed")
    FigureCanvasAgg(fig).draw()
    left = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert {"0.5", "1", "2"} <= set(left), left
    assert not any("$" in t for ax in fig.axes[:2] for t in (x.get_text() for x in ax.get_yticklabels()))
