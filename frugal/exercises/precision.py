"""Lesson 01's exercises: round fp32 to bf16 with bit operations, and the loss scaler's update rule."""
from __future__ import annotations

import math
import random

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from frugal.exercises._core import Exercise, Mismatch, attempt, expect, fmt


def round_to_bf16(x):
    """x rounded to the nearest bf16 value, ties to even, kept in float32: bf16 is fp32's top 16 bits."""
    bits = x.view(torch.int32)                          # the same 32 bits, read as an integer
    lsb = (bits >> 16) & 1                              # last bit bf16 keeps: a tie goes to the even neighbour
    rounded = (bits + 0x7FFF + lsb) & ~0xFFFF           # add half a bf16 step (less one), clear the 16 low bits
    return torch.where(torch.isnan(x), x, rounded.view(torch.float32))   # a carry could turn NaN into inf


def loss_scaler_update(scale, growth_tracker, found_inf, growth_factor=2.0, backoff_factor=0.5,
                       growth_interval=2000):
    """GradScaler's update: back off after an inf/NaN gradient, grow after growth_interval clean steps in a row."""
    if found_inf:
        return scale * backoff_factor, 0
    if growth_tracker + 1 == growth_interval:
        grown = float(torch.tensor(scale * growth_factor, dtype=torch.float32))   # the scale lives in float32
        return (grown if math.isfinite(grown) else scale), 0                        # never grow to inf
    return scale, growth_tracker + 1


# ----------------------------------------------------------------------------- round_to_bf16

def _bits(values: list[int]) -> torch.Tensor:
    """float32 tensor with these bit patterns (given as unsigned 32-bit integers)."""
    return torch.tensor([v - (1 << 32) if v >= 1 << 31 else v for v in values], dtype=torch.int32).view(torch.float32)


def _bf16_cases() -> list[tuple[str, torch.Tensor, str]]:
    """(what, inputs, hint) from plain values to the awkward ones, so the first failure is the most telling."""
    gen = torch.Generator().manual_seed(0)
    ordinary = torch.cat([torch.randn(500, generator=gen) * 10.0 ** e for e in (-30, -3, 0, 3, 30)]).view(50, 50)
    return [
        ("ordinary values", ordinary,
         "round to the nearest bf16: add 0x7FFF (plus the tie bit) to the bits before clearing the low 16"),
        ("ties (exactly halfway between two bf16 values)", _bits([0x3F808000, 0x3F818000, 0x40008000, 0x40018000,
                                                                 0x3F808001, 0x3F807FFF, 0x3F81FFFF]),
         "a tie goes to the neighbour whose last kept bit (bit 16) is 0: add 0x7FFF + ((bits >> 16) & 1)"),
        ("negative values", _bits([0xBF808000, 0xBF818000, 0xBF808001, 0xC0490FDB, 0xBDCCCCCD]),
         "the sign is bit 31 and rounding works on the magnitude bits: integer ops on the raw pattern do it"),
        ("signed zeros", _bits([0x00000000, 0x80000000]), "-0.0 keeps its sign bit (0x80000000)"),
        ("subnormals", _bits([0x00000001, 0x80000001, 0x00008000, 0x00018000, 0x007FFFFF, 0x807FFFFF, 0x00400000]),
         "bf16 has fp32's exponent, so subnormals round with the same bit operations (the largest becomes the "
         "smallest normal)"),
        ("values that round to inf", _bits([0x7F7FFFFF, 0x7F7F8000, 0xFF7FFFFF, 0x7F7F7FFF]),
         "above bf16's largest finite value the carry reaches the exponent and gives inf, as torch does"),
        ("infinities", _bits([0x7F800000, 0xFF800000]), "inf stays inf"),
        ("NaN", _bits([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F80FFFF]),
         "NaN must stay NaN (any NaN): adding the rounding bias can carry its payload into inf or wrap it to "
         "-0; keep x where torch.isnan(x)"),
        ("random bit patterns", torch.randint(-2 ** 31, 2 ** 31 - 1, (4096,), generator=gen,
                                              dtype=torch.int32).view(torch.float32), "see the first values above"),
    ]


class _Bf16Spy(TorchDispatchMode):
    """Records any op that produces a bfloat16 tensor (the check refuses to let torch do the rounding)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if any(isinstance(o, torch.Tensor) and o.dtype == torch.bfloat16 for o in outs):
            self.ops.append(str(func))
        return out


def _hex(v: torch.Tensor) -> str:
    """A 0-d float32 tensor as its bit pattern and value: 0x3F808000 (1.00390625)."""
    return f"0x{int(v.view(torch.int32)) & 0xFFFFFFFF:08X} ({v.item()!r})"


def check_round_to_bf16(candidate) -> str:
    for what, x, hint in _bf16_cases():
        original = x.clone()
        with _Bf16Spy() as spy:
            got = attempt(candidate, x, input=f"{what}, shape {tuple(x.shape)}")
        expect(not spy.ops, f"it made a bfloat16 tensor ({spy.ops[0] if spy.ops else ''})", input=what,
               hint="round with integer operations on x.view(torch.int32); .to(torch.bfloat16) is what the check "
                    "compares against")
        expect(isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == x.shape,
               "it must return a float32 tensor of the input's shape", input=what,
               expected=f"float32 tensor of shape {tuple(x.shape)}",
               got=f"{type(got).__name__} {getattr(got, 'dtype', '')} {tuple(getattr(got, 'shape', ()))}",
               hint="return rounded_bits.view(torch.float32)")
        expect(torch.equal(x.view(torch.int32), original.view(torch.int32)), "it changed its input in place",
               input=what, hint="compute into new tensors: bits + ... makes one")
        want = x.to(torch.bfloat16).float()
        same = (got.view(torch.int32) == want.view(torch.int32)) | (torch.isnan(got) & torch.isnan(want))
        if not bool(same.all()):
            i = int((~same).flatten().nonzero()[0])
            xi, wi, gi = x.flatten()[i], want.flatten()[i], got.flatten()[i]
            truncated = (xi.view(torch.int32) & ~0xFFFF).view(torch.float32)
            if what == "ordinary values" and gi.view(torch.int32) == truncated.view(torch.int32):
                hint = "that is x with its low 16 bits cleared (truncation, toward zero): round to nearest instead"
            raise Mismatch(f"differs from x.to(torch.bfloat16) on {what} ({int((~same).sum())} of {x.numel()})",
                           input=_hex(xi), expected=_hex(wi), got=_hex(gi), hint=hint)
    return "bit for bit as x.to(torch.bfloat16).float(), ties, subnormals, inf and NaN included"


# ----------------------------------------------------------------------------- loss_scaler_update

def _torch_update(scale: float, tracker: int, found: bool, growth: float, backoff: float,
                  interval: int) -> tuple[float, int]:
    """One step of torch.amp.GradScaler.update, through the kernel it calls (torch._amp_update_scale_)."""
    s = torch.tensor(scale, dtype=torch.float32)
    t = torch.tensor(tracker, dtype=torch.int32)
    torch._amp_update_scale_(s, t, torch.tensor(float(found)), growth, backoff, interval)
    return s.item(), int(t.item())


# (start scale, start tracker, growth_factor, backoff_factor, growth_interval, P(overflow), steps); None = defaults
SEQUENCES = [(65536.0, 1990, None, None, None, 0.05, 40), (1024.0, 0, 2.0, 0.5, 1, 0.3, 150),
             (1024.0, 0, 2.0, 0.5, 3, 0.5, 150), (8.0, 0, 4.0, 0.25, 5, 0.2, 150),
             (3.0, 0, 1.1, 0.6, 2, 0.3, 150), (2.0 ** 125, 0, 2.0, 0.5, 2, 0.0, 8)]


def _why(found: bool, tracker: int, interval: int, want: float, scale: float) -> str:
    if found:
        return "after an inf/NaN gradient (found_inf) the scale is multiplied by backoff_factor, the tracker reset to 0"
    if tracker + 1 == interval and want == scale:
        return "growing would overflow float32 (the scale's dtype) to inf: torch keeps the scale, resets the tracker"
    if tracker + 1 == interval:
        return ("this is the growth_interval-th clean step in a row (growth_tracker + 1 == growth_interval): "
                "multiply by growth_factor and reset the tracker to 0")
    return "a clean step below growth_interval only counts: scale unchanged, growth_tracker + 1"


def check_loss_scaler_update(candidate) -> str:
    rng, steps = random.Random(0), 0
    for scale, tracker, growth, backoff, interval, p, n in SEQUENCES:
        kwargs = {} if growth is None else dict(growth_factor=growth, backoff_factor=backoff, growth_interval=interval)
        g, b, k = (2.0, 0.5, 2000) if growth is None else (growth, backoff, interval)
        for step in range(n):
            found = rng.random() < p
            inp = f"loss_scaler_update({fmt(scale)}, {tracker}, {found}" + "".join(
                f", {key}={fmt(v)}" for key, v in kwargs.items()) + ")" + (" (default factors)" if not kwargs else "")
            out = attempt(candidate, scale, tracker, found, input=inp, **kwargs)
            expect(isinstance(out, (tuple, list)) and len(out) == 2, "it must return a pair (scale, growth_tracker)",
                   input=inp, got=repr(out), hint="return new_scale, new_growth_tracker")
            want = _torch_update(scale, tracker, found, g, b, k)
            got = (float(out[0]), int(out[1]))
            if not (math.isclose(got[0], want[0], rel_tol=1e-6) and got[1] == want[1]):
                raise Mismatch(f"differs from torch.amp.GradScaler's update at step {step} of a sequence",
                               input=inp, expected=f"({fmt(want[0])}, {want[1]})", got=f"({fmt(got[0])}, {got[1]})",
                               hint=_why(found, tracker, k, want[0], scale))
            scale, tracker = want           # go on from torch's state, so each step is judged on its own
            steps += 1
    return f"{steps} steps against torch._amp_update_scale_ (scale compared to rel. 1e-6: float32 rounding)"


EXERCISES = [
    Exercise("round_to_bf16", "01_mixed_precision", "round_to_bf16(x: float32 tensor) -> float32 tensor",
             check_round_to_bf16, round_to_bf16,
             ("bf16 is the top 16 bits of an fp32 number: look at x.view(torch.int32).",
              "Clearing the low 16 bits truncates. To round to nearest, add half of the dropped range first; on an "
              "exact tie, round to the neighbour whose bit 16 is 0 (even).",
              "bits = x.view(torch.int32); lsb = (bits >> 16) & 1; rounded = (bits + 0x7FFF + lsb) & ~0xFFFF; keep "
              "NaN with torch.where(torch.isnan(x), x, rounded.view(torch.float32))")),
    Exercise("loss_scaler_update", "01_mixed_precision",
             "loss_scaler_update(scale, growth_tracker, found_inf, growth_factor=2.0, backoff_factor=0.5, "
             "growth_interval=2000) -> (scale, growth_tracker)",
             check_loss_scaler_update, loss_scaler_update,
             ("Two cases: this step's gradients overflowed, or they did not.",
              "Overflow: shrink the scale, restart the count. Clean: count it; the growth_interval-th clean step in "
              "a row grows the scale and restarts the count.",
              "if found_inf: return scale * backoff_factor, 0; if growth_tracker + 1 == growth_interval: return "
              "scale * growth_factor, 0 (unless that is inf in float32); else return scale, growth_tracker + 1"),
             needs="import math\n\nimport torch"),
]
