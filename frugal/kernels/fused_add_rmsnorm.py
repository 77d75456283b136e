"""Residual add + RMSNorm fused: one pass over memory forward, one backward, instead of an eager chain.

h = x + residual; y = h / sqrt(mean(h²) + eps) · weight (RMSNorm: Zhang & Sennrich 2019, eq. 4).
Eager PyTorch runs this as ~6 kernels forward and ~12 backward, each streaming whole tensors through
memory; the fused kernels read each input once and write each output once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from frugal.kernels import check_reachable

from frugal.kernels.roofline import count_bytes_moved, gbps
from frugal.measure import measure_time


@triton.jit
def add_rmsnorm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, rstd_ptr, n_cols, eps, BLOCK_N: tl.constexpr):
    """One program per row: h = x + r, rstd = 1/sqrt(mean(h²) + eps), y = h · rstd · w."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    offsets = row * n_cols + cols
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    h = (x + r).to(h_ptr.dtype.element_ty)                 # rounded to the stored dtype, as eager's add
    tl.store(h_ptr + offsets, h, mask=mask)
    h = h.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / n_cols + eps)
    tl.store(rstd_ptr + row, rstd)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offsets, (h * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_rmsnorm_backward_kernel(gy_ptr, gh_ptr, h_ptr, w_ptr, rstd_ptr, gx_ptr, dw_ptr, n_rows, n_cols,
                                HAS_GH: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows pid, pid + P, ...: gx = rstd·(gy·w − n·mean(gy·w·n)) + gh with n = h·rstd; dw summed per program."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    for row in range(pid, n_rows, tl.num_programs(0)):
        offsets = row * n_cols + cols                      # int32: add_rmsnorm refuses >= 2**31 elements
        gy = tl.load(gy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        n = h * rstd
        dw += gy * n
        dn = gy * w
        gx = rstd * (dn - n * (tl.sum(dn * n, axis=0) / n_cols))
        if HAS_GH:
            gx += tl.load(gh_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(gx_ptr + offsets, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid * n_cols + cols, dw, mask=mask)


def _warps(block_n: int) -> int:
    return 4 if block_n <= 2048 else 8 if block_n <= 8192 else 16


class AddRMSNormFunction(torch.autograd.Function):
    """Autograd for the fused kernels: saves h (bf16/fp32, one tensor) and rstd (one float per row)."""

    @staticmethod
    def forward(ctx, x, residual, weight, eps):
        n_cols = x.shape[-1]
        x2, r2 = x.reshape(-1, n_cols), residual.reshape(-1, n_cols)      # (N, C)
        y, h = torch.empty_like(x2), torch.empty_like(x2)
        rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(n_cols)
        if x2.shape[0]:
            add_rmsnorm_kernel[(x2.shape[0],)](x2, r2, weight, y, h, rstd, n_cols, eps,
                                               BLOCK_N=block, num_warps=_warps(block))
        ctx.save_for_backward(h, weight, rstd)
        ctx.shape = x.shape
        ctx.set_materialize_grads(False)        # an unused output's gradient stays None: gh is then not read
        return y.view_as(x), h.view_as(x)

    @staticmethod
    def backward(ctx, gy, gh):
        h, weight, rstd = ctx.saved_tensors
        n_rows, n_cols = h.shape
        gy = torch.zeros_like(h) if gy is None else gy.reshape(n_rows, n_cols).contiguous()
        gh = None if gh is None else gh.reshape(n_rows, n_cols).contiguous()
        gx = torch.empty_like(h)
        on_gpu = h.device.type == "cuda"
        sms = torch.cuda.get_device_properties(h.device).multi_processor_count if on_gpu else 2
        programs = max(1, min(n_rows, 4 * sms))
        dw = torch.zeros(programs, n_cols, dtype=torch.float32, device=h.device)   # one partial sum per program
        block = triton.next_power_of_2(n_cols)
        if n_rows:
            add_rmsnorm_backward_kernel[(programs,)](gy, gh if gh is not None else gy, h, weight, rstd, gx, dw,
                                                     n_rows, n_cols, HAS_GH=gh is not None, BLOCK_N=block,
                                                     num_warps=_warps(block))
        gx = gx.view(ctx.shape)
        return gx, gx, dw.sum(0).to(weight.dtype), None


def _check(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    for name, t in (("x", x), ("residual", residual), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"x is on {x.device} but {name} on {t.device}: move them to one device")
        if t.dtype != x.dtype:
            raise TypeError(f"x is {x.dtype} but {name} is {t.dtype}: cast them to one dtype")
        if not t.is_contiguous():
            raise ValueError(f"{name} is not contiguous: the kernel walks rows in memory order; pass {name}.contiguous()")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"x is {x.dtype}: add_rmsnorm takes float32, float16 or bfloat16")
    if x.numel() >= 2 ** 31:
        raise ValueError(f"{x.numel()} elements: offsets are 32-bit here; split the batch below 2**31 elements")
    if residual.shape != x.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but residual {tuple(residual.shape)}: they must match")
    if x.dim() == 0 or weight.shape != (x.shape[-1],):
        raise ValueError(f"weight has shape {tuple(weight.shape)}: it must be (x.shape[-1],) = "
                         f"({x.shape[-1] if x.dim() else '?'},)")
    check_reachable(x)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h): h = x + residual (the new residual stream), y = RMSNorm(h)·weight, fused; differentiable."""
    _check(x, residual, weight)
    return AddRMSNormFunction.apply(x, residual, weight, eps)


def add_rmsnorm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                          eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager chain, as Llama's reference code writes it: every line is a kernel and a pass over memory."""
    h = x + residual
    hf = h.float()
    y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype), h


def add_rmsnorm_bytes(n_rows: int, n_cols: int, element_size: int = 4, backward: bool = True) -> int:
    """Bytes the fused kernels move: forward reads x, r, w, writes y, h, rstd; backward reads gy, gh, h, w,
    rstd, writes gx and the per-program dw partial sums (counted at one row per program, a lower bound)."""
    nc, s = n_rows * n_cols, element_size
    fwd = 4 * nc * s + n_cols * s + 4 * n_rows
    bwd = 4 * nc * s + n_cols * s + 4 * n_rows + 4 * n_cols
    return fwd + (bwd if backward else 0)


def benchmark_add_rmsnorm(shapes: list[tuple[int, int]], device: torch.device | str,
                          dtype: torch.dtype = torch.float32, repeats: int = 20) -> list[dict]:
    """Forward + backward time and bytes of fused against eager (and against torch's F.rms_norm).

    Eager bytes are counted op by op (roofline.count_bytes_moved); fused bytes by add_rmsnorm_bytes.
    """
    device = torch.device(device)
    rows = []
    for n_rows, n_cols in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        x, r = (torch.randn(n_rows, n_cols, device=device, generator=g).to(dtype).requires_grad_() for _ in range(2))
        w = (1 + 0.1 * torch.randn(n_cols, device=device, generator=g)).to(dtype).requires_grad_()
        gy, gh = (torch.randn(n_rows, n_cols, device=device, generator=g).to(dtype) for _ in range(2))
        impls = {"fused (ours)": add_rmsnorm, "eager chain": add_rmsnorm_reference,
                 "add + F.rms_norm": lambda x, r, w: _torch_rms_norm(x, r, w)}

        def step(fn):
            y, h = fn(x, r, w)
            return torch.autograd.grad((y, h), (x, r, w), (gy, gh))

        for name, fn in impls.items():
            t = measure_time(lambda: step(fn), device, warmup=3, repeats=repeats).median_s
            if name == "fused (ours)":     # counted by hand: the interpreter's own aten calls would pollute a count
                moved, launches = add_rmsnorm_bytes(n_rows, n_cols, x.element_size()), 4   # 2 Triton + zeros + sum
            else:
                with count_bytes_moved() as rec:
                    step(fn)
                moved, launches = rec.total, rec.launches
            rows.append({"shape": f"{n_rows}x{n_cols}", "impl": name, "fwd+bwd ms": t * 1e3,
                         "bytes moved": moved, "kernels": launches, "GB/s": gbps(moved, t)})
        eager = next(rw for rw in rows[-3:] if rw["impl"] == "eager chain")["fwd+bwd ms"]
        for rw in rows[-3:]:
            rw["speedup vs eager"] = eager / rw["fwd+bwd ms"]
    return rows


def _torch_rms_norm(x, r, w, eps: float = 1e-6):
    h = x + r
    return torch.nn.functional.rms_norm(h, (h.shape[-1],), w, eps), h
