import math

import pytest
import torch
from matplotlib.figure import Figure

from frugal import numerics, plots
from frugal.model import TinyGPT, preset

TABLE = numerics.format_table()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@pytest.mark.parametrize("name", list(DTYPES))
def test_table_matches_torch_finfo(name):
    fmt, fi = TABLE[name], torch.finfo(DTYPES[name])
    assert (fmt.bits, fmt.max, fmt.smallest_normal, fmt.eps) == (fi.bits, fi.max, fi.smallest_normal, fi.eps)
    assert fmt.exponent_bits + fmt.mantissa_bits + 1 == fi.bits


def test_exponent_and_mantissa_bits_are_the_standard_ones():
    bits = {n: (f.exponent_bits, f.mantissa_bits) for n, f in TABLE.items()}
    assert bits == {"fp32": (8, 23), "tf32": (8, 10), "fp16": (5, 10), "bf16": (8, 7),
                    "fp8_e4m3": (4, 3), "fp8_e5m2": (5, 2)}


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16"])
def test_smallest_subnormal_is_the_next_float_after_zero(name):
    zero = torch.zeros((), dtype=DTYPES[name])
    assert TABLE[name].smallest_subnormal == torch.nextafter(zero, torch.ones_like(zero)).item()


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_smallest_subnormal_survives_and_half_of_it_rounds_to_zero(name):
    s = TABLE[name].smallest_subnormal
    assert numerics.round_trip(torch.tensor([s]), name).item() == s
    assert numerics.round_trip(torch.tensor([s / 2]), name).item() == 0.0    # a tie, rounded to even (0)


def test_tf32_table_is_fp32_range_with_fp16_precision():
    tf32, fp32, fp16 = TABLE["tf32"], TABLE["fp32"], TABLE["fp16"]
    assert (tf32.smallest_normal, tf32.eps, tf32.bits) == (fp32.smallest_normal, fp16.eps, 19)
    assert tf32.max == (2 - 2 ** -10) * 2.0 ** 127


def test_tf32_rounding_equals_fp16_rounding_where_fp16_is_normal():
    """Same 10 mantissa bits and round-to-nearest-even: inside fp16's normal range the two must agree exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.exp2(torch.empty(20000).uniform_(-14, 15, generator=g)) * torch.randn(20000, generator=g).sign()
    assert torch.equal(numerics.round_tf32(x), x.half().float())


def test_tf32_ties_go_to_even_and_specials_are_kept():
    x = torch.tensor([1 + 2 ** -11, 1 + 3 * 2 ** -11, float("inf"), float("nan")])
    out = numerics.round_tf32(x)
    assert out[:3].tolist() == [1.0, 1 + 2 ** -9, float("inf")] and math.isnan(out[3])


def test_underflow_subnormal_and_overflow_fractions_of_a_known_tensor_are_exact():
    x = torch.tensor([2.0 ** -30, 2.0 ** -25, 2.0 ** -20, 1.0, 65519.0, 65520.0, 0.0, float("inf")])
    s = numerics.format_stats(x, "fp16")
    # 2^-30 and 2^-25 (a tie with 2^-24, to even) round to 0; 2^-20 is subnormal; 65519 rounds to 65504,
    # 65520 is the overflow threshold; the zero and the inf input count in none of the four
    assert (s.underflow, s.subnormal, s.normal, s.overflow) == (2 / 8, 1 / 8, 2 / 8, 1 / 8)
    b = numerics.format_stats(x, "bf16")
    assert (b.underflow, b.subnormal, b.overflow, b.normal) == (0.0, 0.0, 0.0, 6 / 8)


def test_fp8_e4m3_overflow_is_counted_even_though_torch_saturates():
    x = torch.tensor([1000.0, 448.0, 463.0, 464.0])
    assert numerics.round_trip(x, "fp8_e4m3")[0].item() == 448.0       # torch's cast saturates
    assert numerics.format_stats(x, "fp8_e4m3").overflow == 2 / 4       # 1000 and the threshold 464


@pytest.mark.parametrize("name", list(TABLE))
def test_round_trip_error_in_the_normal_range_is_at_most_half_an_eps(name):
    fmt = TABLE[name]
    g = torch.Generator().manual_seed(1)
    lo, hi = math.log2(fmt.smallest_normal), math.log2(fmt.max) - 1
    x = torch.exp2(torch.empty(5000, dtype=torch.float64).uniform_(max(lo, -120), min(hi, 120), generator=g))
    s = numerics.format_stats(x, fmt)           # x is float64, so fp32 rounds too
    assert s.normal == 1.0
    assert s.max_rel_error <= fmt.eps / 2


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="floating-point"):
        numerics.round_trip(torch.arange(3), "fp16")
    with pytest.raises(ValueError, match="pick one of"):
        numerics.get_format("fp4")


def test_gradient_magnitudes_of_a_real_step_and_their_histogram():
    torch.manual_seed(0)
    model = TinyGPT(preset("tiny"))
    with pytest.raises(ValueError, match="backward"):
        numerics.gradient_magnitudes(model)
    x = torch.randint(256, (2, 16))
    model(x, x)[1].backward()
    g = numerics.gradient_magnitudes(model)
    assert g.numel() == sum(p.numel() for p in model.parameters())
    assert isinstance(plots.gradient_histogram(g, TABLE), Figure)
    assert isinstance(plots.format_ranges(TABLE, value=1e-6, highlight="fp16"), Figure)
    rows = numerics.stats_table(g)
    assert [r["format"] for r in rows] == list(TABLE)
    assert rows[0]["underflow"] == 0.0                                 # fp32 grads round-trip through fp32
