"""Lesson 01's fp8 exercises: the per-tensor scale, and the saturating cast, checked against torch's float8 casts."""
from __future__ import annotations

import torch

from frugal.exercises._core import Exercise, Mismatch, attempt, expect
from frugal.fp8 import compute_scale, quantize

FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_scale(x, dtype):
    """fp8_max / max|x| as a float32 0-d tensor: 1 for an all-zero x, capped at float32's max (never inf)."""
    amax = x.abs().max().float()                                         # the largest magnitude, either sign
    scale = (torch.finfo(dtype).max / amax).clamp(max=torch.finfo(torch.float32).max)
    return torch.where(amax > 0, scale, torch.ones_like(scale))          # zeros cast exactly at any scale


def fp8_saturating_cast(x, scale, dtype):
    """x·scale in float32, clamped to ±fp8_max, cast to dtype: never inf or NaN from a value out of range."""
    m = torch.finfo(dtype).max
    return (x.float() * scale).clamp(-m, m).to(dtype)


def _describe(x: torch.Tensor) -> str:
    return f"{x.dtype} tensor of {x.numel()} values, max|x| = {x.float().abs().max().item():.4g}"


# ----------------------------------------------------------------------------- fp8_scale

def _scale_cases() -> list[tuple[str, torch.Tensor, torch.dtype, str]]:
    """(what, x, format, hint) from plain to awkward, so the first failure is the most telling."""
    gen = torch.Generator().manual_seed(0)
    plain = torch.randn(1000, generator=gen) * 3
    return [
        ("ordinary values, e4m3", plain, FORMATS["e4m3"],
         "the scale maps the largest |x| onto the format's largest value: torch.finfo(dtype).max / amax"),
        ("ordinary values, e5m2", plain * 1e-3, FORMATS["e5m2"], "e5m2's largest value is 57344, e4m3's 448"),
        ("a negative value is the largest", torch.tensor([-50.0, 3.0, 1.0]), FORMATS["e4m3"],
         "amax is the largest magnitude: take x.abs() before the max, or -50 goes unseen"),
        ("bf16 input", (torch.randn(256, generator=gen) * 40).bfloat16(), FORMATS["e4m3"],
         "compute the scale in float32 (amax.float()) whatever x's dtype"),
        ("an all-zero tensor", torch.zeros(64), FORMATS["e4m3"],
         "amax = 0 would give inf: an all-zero tensor casts exactly at any scale, so return 1 (torch.where)"),
        ("a tiny amax (a float32 subnormal)", torch.tensor([1e-42, -5e-43]), FORMATS["e4m3"],
         "448 / 1e-42 overflows float32 to inf: clamp the scale to torch.finfo(torch.float32).max"),
    ]


def check_fp8_scale(candidate) -> str:
    for what, x, dtype, hint in _scale_cases():
        got = attempt(candidate, x.clone(), dtype, input=f"{what}: {_describe(x)}")
        expect(isinstance(got, torch.Tensor) and got.numel() == 1 and got.dtype == torch.float32,
               "it must return one float32 value as a tensor", input=what,
               got=f"{type(got).__name__} {getattr(got, 'dtype', '')}", hint="return a float32 0-d tensor")
        want = compute_scale(x, dtype, check=False)
        if not torch.equal(got.reshape(()).view(torch.int32), want.view(torch.int32)):
            if x.abs().max() > 0 and torch.isclose(got.reshape(()) * want, torch.tensor(1.0), rtol=1e-3):
                hint = "that is amax / fp8_max, the inverse: the scale multiplies x up to the format's max"
            raise Mismatch(f"differs from the per-tensor scale on {what}", input=_describe(x),
                           expected=f"{want.item()!r}", got=f"{got.reshape(()).item()!r}", hint=hint)
    return "bit for bit as fp8_max / amax, zeros and a tiny amax included"


# ----------------------------------------------------------------------------- fp8_saturating_cast

def _cast_cases() -> list[tuple[str, torch.Tensor, float, torch.dtype, str]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4096, generator=gen) * 10.0 ** (torch.rand(4096, generator=gen) * 3 - 1.5)   # |x| < 448
    return [
        ("values in range, e4m3", x, 1.0, FORMATS["e4m3"], "multiply by the scale, then cast: (x * scale).to(dtype)"),
        ("values in range, e5m2, scale 4", x, 4.0, FORMATS["e5m2"], "multiply by scale (not divide)"),
        ("values beyond e4m3's 448", torch.tensor([500.0, -1e4, 448.0, 464.0, 3.0]), 1.0, FORMATS["e4m3"],
         "e4m3 has no inf: beyond 448 torch's cast gives NaN or 448 depending on its version and device; clamp "
         "x·scale to ±448 before the cast so it never depends on that"),
        ("values beyond e5m2's 57344", torch.tensor([6e4, -1e6, 57344.0, 1.0]), 1.0, FORMATS["e5m2"],
         "a plain cast to e5m2 gives inf beyond 57344: clamp to ±torch.finfo(dtype).max first"),
        ("bf16 input with a scale", (torch.randn(4096, generator=gen) * 3).bfloat16(), 1.37, FORMATS["e4m3"],
         "x·scale in bf16 rounds once to bf16 and again to fp8: multiply in float32 (x.float() * scale)"),
        ("zeros and signed zeros", torch.tensor([0.0, -0.0, 1.0]), 2.0, FORMATS["e4m3"], "zeros stay zeros"),
    ]


def check_fp8_saturating_cast(candidate) -> str:
    for what, x, s, dtype, hint in _cast_cases():
        scale = torch.tensor(s)
        got = attempt(candidate, x.clone(), scale, dtype, input=f"{what}: {_describe(x)}, scale {s}")
        expect(isinstance(got, torch.Tensor) and got.dtype == dtype and got.shape == x.shape,
               f"it must return a {dtype} tensor of x's shape", input=what,
               got=f"{type(got).__name__} {getattr(got, 'dtype', '')} {tuple(getattr(got, 'shape', ()))}",
               hint="end with .to(dtype)")
        want = quantize(x, dtype, scale)                 # frugal.fp8's: within range, exactly torch's own cast
        same = got.view(torch.uint8) == want.view(torch.uint8)
        if not bool(same.all()):
            i = int((~same).nonzero()[0])
            raise Mismatch(f"differs from torch's float8 cast on {what} ({int((~same).sum())} of {x.numel()})",
                           input=f"x = {x[i].item()!r}, scale = {s}", expected=f"{want[i].float().item()!r}",
                           got=f"{got[i].float().item()!r}", hint=hint)
    return "bit for bit as torch's float8 casts, saturating at ±max, bf16 input multiplied in float32"


EXERCISES = [
    Exercise("fp8_scale", "01_mixed_precision", "fp8_scale(x: tensor, dtype: float8 dtype) -> float32 0-d tensor",
             check_fp8_scale, fp8_scale,
             ("fp8 keeps few values near 0 and none beyond its max: pick a factor that moves x's largest value "
              "onto the format's largest.",
              "amax = max|x| in float32; the scale is torch.finfo(dtype).max / amax. Mind two edge cases: amax = 0 "
              "and an amax so small that the division overflows.",
              "amax = x.abs().max().float(); scale = (torch.finfo(dtype).max / amax).clamp(max=torch.finfo("
              "torch.float32).max); return torch.where(amax > 0, scale, torch.ones_like(scale))")),
    Exercise("fp8_saturating_cast", "01_mixed_precision",
             "fp8_saturating_cast(x: tensor, scale: float32 tensor, dtype: float8 dtype) -> float8 tensor",
             check_fp8_saturating_cast, fp8_saturating_cast,
             ("torch's cast does the rounding; your part is what happens before it.",
              "Multiply by the scale in float32, then keep every value within ±torch.finfo(dtype).max: torch's "
              "cast gives NaN (e4m3) or inf (e5m2) beyond it.",
              "m = torch.finfo(dtype).max; return (x.float() * scale).clamp(-m, m).to(dtype)")),
]
