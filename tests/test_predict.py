"""predict.ask / Guess.reveal: the factor between a guess and a measurement, choices, no guess, bad input."""
import math

import ipywidgets as W
import pytest
import torch

from frugal.widgets import predict
from test_ipywidgets7 import env7  # noqa: F401 - the fixture: a Python that imports ipywidgets 7.7.1


def test_a_number_guess_is_put_beside_the_measurement_with_the_factor():
    guess = predict.ask("Llama 2 70B on 2T tokens: how many FLOPs?", unit="FLOPs")
    assert isinstance(guess.box, W.Text) and guess.value is None
    guess.box.value = "1e24"                       # what typing into the box does
    r = guess.reveal(8.4e23)
    assert r.guess == 1e24 and r.measured == 8.4e23
    assert r.factor == pytest.approx(1e24 / 8.4e23, rel=1e-12)
    assert r.message == "your guess 1e+24 FLOPs, measured 8.4e+23 FLOPs: off by a factor 1.19 (too high)"


def test_the_factor_is_symmetric_and_counts_powers_of_ten():
    guess = predict.ask("how many?")
    guess.value = 2e21
    low = guess.reveal(8.4e23)
    assert low.factor == pytest.approx(420.0) and "too low, 2.6 powers of ten" in low.message
    guess.value = 8.4e23 * 420
    assert guess.reveal(8.4e23).factor == pytest.approx(420.0)


def test_close_exact_and_zero_or_negative_guesses():
    guess = predict.ask("what fraction?")
    guess.value = 0.2
    assert "within 5% (too low)" in guess.reveal(0.203).message
    guess.value = 4
    r = guess.reveal(4.0)
    assert r.factor == 1.0 and r.message.endswith("exactly right")
    guess.value = 0                              # no ratio to a zero: the difference instead
    r = guess.reveal(0.25)
    assert r.factor is None and r.message.endswith("off by 0.25")


@pytest.mark.parametrize("text, value", [("8.4e23", 8.4e23), ("10^24", 1e24), ("2**20", 2.0 ** 20),
                                         ("1,000", 1000.0), ("25%", 0.25), (" 3e12 FLOPs ", 3e12), (".5", 0.5)])
def test_the_box_reads_numbers_as_people_type_them(text, value):
    guess = predict.ask("how many?", unit="FLOPs")
    guess.box.value = text
    assert guess.value == pytest.approx(value, rel=1e-12)


def test_no_guess_says_so_and_still_shows_the_measurement():
    r = predict.ask("how many?", unit="bytes").reveal(4096)
    assert r.guess is None and r.factor is None
    assert r.message.startswith("no guess entered") and "measured 4096 bytes" in r.message


def test_the_label_says_where_the_number_comes_from():
    guess = predict.ask("7.5B parameters on 64 GPUs, ZeRO-3: GB per GPU?", unit="GB")
    guess.value = 2
    assert "your guess 2 GB, the estimator 1.88 GB: off by a factor 1.07" in guess.reveal(1.875, "the estimator").message
    with pytest.raises(ValueError, match="label="):
        guess.reveal(1.875, label="")


def test_unreadable_text_is_reported_not_raised():
    guess = predict.ask("how many?")
    guess.box.value = "lots"
    with pytest.raises(ValueError, match="could not read 'lots' as a number"):
        guess.value
    r = guess.reveal(3.0)                          # the measuring cell still runs and shows the number
    assert r.guess is None and "could not read 'lots'" in r.message and "measured 3" in r.message


def test_a_choice_is_right_or_wrong():
    guess = predict.ask("Is the T4 the cheapest per run?", choices=["yes", "no"])
    assert isinstance(guess.box, W.RadioButtons) and guess.value is None
    assert guess.reveal("no").message.startswith("no answer chosen")
    guess.box.value = "yes"                        # what clicking does
    r = guess.reveal("no")
    assert r.correct is False and r.message == "your answer 'yes', the answer 'no': wrong"
    guess.value = "no"
    assert guess.reveal("no").correct is True


def test_numbered_choices_name_the_label_nearest_the_measurement():
    guess = predict.ask("the sequence doubles: the bytes?", choices={"same": 1, "double": 2, "four times": 4})
    guess.value = "four times"
    r = guess.reveal(torch.tensor(2.06))           # nearest on a log scale: double
    assert r.correct is False and "measured 2.06 (double): wrong" in r.message
    guess.value = "double"
    assert guess.reveal(2.8).correct is True       # below sqrt(2 * 4) = 2.83: nearer double
    assert guess.reveal(2.9).correct is False      # above it: nearer four times


def test_bad_calls_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match="question="):
        predict.ask("  ")
    with pytest.raises(TypeError, match="unit="):
        predict.ask("how many?", unit=3)
    with pytest.raises(ValueError, match="at least two"):
        predict.ask("which?", choices=["yes"])
    with pytest.raises(TypeError, match="list of labels"):
        predict.ask("which?", choices="yes/no")
    with pytest.raises(TypeError, match="must be a number"):
        predict.ask("which?", choices={"same": "1", "double": 2})
    guess = predict.ask("which?", choices=["yes", "no"])
    with pytest.raises(ValueError, match="one of \\['yes', 'no'\\]"):
        guess.reveal("maybe")
    with pytest.raises(ValueError, match="not one of the choices"):
        guess.value = "maybe"
    number = predict.ask("how many?")
    with pytest.raises(TypeError, match="measured="):
        number.reveal("8.4e23")
    with pytest.raises(ValueError, match="not finite"):
        number.reveal(math.nan)


def test_a_reveal_shows_itself_once_as_html():
    guess = predict.ask("how many?")
    guess.value = 10
    r = guess.reveal(5)
    assert "off by a factor 2 (too high)" in r._repr_html_() and repr(r) == r.message


@pytest.mark.slow
def test_these_tests_pass_under_ipywidgets_7(env7):
    """Colab ships ipywidgets 7.7.1: Text, RadioButtons(index=None) and the VBox must work there too."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           __file__], cwd=Path(__file__).parents[1], env=env7, capture_output=True, text=True)
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-3000:]


def test_the_empty_box_suggests_no_magnitude_and_each_example_it_shows_reads_as_a_number():
    box = predict.ask("Forward + backward: the eager chain's bytes over the fused pair's?").box
    examples = box.placeholder.split(":", 1)[1].split(",")      # a ratio, a fraction, a percent, a count of FLOPs
    assert [predict.parse_number(e.strip(), "") for e in examples] == [4.0, 0.3, 0.25, 1e24]
