import matplotlib
import pytest
from matplotlib.figure import Figure

matplotlib.use("Agg")

from frugal import plots  # noqa: E402


def _bar_heights(ax):
    return [p.get_height() for p in ax.patches]


def test_human_bytes():
    assert plots.human_bytes(512) == "512 B"
    assert plots.human_bytes(3 * 2 ** 20) == "3 MiB"
    assert plots.human_bytes(2 ** 50) == "1.02e+03 TiB"


# ----------------------------------------------------------------------------- lesson 00

def test_memory_bars_stack_each_kind_and_draw_one_line_per_gpu_size():
    plans = {"a": {"weights": 2e9, "gradients": 2e9, "optimizer": 12e9, "activations": 4e9},
             "b": {"weights": 1e9}}
    fig = plots.memory_bars(plans, {"A100-80GB": 80, "H100": 80, "T4": 16})
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heights = _bar_heights(ax)                       # 4 kinds × 2 plans, in GB
    assert len(heights) == 8 and sum(heights) == pytest.approx(21.0)
    tops = {round(p.get_y() + p.get_height(), 6) for p in ax.patches}
    assert 20.0 in tops and 1.0 in tops              # stacked: plan a tops out at its total
    assert sorted(line.get_ydata()[0] for line in ax.lines) == [16, 80]   # 80 GB drawn once
    assert any("A100-80GB / H100" in t.get_text() for t in ax.texts)


def test_cost_bars_are_sorted_cheapest_first():
    fig = plots.cost_bars({"H100": 300.0, "T4": 100.0, "L4": 200.0})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["T4", "L4", "H100"]
    assert [p.get_width() for p in ax.patches] == [100.0, 200.0, 300.0]


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
