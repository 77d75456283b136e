"""The fp8 cast in one pass: scale, saturate, round to e4m3/e5m2, written row-major and transposed at once.

Eager PyTorch casts x to fp8 in four passes over memory (x.float(), ·scale, clamp, .to(fp8)), each writing an
fp32 intermediate; then torch._scaled_mm's backward operands need transposed copies (cuBLASLt takes A row-major
and B column-major only). This kernel reads x once and writes 1 byte per element for each layout asked for:

    q = clamp(x · scale, −max, max) rounded to fp8          (Transformer Engine's "cast-transpose")

fp32 multiply, clamp, then the round-to-nearest-even conversion: on a GPU the same bits as frugal.fp8.quantize.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from frugal.kernels import check_reachable

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@triton.jit
def fp8_cast_kernel(x_ptr, scale_ptr, q_ptr, qt_ptr, n_rows, n_cols, fp8_max,
                    WRITE_Q: tl.constexpr, WRITE_QT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of x (n_rows, n_cols), contiguous: q[r, c] and, transposed, qt[c, r]."""
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    x = tl.load(x_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = x * tl.load(scale_ptr)                                   # (BLOCK_M, BLOCK_N) fp32, rounded once
    y = tl.minimum(tl.maximum(y, -fp8_max), fp8_max)             # saturate: never inf, never NaN from range
    q = y.to(q_ptr.dtype.element_ty)                             # round to nearest even, in registers
    if WRITE_Q:
        tl.store(q_ptr + rows[:, None] * n_cols + cols[None, :], q, mask=mask)
    if WRITE_QT:                                                 # (BLOCK_N, BLOCK_M): Triton swaps via shared memory
        tl.store(qt_ptr + cols[:, None] * n_rows + rows[None, :], tl.trans(q), mask=tl.trans(mask))


def fp8_cast(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, rows: bool = True, transposed: bool = False,
             block: int = 64) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(q, qt): x (M, N) · scale cast to fp8 `dtype` with saturation, q (M, N) row-major and qt = qᵀ (N, M)
    contiguous; each only if asked (rows / transposed), else None. scale: a one-element fp32 tensor."""
    if dtype not in FP8_DTYPES:
        raise ValueError(f"dtype={dtype}: fp8_cast writes torch.float8_e4m3fn or torch.float8_e5m2")
    if x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"x of shape {tuple(x.shape)}, contiguous={x.is_contiguous()}: fp8_cast takes a "
                         f"contiguous 2-D tensor; pass x.reshape(-1, x.shape[-1]).contiguous()")
    if scale.numel() != 1 or scale.dtype != torch.float32:
        raise ValueError(f"scale has {scale.numel()} elements of {scale.dtype}: pass one float32 value (a tensor)")
    check_reachable(x, scale)
    if transposed and x.dtype == torch.float32:   # Triton 3.6 on an H200 wrote wrong transposes from fp32 input at
        q, _ = fp8_cast(x, scale, dtype, True, False, block)       # aligned tiles (tests/test_fp8.py, 512x256):
        return (q if rows else None), q.t().contiguous()          # the rows from the kernel, the copy from torch
    m, n = x.shape
    q = torch.empty((m, n), dtype=dtype, device=x.device) if rows else None
    qt = torch.empty((n, m), dtype=dtype, device=x.device) if transposed else None
    grid = (triton.cdiv(m, block), triton.cdiv(n, block))
    fp8_cast_kernel[grid](x, scale, q if rows else qt, qt if transposed else q, m, n, float(torch.finfo(dtype).max),
                          WRITE_Q=rows, WRITE_QT=transposed, BLOCK_M=block, BLOCK_N=block)
    return q, qt


def fp8_cast_reference(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """What fp8_cast computes, in eager PyTorch (four passes, fp32 intermediates, a transposed copy)."""
    m = torch.finfo(dtype).max
    q = (x.float() * scale).clamp(-m, m).to(dtype)
    return q, q.t().contiguous()


def benchmark_fp8_cast(n: int = 8192, device: str = "cuda") -> dict:
    """GB/s of fp8_cast (both layouts) against the eager reference on an (n, n) bf16 tensor: median of repeats."""
    from frugal.measure import measure_time
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    scale = torch.tensor(2.0, device=device)
    moved = x.numel() * (x.element_size() + 2)                   # read x once, write two 1-byte copies
    out = {}
    for name, fn in (("triton", lambda: fp8_cast(x, scale, torch.float8_e4m3fn, True, True)),
                     ("eager", lambda: fp8_cast_reference(x, scale, torch.float8_e4m3fn))):
        t = measure_time(fn, torch.device(device), warmup=3, repeats=10).median_s
        out[name] = {"ms": t * 1e3, "GB/s": moved / t / 1e9}
    return out
