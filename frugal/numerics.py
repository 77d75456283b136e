"""Number formats of training: fp32, tf32, fp16, bf16, fp8 (e4m3, e5m2), read from torch, never typed by hand.

A float with e exponent bits and m mantissa bits stores (1 + f/2^m)·2^k for normals and (f/2^m)·2^kmin
for subnormals (IEEE 754-2019, sec. 3.4). Its range decides what overflows or underflows; m decides
the rounding error, at most eps/2 relative in the normal range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Format:
    name: str
    dtype: torch.dtype | None  # torch dtype to round through; None for tf32 (rounded by mantissa, see round_trip)
    bits: int                  # bits of storage (tf32 lives in 32-bit registers but uses 19)
    exponent_bits: int
    mantissa_bits: int         # stored fraction bits (the leading 1 is implicit)
    max: float                 # largest finite value
    smallest_normal: float     # 2^kmin: below it values are subnormal
    smallest_subnormal: float  # 2^(kmin - m): half of it and less round to zero
    eps: float                 # 2^-m: gap between 1 and the next value

    @property
    def overflow_threshold(self) -> float:
        """|x| at or above this rounds past max: max + ulp(max)/2, with ulp(max) = 2^(floor(log2 max) - m)."""
        return self.max + 2.0 ** (math.floor(math.log2(self.max)) - self.mantissa_bits) / 2

    def as_dict(self) -> dict:
        return {"format": self.name, "bits": self.bits, "exponent bits": self.exponent_bits,
                "mantissa bits": self.mantissa_bits, "max": self.max, "smallest normal": self.smallest_normal,
                "smallest subnormal": self.smallest_subnormal, "eps": self.eps}


def _from_finfo(name: str, dtype: torch.dtype) -> Format:
    fi = torch.finfo(dtype)
    m = round(-math.log2(fi.eps))
    return Format(name, dtype, fi.bits, fi.bits - 1 - m, m, float(fi.max), float(fi.smallest_normal),
                  float(fi.smallest_normal) * float(fi.eps), float(fi.eps))


def _tf32() -> Format:
    """TF32 = fp32's 8 exponent bits with fp16's 10 mantissa bits (NVIDIA A100 whitepaper, 'TF32')."""
    f32, f16 = torch.finfo(torch.float32), torch.finfo(torch.float16)
    m = round(-math.log2(f16.eps))
    e = f32.bits - 1 - round(-math.log2(f32.eps))
    emax = math.floor(math.log2(f32.max))
    return Format("tf32", None, 1 + e + m, e, m, (2.0 - float(f16.eps)) * 2.0 ** emax,
                  float(f32.smallest_normal), float(f32.smallest_normal) * float(f16.eps), float(f16.eps))


def format_table() -> dict[str, Format]:
    """Every format the lesson compares, keyed by name, computed from torch.finfo and torch's float8 dtypes."""
    table = {"fp32": _from_finfo("fp32", torch.float32), "tf32": _tf32(),
             "fp16": _from_finfo("fp16", torch.float16), "bf16": _from_finfo("bf16", torch.bfloat16)}
    if hasattr(torch, "float8_e4m3fn"):  # torch >= 2.1
        table["fp8_e4m3"] = _from_finfo("fp8_e4m3", torch.float8_e4m3fn)
        table["fp8_e5m2"] = _from_finfo("fp8_e5m2", torch.float8_e5m2)
    return table


def get_format(name: str) -> Format:
    table = format_table()
    if name not in table:
        raise ValueError(f"unknown format {name!r}: pick one of {list(table)}")
    return table[name]


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to tf32's 10 mantissa bits, nearest-even on the bit pattern (inf and NaN kept).

    Tensor cores may convert differently in the last bit (some truncate); the range and precision are the same.
    """
    x = x.to(torch.float32)
    bits = x.view(torch.int32)
    drop = 23 - 10                                        # fp32 fraction bits tf32 does not keep
    lsb = (bits >> drop) & 1                              # ties go to the even neighbour
    rounded = ((bits + ((1 << (drop - 1)) - 1) + lsb) & ~((1 << drop) - 1)).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)     # a carry out of the top exponent gives inf: overflow


def round_trip(x: torch.Tensor, fmt: Format | str) -> torch.Tensor:
    """x stored in `fmt` and read back, as float64. fp8 uses torch's CPU float8 casts; e4m3 (no inf) saturates to
    its max, as recent torch's cast does (older releases give NaN: the clamp here makes every version agree)."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"round_trip needs a floating-point tensor, got {type(x).__name__}: "
                        f"pass torch.as_tensor(values, dtype=torch.float32)")
    x = x.detach().cpu()
    if fmt.dtype is None:
        return round_tf32(x).double()
    src = x.float() if fmt.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else x
    if fmt.dtype == torch.float8_e4m3fn:
        src = torch.where(torch.isfinite(src), src.clamp(-fmt.max, fmt.max), src)
    return src.to(fmt.dtype).double()


@dataclass
class FormatStats:
    """Where the elements of a tensor land in one format; fractions are of all elements."""
    format: str
    overflow: float        # |x| >= overflow_threshold: becomes inf (or saturates, fp8 e4m3)
    underflow: float       # x != 0 rounds to 0
    subnormal: float       # lands in (0, smallest_normal): kept, with fewer significant bits
    normal: float          # lands in the normal range (zeros and non-finite inputs are in none of the four)
    max_rel_error: float | None   # max |rt(x) - x| / |x| over elements landing in the normal range (<= eps/2);
    mean_rel_error: float | None  # mean of the same; both None when no element lands there (nothing to measure)


def format_stats(x: torch.Tensor, fmt: Format | str) -> FormatStats:
    """Overflow, underflow and subnormal fractions of x in fmt, and the round-trip error of the rest."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    rt = round_trip(x, fmt)
    x = x.detach().cpu().double().flatten()
    rt = rt.flatten()
    n = max(x.numel(), 1)
    finite = torch.isfinite(x)
    over = finite & (x.abs() >= fmt.overflow_threshold)
    under = finite & (x != 0) & (rt == 0)
    sub = finite & ~over & (rt != 0) & (rt.abs() < fmt.smallest_normal)
    normal = finite & ~over & (rt.abs() >= fmt.smallest_normal)
    err = ((rt - x).abs() / x.abs())[normal]
    return FormatStats(fmt.name, over.sum().item() / n, under.sum().item() / n, sub.sum().item() / n,
                       normal.sum().item() / n, err.max().item() if err.numel() else None,
                       err.mean().item() if err.numel() else None)


def stats_table(x: torch.Tensor, formats: list[str] | None = None) -> list[dict]:
    """format_stats of x in each format (all by default), as rows for a table or a plot."""
    table = format_table()
    unknown = [f for f in (formats or []) if f not in table]
    if unknown:
        raise ValueError(f"formats={unknown}: pick from {list(table)}")
    return [vars(format_stats(x, table[name])) for name in (formats or list(table))]


def gradient_magnitudes(model: torch.nn.Module) -> torch.Tensor:
    """|g| of every parameter's gradient, flattened into one fp32 CPU tensor (zeros included)."""
    grads = [p.grad.detach().float().abs().flatten().cpu() for p in model.parameters() if p.grad is not None]
    if not grads:
        raise ValueError("the model has no gradients: run loss.backward() first")
    return torch.cat(grads)
