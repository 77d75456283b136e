"""The one formatter: each quantity reads one way, with its unit, and bad input names the fix."""
import pytest

from frugal import plots
from frugal.units import human_bytes, human_count, human_dollars, human_flops, human_rate, human_time


@pytest.mark.parametrize("n, binary, text", [
    (512, True, "512 B"), (3 * 2 ** 20, True, "3 MiB"), (482_304, True, "471 KiB"), (2 ** 50, True, "1 PiB"),
    (1023.9, True, "1 KiB"), (79e9, False, "79 GB"), (1.6e9, False, "1.6 GB"), (0, True, "0 B")])
def test_bytes_carry_their_unit_and_three_significant_digits(n, binary, text):
    assert human_bytes(n, binary=binary) == text


def test_plots_speak_the_same_bytes():
    assert plots.human_bytes is human_bytes


@pytest.mark.parametrize("n, text", [
    (437_760, "438 K"), (834_304, "834 K"), (124e6, "124 M"), (320e9, "320 billion"), (7e9, "7 billion"),
    (1.7e12, "1.7 trillion"), (512, "512"), (999.6, "1 K"), (12_345, "12.3 K")])
def test_counts_spell_out_billion_so_they_never_read_as_bytes(n, text):
    assert human_count(n) == text


def test_a_count_takes_its_unit():
    assert human_count(437_760, "parameters") == "438 K parameters"


@pytest.mark.parametrize("s, text", [
    (0.0123, "12.3 ms"), (3e-5, "30 µs"), (1e-7, "100 ns"), (4.2, "4.2 s"), (5400, "1.5 h"), (90, "1.5 min"),
    (12.4 * 86400, "12.4 days"), (0, "0 s")])
def test_times_pick_the_unit_a_person_would(s, text):
    assert human_time(s) == text


def test_flops_dollars_and_bandwidth():
    assert human_flops(8.4e23) == "8.4e23 FLOPs"                  # Llama 2 70B's 6ND
    assert human_flops(312e12, per_second=True) == "312 TFLOP/s"   # an A100's bf16 peak
    assert human_dollars(0.0712) == "$0.0712"
    assert human_dollars(1_234_567) == "$1.23 M"
    assert human_dollars(2.1e9) == "$2.1 billion"
    assert human_dollars(4_321.4) == "$4,321"
    assert human_rate(2.99e12) == "2.99 TB/s"


def test_bad_input_names_the_fix():
    with pytest.raises(TypeError, match="pass an int or a float"):
        human_bytes("12")
    with pytest.raises(ValueError, match="finite"):
        human_count(float("nan"))
