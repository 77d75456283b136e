import matplotlib
import pytest

matplotlib.use("Agg")

import ipywidgets as W  # noqa: E402

from frugal import estimate, widgets  # noqa: E402
from frugal.model import TinyGPT, preset  # noqa: E402


def _controls(box: W.Box) -> dict:
    """The dashboard's controls by description (the rows above the output)."""
    return {c.description: c for row in box.children[:-1] for c in row.children}


def test_cost_calculator_prices_a_plan_and_follows_the_gpu(capsys):
    box = widgets.cost_calculator(n_params=7e9, n_tokens=2e12, gpu="H100", mfu=0.4, n_gpus=64)
    assert isinstance(box, W.VBox) and isinstance(box.children[-1], W.Output)
    c = _controls(box)
    assert {"parameters", "tokens", "GPU", "GPUs", "MFU", "$ per GPU-hour", "precision", "sequence",
            "micro-batch", "recompute"} <= set(c)
    out = capsys.readouterr().out          # outside a kernel, the Output's text lands on stdout
    cost = estimate.estimate_cost(estimate.Plan(7e9, 2e12, "H100", 64, 0.4, "bf16"))
    assert f"{cost.days:,.1f} days" in out and f"${cost.dollars:,.0f}" in out
    c["GPU"].value = "T4"                  # a new GPU brings its price, and the T4 falls back to fp16
    assert c["$ per GPU-hour"].value == estimate.get_gpu("T4").price_per_hour
    assert "fp16" in capsys.readouterr().out
    c["$ per GPU-hour"].value = 1.0
    assert "at $1 per GPU-hour" in capsys.readouterr().out


def test_cost_calculator_reports_what_fits(capsys):
    box = widgets.cost_calculator(n_params=7.5e9, gpu="H100", n_gpus=64)
    capsys.readouterr()
    _controls(box)["recompute"].value = "full"   # ZeRO paper's 7.5B: 120 GB of states, 1.9 GB with ZeRO-3
    out = capsys.readouterr().out
    assert "data parallel: does not fit" in out and "ZeRO-3: fits" in out


def test_cost_calculator_refuses_an_unknown_gpu_naming_the_known_ones():
    with pytest.raises(ValueError, match="H100"):
        widgets.cost_calculator(gpu="V100")


def test_log_sliders_step_one_two_five_and_read_in_words():
    from frugal.widgets._common import _log_slider
    params = _log_slider("parameters", 7e9, 1e6, 1e12)
    labels = [label for label, _ in params.options]
    assert params.label == "7 billion" and labels[:4] == ["1 M", "2 M", "5 M", "10 M"] and labels[-1] == "1 trillion"
    assert not any("e+" in label or "e-" in label for label in labels)        # no e-notation anywhere
    assert [v for _, v in _log_slider("MiB", 0.05, 0.005, 0.1).options] == [0.005, 0.01, 0.02, 0.05, 0.1]


def test_activation_meter_redraws_on_a_live_model(capsys):
    model = TinyGPT(preset("tiny"))
    box = widgets.activation_meter(model)
    first = capsys.readouterr().out
    assert "predicted" in first and "counted" in first
    _controls(box)["sequence"].value = 16
    second = capsys.readouterr().out
    assert "counted" in second and second != first


def test_recipe_dashboard_trains_and_refuses_a_bad_plan(capsys):
    box = widgets.recipe_dashboard(steps=2, batch_size=4, seq_len=16)
    bar, status = box.children[2].children                   # under the two rows of controls
    assert bar.value == bar.max == 2 and status.value.startswith("done in")   # one process: a tick per step
    first = capsys.readouterr().out
    assert "tokens/s" in first and "estimator" in first and "US$ per billion tokens" in first
    controls = _controls(box)
    # greyed out where they would retrain the same plan: the scaler outside fp16, the flavour on one rank
    assert controls["fp16 scaler"].disabled and controls["parallel"].disabled
    controls["parallel"].value = "zero2"
    controls["precision"].value = "fp16"                       # fp16 under ZeRO: refused with the fix, no launch
    assert "not a valid plan" in capsys.readouterr().out
    assert not controls["fp16 scaler"].disabled


# ----------------------------------------------------------------------------- each control changes the figure

def _figures(monkeypatch, module) -> list:
    """The Figures a dashboard module displays, in order (display is replaced by a recorder)."""
    shown = []
    monkeypatch.setattr(module, "display", shown.append)
    return shown


def _red(patch) -> bool:
    return patch.get_facecolor()[:3] == pytest.approx((0xC4 / 255, 0x4E / 255, 0x52 / 255))


def test_cost_calculator_gpu_dropdown_redraws_both_figures(monkeypatch):
    import frugal.widgets.economics as econ

    shown = _figures(monkeypatch, econ)
    c = _controls(widgets.cost_calculator(gpu="H100"))
    mem, cost = shown[-2:]

    def chosen_bar(fig):
        ax = fig.axes[0]
        return [lab.get_text() for lab, p in zip(ax.get_yticklabels(), ax.patches) if _red(p)]

    def chosen_line(fig):
        right = fig.axes[0].child_axes[0]          # the GPUs on the right-hand axis
        return [t.get_text() for t in right.get_yticklabels() if t.get_fontweight() == "bold"]

    assert chosen_bar(cost) == ["H100"] and chosen_line(mem) == ["A100-80GB / H100 80 GB"]
    c["GPU"].value = "T4"
    mem, cost = shown[-2:]
    assert chosen_bar(cost) == ["T4"] and chosen_line(mem) == ["T4 16 GB"]
    before = {lab.get_text(): p.get_width() for lab, p in zip(cost.axes[0].get_yticklabels(), cost.axes[0].patches)}
    c["$ per GPU-hour"].value = 2 * c["$ per GPU-hour"].value   # the typed price moves the chosen GPU's bar
    after = {lab.get_text(): p.get_width() for lab, p in zip(shown[-1].axes[0].get_yticklabels(),
                                                             shown[-1].axes[0].patches)}
    assert after["T4"] > before["T4"] and after["H100"] == before["H100"]


def test_sharding_stage_picker_changes_both_plots(monkeypatch, capsys):
    import frugal.widgets.parallel as par

    shown = _figures(monkeypatch, par)
    c = _controls(widgets.sharding_explorer(n_params=7e9, world_size=8))
    c["stage"].value = 3
    red = [i for i, p in enumerate(shown[-1].axes[0].patches) if _red(p)]
    assert red == [3]                                      # stage 3's bar in the largest-model plot
    assert "stage 3" in shown[-2].axes[0].get_title()
    c["stage"].value = 0
    assert [i for i, p in enumerate(shown[-1].axes[0].patches) if _red(p)] == [0]
    assert "billion" in " ".join(t.get_text() for t in shown[-1].axes[0].texts)
    assert "{'weights'" not in capsys.readouterr().out


def test_counts_of_gpus_and_ranks_step_by_powers_of_two_keeping_the_count_asked_for():
    ranks = _controls(widgets.sharding_explorer(world_size=6))["ranks"]
    assert ranks.options[:5] == (1, 2, 4, 6, 8) and ranks.options[-1] == 1024 and ranks.value == 6
    gpus = _controls(widgets.cost_calculator(n_gpus=64))["GPUs"]
    assert gpus.options[-1] == 4096 and gpus.options.index(64) == gpus.options.index(32) + 1


def test_sharding_precision_moves_the_bytes_sent_and_the_memory_line_says_what_it_is(monkeypatch, capsys):
    import frugal.widgets.parallel as par

    shown = _figures(monkeypatch, par)
    c = _controls(widgets.sharding_explorer(n_params=7e9, world_size=8))
    c["stage"].value = 0
    mixed = capsys.readouterr().out
    c["precision"].value = "fp32"                           # fp32 gradients: twice the bytes on the wire
    fp32 = capsys.readouterr().out
    sent = lambda out: out.rsplit("sends ", 1)[1].split(" per step")[0]
    assert "(16-bit values)" in mixed and "(fp32 values)" in fp32
    assert float(sent(fp32).split()[0]) == pytest.approx(2 * float(sent(mixed).split()[0]), rel=0.01)
    fig = shown[-2]
    fig.canvas.draw()                                       # the memory lines are labelled on a right-hand axis
    labels = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    assert "memory per rank 80 GB" in labels and "80 GB 80 GB" not in labels


def test_pipeline_explorer_labels_the_ideal_run_in_simulation_units(monkeypatch):
    import frugal.widgets.parallel as par

    shown = _figures(monkeypatch, par)
    ev = lambda k, mb, t0, t1: {"kind": k, "mb": mb, "start": t0, "end": t1}
    tl = [[ev("F", 0, 0.0, 0.001), ev("B", 0, 0.003, 0.005)], [ev("F", 0, 0.001, 0.002), ev("B", 0, 0.002, 0.003)]]
    runs = [{"schedule": s, "m": 1, "timelines": [tl], "in_flight": [1, 1]} for s in ("gpipe", "1f1b")]
    c = _controls(widgets.pipeline_explorer(runs))
    measured, ideal = shown[-1].axes
    assert measured.get_xlabel() == "ms" and ideal.get_xlabel().startswith("simulation time units")
    assert max(p.get_x() + p.get_width() for p in ideal.patches) == pytest.approx(6.0)   # (m+p-1)(1+2) units
    c["schedule"].value = "gpipe"
    assert "gpipe" in shown[-1].axes[0].get_title()


def test_cross_entropy_live_count_follows_the_tokens_slider(capsys):
    pytest.importorskip("triton")
    model = TinyGPT(preset("tiny"))
    c = _controls(widgets.cross_entropy_memory_explorer(model, live_tokens=512))
    first = capsys.readouterr().out
    c["tokens"].value = 2 ** 9
    second = capsys.readouterr().out
    live = lambda out: next(line for line in out.splitlines() if line.startswith("live"))
    assert "512 tokens" in live(second) and live(first) != live(second)


def test_cross_entropy_sliders_move_the_marked_point_on_both_panels(monkeypatch):
    pytest.importorskip("triton")
    import frugal.widgets.kernels as kern

    shown = _figures(monkeypatch, kern)
    c = _controls(widgets.cross_entropy_memory_explorer(TinyGPT(preset("tiny")), live_tokens=512))
    marker = lambda ax: next(l for l in ax.lines if l.get_label().startswith("chosen")).get_xdata()[0]
    by_vocab, by_tokens = shown[-1].axes
    assert (marker(by_vocab), marker(by_tokens)) == (2 ** 16, 2 ** 13)
    assert by_vocab.get_title() == "at 8,192 tokens" and by_tokens.get_title() == "at vocab 65,536"
    c["vocab"].value = 2 ** 12                                  # the left marker moves, the right panel says so
    by_vocab, by_tokens = shown[-1].axes
    assert marker(by_vocab) == 2 ** 12 and by_tokens.get_title() == "at vocab 4,096"
    c["tokens"].value = 2 ** 10
    by_vocab, by_tokens = shown[-1].axes
    assert marker(by_tokens) == 2 ** 10 and by_vocab.get_title() == "at 1,024 tokens"


def test_precision_dashboard_greys_out_the_scaler_unless_fp16_and_each_fp16_setting_is_its_own_run(monkeypatch):
    import frugal.widgets.precision as prec

    shown = _figures(monkeypatch, prec)
    c = _controls(widgets.precision_dashboard(steps=1, batch_size=2, seq_len=8))
    assert c["precision"].value == "fp32" and c["fp16 scaler"].disabled and c["init scale"].disabled
    c["precision"].value = "fp16"
    assert not c["fp16 scaler"].disabled and not c["init scale"].disabled
    c["init scale"].value = 2.0 ** 40                           # a new bar, not the fp32 one redrawn
    names = [t.get_text() for t in shown[-1].axes[1].get_xticklabels()]
    assert names == ["fp32", "fp16/frugal 2^16", "fp16/frugal 2^40"]
    c["precision"].value = "bf16"
    assert c["fp16 scaler"].disabled and c["init scale"].disabled


def test_format_explorer_reads_its_value_in_powers_of_ten_and_fits_the_readout():
    c = _controls(widgets.format_explorer("fp16", 1e-6))
    assert c["|x|"].readout_format == ".2e"                     # "1.00e-6"; ".3g" read 0.00000100, clipped


# ----------------------------------------------------------------------------- feedback on slow work

def test_progress_disables_the_controls_while_work_runs_and_advances_per_report():
    from frugal.widgets._common import Progress

    button, slider = W.Button(description="train"), W.IntSlider()
    progress = Progress([button, slider])
    seen = []
    with progress.running("training", 3) as p:
        seen.append((button.disabled, slider.disabled, button.description, progress.bar.value))
        p.on_report(0, "joined")
        p.on_report(1, ("gpipe", 4))
        seen.append((progress.bar.value, progress.status.value))
    assert seen[0] == (True, True, "training…", 0)
    assert seen[1] == (2, "2 of 3: rank 1 finished ('gpipe', 4)")
    assert not button.disabled and not slider.disabled and button.description == "train"
    assert progress.bar.value == 3 and progress.status.value.startswith("done in")
    with pytest.raises(RuntimeError):
        with progress.running("failing", 2):
            raise RuntimeError("boom")
    assert not button.disabled and progress.bar.bar_style == "danger"     # restored, and says it failed


def test_a_second_run_empties_the_bar_before_any_control_shows_busy():
    """The browser draws widget changes in the order they are made: were a control disabled first, the page
    would show a busy dashboard with the last run's full bar, a bar that seems to go back."""
    from frugal.widgets._common import Progress

    button = W.Button(description="train")
    progress = Progress([button])
    with progress.running("training", 2):
        pass
    assert progress.bar.value == 2                                   # the first run left the bar full
    events = []
    progress.bar.observe(lambda ch: events.append(("bar", ch["new"])), names="value")
    button.observe(lambda ch: events.append(("disabled", ch["new"])), names="disabled")
    with progress.running("training", 2):
        pass
    assert events.index(("bar", 0)) < events.index(("disabled", True)), events


def test_sharding_live_button_is_busy_while_the_ranks_run():
    seen = []

    def run_plans(world_size, modes, on_report):
        seen.append((button.disabled, button.description))
        for rank in range(world_size):
            on_report(rank, "joined")
        seen.append(bar.value)
        from matplotlib.figure import Figure
        return Figure()

    box = widgets.sharding_live(run_plans, world_sizes=(2,), modes=("ddp", "zero1"))
    button = box.children[0].children[2]
    bar = box.children[1].children[0]
    button.click()
    assert seen[0] == (True, "training…") and seen[1] == 2                 # short enough not to be clipped
    assert bar.max == 2 * (2 + 2) and not button.disabled


def test_data_parallel_trainer_moves_its_bar_as_each_rank_joins_and_finishes(monkeypatch, capsys):
    from frugal.widgets._common import Progress

    heard = []
    original = Progress.on_report
    monkeypatch.setattr(Progress, "on_report", lambda self, rank, msg: (heard.append((rank, msg)),
                                                                         original(self, rank, msg)))
    values = []
    original_step = Progress.step
    monkeypatch.setattr(Progress, "step", lambda self, note="": (original_step(self, note),
                                                                 values.append((self.bar.value, note))))
    box = widgets.data_parallel_trainer(preset("tiny"), steps=2, batch_size=4)
    bar, status = box.children[1].children                   # the progress line under the controls
    assert sorted(heard, key=str) == sorted([(0, "joined"), (0, ("step", 1)), (0, ("step", 2)), (0, "done"),
                                             (1, "joined"), (1, "done")], key=str)   # rank 0 reports its steps
    assert bar.value == bar.max == 2 + 2 * 2 + 2 and status.value.startswith("done in")  # reference, ranks, steps
    assert [v for v, _ in values] == list(range(1, bar.max + 1))          # one tick at a time, as the work goes
    assert values[0][1] == "the single-process reference ended step 1"
    assert "rank 0 ended step 2" in [note for _, note in values]
    assert not any(c.disabled for c in _controls(box).values() if hasattr(c, "disabled") and c is not bar)
    assert "largest loss gap" in capsys.readouterr().out


# ----------------------------------------------------------------------------- every control changes what is shown

def _another_value(control):
    """A value of the control other than its current one, inside its range (None: nothing to move)."""
    if isinstance(control, (W.Dropdown, W.RadioButtons, W.ToggleButtons, W.SelectionSlider)):
        values = [o[1] if isinstance(o, tuple) else o for o in control.options]
        if len(values) < 2:
            return None
        i = values.index(control.value)                 # the next option, as a person steps through them
        return values[i + 1] if i + 1 < len(values) else values[i - 1]
    if isinstance(control, W.Checkbox):
        return not control.value
    if isinstance(control, W.FloatLogSlider):
        up = control.value * control.base ** (4 * control.step)
        return up if up <= control.base ** control.max else control.value / control.base ** (4 * control.step)
    if isinstance(control, (W.IntSlider, W.FloatSlider)):
        step = control.step or 1
        return control.value + step if control.value + step <= control.max else control.value - step
    if isinstance(control, (W.FloatText, W.BoundedFloatText)):
        return control.value * 1.5 + 1
    return None


def _shown(monkeypatch, module, capsys):
    """What the dashboard module shows now: its printed text and a hash of each figure's pixels."""
    import hashlib

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    figures = _figures(monkeypatch, module)

    def now():
        text = capsys.readouterr().out
        pngs = []
        for fig in figures:
            if hasattr(fig, "savefig"):
                canvas = FigureCanvasAgg(fig)
                canvas.draw()
                pngs.append(hashlib.sha1(bytes(canvas.buffer_rgba())).hexdigest())
        figures.clear()
        return text, pngs
    return now


DASHBOARDS = {
    "cost_calculator": ("frugal.widgets.economics", lambda: widgets.cost_calculator()),
    "activation_meter": ("frugal.widgets.economics", lambda: widgets.activation_meter(TinyGPT(preset("tiny")), 8)),
    "format_explorer": ("frugal.widgets.precision", lambda: widgets.format_explorer("fp16", 1e-6)),
    "fp8_recipe_explorer": ("frugal.widgets.fp8", lambda: widgets.fp8_recipe_explorer()),
    "largest_batch_explorer": ("frugal.widgets.recompute",
                               lambda: widgets.largest_batch_explorer(preset("gpt2-small"), 1024, "H100", 124e6)),
    "sharding_explorer": ("frugal.widgets.parallel", lambda: widgets.sharding_explorer()),
    "layout_explorer": ("frugal.widgets.parallel", lambda: widgets.layout_explorer()),
    "checkpoint_slider": ("frugal.widgets.recompute", lambda: _checkpoint_slider()),
    "vector_add_explorer": ("frugal.widgets.kernels", lambda: widgets.vector_add_explorer(3000, "cpu")),
    "cross_entropy_memory_explorer": ("frugal.widgets.kernels", lambda: widgets.cross_entropy_memory_explorer(
        TinyGPT(preset("tiny")), "cpu", live_tokens=256)),
    "precision_dashboard": ("frugal.widgets.precision", lambda: widgets.precision_dashboard(
        "tiny", steps=2, batch_size=2, seq_len=16, loss_divisor=1.0)),
}


def _checkpoint_slider():
    import torch

    from frugal.data import synthetic_batch
    cfg = preset("tiny", n_layer=2)
    x, y = synthetic_batch(cfg.vocab_size, 2, 16, torch.Generator().manual_seed(0))
    return widgets.checkpoint_slider(TinyGPT(cfg), x, y)


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_every_control_of_an_estimator_dashboard_changes_what_it_shows(name, monkeypatch, capsys):
    """A control that moves and leaves the text and every figure as they were teaches nothing: each enabled
    control, moved to another value, must change the printed text or a figure's pixels."""
    import importlib

    module_name, make = DASHBOARDS[name]
    now = _shown(monkeypatch, importlib.import_module(module_name), capsys)
    box = make()
    before = now()
    assert before[0] or before[1], f"{name} shows nothing at first"
    still = []
    for description, control in _controls(box).items():
        value = None if getattr(control, "disabled", False) else _another_value(control)   # as it is now
        if value is None:
            continue
        control.value = value
        after = now()
        if after == before or not (after[0] or after[1]):
            still.append(description)
        before = after
    assert not still, f"{name}: moving {still} changed nothing on screen"
