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
    first = capsys.readouterr().out
    assert "tokens/s" in first and "estimator" in first and "US$ per billion tokens" in first
    controls = _controls(box)
    controls["parallel"].value = "zero2"
    controls["precision"].value = "fp16"                       # fp16 under ZeRO: refused with the fix, no launch
    assert "not a valid plan" in capsys.readouterr().out
