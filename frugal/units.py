"""Numbers as a person reads them: bytes, counts, times, FLOPs and dollars, one formatter each.

Every figure, dashboard and lesson prints through these, so one quantity always reads the same way.
Counts say 'billion' and 'trillion' in words: '320 B' reads as bytes and '1 T' as tera-something.
"""
from __future__ import annotations

import math

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
_COUNT = ((1e12, " trillion"), (1e9, " billion"), (1e6, " M"), (1e3, " K"))
_SI = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _number(x: float) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) and not hasattr(x, "__float__"):
        raise TypeError(f"expected a number, got {type(x).__name__} {x!r}: pass an int or a float")
    x = float(x)
    if math.isnan(x):
        raise ValueError("got nan: pass a finite number (a measurement that failed has no size)")
    return x


def _sig(x: float, digits: int = 3) -> str:
    """x with `digits` significant digits, thousands separated, never in e-notation below 1e15."""
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{round(x, decimals):,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def human_bytes(n: float, binary: bool = True) -> str:
    """Bytes in binary units (3 * 2**20 -> '3 MiB'), or decimal with binary=False (79e9 -> '79 GB')."""
    n = _number(n)
    units, step = (_BINARY, 1024.0) if binary else (_DECIMAL, 1000.0)
    for unit in units:
        if abs(n) < step * 0.9995 or unit == units[-1]:
            return f"{_sig(n)} {unit}"
        n /= step
    return f"{_sig(n)} {units[-1]}"


def human_count(n: float, unit: str = "") -> str:
    """A count: 437_760 -> '438 K', 320e9 -> '320 billion', 512 -> '512'; unit is appended ('438 K parameters')."""
    n = _number(n)
    text = _sig(n) if abs(n) < 1e3 * 0.9995 else None
    for scale, name in _COUNT:
        if text is None and abs(n) >= scale * 0.9995:
            text = f"{_sig(n / scale)}{name}"
    text = text or _sig(n)
    return f"{text} {unit}" if unit else text


def human_time(seconds: float) -> str:
    """Seconds as ns, µs, ms, s, min, h or days: 0.0123 -> '12.3 ms', 5400 -> '1.5 h'."""
    s = _number(seconds)
    if s == 0:
        return "0 s"
    for limit, scale, unit in ((1e-6, 1e-9, "ns"), (1e-3, 1e-6, "µs"), (1.0, 1e-3, "ms"), (60.0, 1.0, "s"),
                               (3600.0, 60.0, "min"), (86400.0, 3600.0, "h")):
        if abs(s) < limit * 0.9995:
            return f"{_sig(s / scale)} {unit}"
    return f"{_sig(s / 86400.0)} days"


def human_flops(n: float, per_second: bool = False) -> str:
    """FLOPs with SI prefixes ('312 TFLOP/s' with per_second), and powers of ten past exa: 8.4e23 -> '8.4e23 FLOPs'."""
    n = _number(n)
    unit = "FLOP/s" if per_second else "FLOPs"
    if abs(n) >= 1e21:
        mantissa, exponent = f"{n:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)} {unit}"
    for scale, prefix in _SI:
        if abs(n) >= scale * 0.9995:
            return f"{_sig(n / scale)} {prefix}{unit}"
    return f"{_sig(n)} {unit}"


def human_dollars(x: float) -> str:
    """US dollars: 0.0712 -> '$0.0712', 1234.5 -> '$1,235', 4.13e6 -> '$4.13 M', 2.1e9 -> '$2.1 billion'."""
    x = _number(x)
    sign = "-" if x < 0 else ""
    x = abs(x)
    if x >= 1e6 * 0.9995:
        return sign + "$" + human_count(x)
    if x >= 1000:
        return f"{sign}${x:,.0f}"
    return f"{sign}${_sig(x)}"


def human_rate(bytes_per_s: float) -> str:
    """Bandwidth in decimal units, as data sheets give it: 2.99e12 -> '2.99 TB/s'."""
    return human_bytes(bytes_per_s, binary=False) + "/s"
