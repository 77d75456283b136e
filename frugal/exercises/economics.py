"""Lesson 00's exercises: the FLOPs of a training run and the bytes of mixed-precision Adam training."""
from __future__ import annotations

import math
import numbers

from frugal.estimate import estimate_state_memory
from frugal.estimate import training_flops as estimate_training_flops
from frugal.exercises._core import Exercise, Mismatch, attempt, expect, fmt

# (n_params, n_tokens): a toy, GPT-2 small on 10B tokens, GPT-3 (175B on 300B), odd and float sizes.
FLOPS_INPUTS = [(1, 1), (124_000_000, 10_000_000_000), (175e9, 300e9), (7, 13), (2.5e6, 3.3e8)]
STATE_INPUTS = [1, 7, 124_000_000, 175_000_000_000]


def training_flops(n_params, n_tokens):
    """FLOPs to train n_params weights on n_tokens tokens: 2 per weight and token forward, 4 backward (6·N·D)."""
    return 6.0 * n_params * n_tokens


def mixed_adam_state_bytes(n_params):
    """Bytes per GPU of mixed-precision Adam: 2 + 2 (16-bit weights, gradients) + 4 + 4 + 4 (fp32 master, m, v)."""
    weights, gradients = 2 * n_params, 2 * n_params     # fp16/bf16 copies the matmuls use
    master, adam_m, adam_v = 4 * n_params, 4 * n_params, 4 * n_params   # fp32: what the optimizer updates
    return weights + gradients + master + adam_m + adam_v


def _number(value, what: str, input: str) -> float:
    expect(isinstance(value, numbers.Real) and not isinstance(value, bool),
           f"it returned {type(value).__name__} {value!r}, not a number", input=input,
           hint=f"return the {what} as a Python number (float(...) of a tensor)")
    return float(value)


_FLOPS_RATIOS = {1 / 3: "counted only the forward pass (2·N·D): backward costs twice the forward",
                 2 / 3: "counted only the backward pass (4·N·D): add the forward's 2·N·D",
                 1 / 6: "counted one FLOP per weight and token: a multiply-add is 2 FLOPs, forward and backward 3 passes",
                 2.0: "counted 12·N·D: each multiply-add is 2 FLOPs, and forward + backward is 3 matmul passes, not 6"}


def check_training_flops(candidate) -> str:
    for n, d in FLOPS_INPUTS:
        inp = f"n_params={fmt(n)}, n_tokens={fmt(d)}"
        got = _number(attempt(candidate, n, d, input=inp), "FLOPs", inp)
        want = estimate_training_flops(n, d)
        if not math.isclose(got, want, rel_tol=1e-9):
            ratio = got / want
            why = next((h for r, h in _FLOPS_RATIOS.items() if math.isclose(ratio, r, rel_tol=1e-6)),
                       f"got/expected = {ratio:.4g}: the rule is 6 FLOPs per parameter per token")
            raise Mismatch("differs from the 6·N·D rule", input=inp, expected=f"{want:.6g}", got=f"{got:.6g}",
                           hint=why)
    return f"{len(FLOPS_INPUTS)} sizes, 6·N·D (Kaplan et al. 2020)"


_BYTES_HINTS = {12: "12 bytes is the fp32 master weights and Adam's m and v: add the 16-bit weights and gradients",
                8: "8 bytes is Adam's two moments alone: add the weights, the gradients and the fp32 master copy",
                4: "4 bytes is one fp32 copy: mixed-precision training holds five tensors per parameter",
                20: "20 bytes: the gradients here are 16-bit (2 bytes), not fp32",
                18: "18 bytes: count 2 + 2 + 4 + 4 + 4 (no separate fp32 gradient)",
                14: "14 bytes: one of the three fp32 tensors is missing (master weights, m, v)"}


def check_mixed_adam_state_bytes(candidate) -> str:
    for n in STATE_INPUTS:
        inp = f"n_params={n:,}"
        got = _number(attempt(candidate, n, input=inp), "bytes", inp)
        want = estimate_state_memory(n, "mixed", "adam").total
        expect(float(got).is_integer(), f"it returned {got!r}: bytes are a whole number", input=inp,
               hint="every term is a whole number of bytes per parameter times n_params")
        if got != want:
            per = got / n
            raise Mismatch("differs from the ZeRO paper's 16 bytes per parameter", input=inp,
                           expected=f"{int(want):,} bytes (16 per parameter)", got=f"{int(got):,} bytes ({per:g} per parameter)",
                           hint=_BYTES_HINTS.get(per, "2 (16-bit weights) + 2 (16-bit gradients) + 4 (fp32 master) "
                                                      "+ 4 (Adam m) + 4 (Adam v)"))
    return "16 bytes per parameter (Rajbhandari et al. 2020, sec. 3.1)"


EXERCISES = [
    Exercise("training_flops", "00_gpu_economics", "training_flops(n_params, n_tokens) -> float",
             check_training_flops, training_flops,
             ("Count the multiply-adds one token costs going forward through N weights, then backward.",
              "Forward: one multiply-add (2 FLOPs) per weight per token, so 2·N. Backward computes gradients for "
              "both the activations and the weights: twice the forward.",
              "return (2 + 4) * n_params * n_tokens"), needs=""),
    Exercise("mixed_adam_state_bytes", "00_gpu_economics", "mixed_adam_state_bytes(n_params) -> int",
             check_mixed_adam_state_bytes, mixed_adam_state_bytes,
             ("List every tensor that has one value per parameter during mixed-precision training with Adam.",
              "16-bit weights and gradients for the matmuls; in fp32 the master weights Adam updates and its two "
              "moments m and v.",
              "return (2 + 2 + 4 + 4 + 4) * n_params"), needs=""),
]
