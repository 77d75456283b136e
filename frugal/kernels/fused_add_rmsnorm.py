"""Residual add + RMSNorm fused: one pass over memory forward, one backward, instead of an eager chain.

h = x + residual; y = h / sqrt(mean(h²) + eps) · weight (RMSNorm: Zhang & Sennrich 2019, eq. 4).
Eager PyTorch runs this as ~6 kernels forward and ~12 backward, each streaming whole tensors through
memory; the fused kernels read each input once and write each output once. A program takes a tile of
BLOCK_M whole rows (`row_tiles` says how many), so narrow rows still give each program enough bytes.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl
from frugal.kernels import check_reachable, sm_count
from frugal.kernels.launch import launch

from frugal.kernels.roofline import count_bytes_moved, gbps, measure_graph_time
from frugal.measure import measure_time


@triton.jit
def add_rmsnorm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, rstd_ptr, n_rows, n_cols, eps,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One tile of BLOCK_M rows per program: h = x + r, rstd = 1/sqrt(mean(h²) + eps), y = h · rstd · w."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)             # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_N)                                           # (BLOCK_N,)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)             # (BLOCK_M, BLOCK_N)
    offsets = rows[:, None] * n_cols + cols[None, :]       # int32: add_rmsnorm refuses >= 2**31 elements
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    h = (x + r).to(h_ptr.dtype.element_ty)                 # rounded to the stored dtype, as eager's add
    tl.store(h_ptr + offsets, h, mask=mask)
    h = h.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=1) / n_cols + eps)            # (BLOCK_M,): one per row
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    tl.store(y_ptr + offsets, (h * rstd[:, None] * w[None, :]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_rmsnorm_backward_kernel(gy_ptr, gh_ptr, h_ptr, w_ptr, rstd_ptr, gx_ptr, dw_ptr, dw_sum_ptr, count_ptr,
                                n_rows, n_cols, HAS_GH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tiles pid, pid + P, ...: gx = rstd·(gy·w − n·mean(gy·w·n)) + gh with n = h·rstd; dw = Σ gy·n kept in
    registers over all of this program's rows, then written once as row pid of a (P, n_cols) buffer. The last
    program to finish (an atomic count, reset after) sums the P rows in order into dw_sum: no second kernel."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < n_rows) & col_ok[None, :]
        offsets = rows[:, None] * n_cols + cols[None, :]
        gy = tl.load(gy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=rows < n_rows, other=0.0)    # rows past the end: all zeros
        n = h * rstd[:, None]
        dw += gy * n
        dn = gy * w[None, :]
        gx = rstd[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / n_cols)[:, None])
        if HAS_GH:
            gx += tl.load(gh_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(gx_ptr + offsets, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid * n_cols + cols, tl.sum(dw, axis=0), mask=col_ok)
    tl.debug_barrier()                                   # all of this program's row is stored before it counts
    if tl.atomic_add(count_ptr, 1) == tl.num_programs(0) - 1:    # acq_rel: every other row is visible now
        total = tl.zeros([BLOCK_N], dtype=tl.float32)
        for p in range(0, tl.num_programs(0)):           # a fixed order: the same sum on every run
            total += tl.load(dw_ptr + p * n_cols + cols, mask=col_ok, other=0.0, cache_modifier=".cg")
        tl.store(dw_sum_ptr + cols, total.to(dw_sum_ptr.dtype.element_ty), mask=col_ok)
        tl.atomic_xchg(count_ptr, 0)                     # ready for the next call on this GPU


@dataclass(frozen=True)
class RowTiles:
    """How both kernels cut an (n_rows, n_cols) tensor, as `row_tiles` chooses."""
    block_m: int      # rows per tile (a power of two)
    block_n: int      # columns per tile: the next power of two >= n_cols, so a tile holds whole rows
    num_warps: int    # warps per program
    programs: int     # backward's persistent grid: each program walks tiles p, p + P, ... and keeps one dw row


TILE_ELEMENTS = 4096       # elements per tensor per tile: 16 KB of fp32, four 16-byte loads per thread at 8 warps
PROGRAMS_PER_SM = 2        # backward: 2 tiles of 3 tensors in flight per SM, ~96 KB, cover HBM's latency


@lru_cache(maxsize=256)            # a training step asks for the same few shapes on every call
def row_tiles(n_rows: int, n_cols: int, sms: int, tile_elements: int = TILE_ELEMENTS,
              programs_per_sm: int = PROGRAMS_PER_SM) -> RowTiles:
    """The rule: whole rows per tile, as many as fit in `tile_elements` (768 columns: 4 rows, 4096: one), one warp
    per 512 elements (4 to 16), and a backward grid of programs_per_sm · SMs, each summing dw over its rows."""
    block_n = 1 << max(n_cols - 1, 0).bit_length()       # plain ints: triton.next_power_of_2 costs ~40x more
    block_m = min(max(1, tile_elements // block_n), 1 << max(n_rows - 1, 0).bit_length())
    num_warps = min(16, max(4, block_m * block_n // 512))
    programs = max(1, min(-(-n_rows // block_m), programs_per_sm * sms))
    return RowTiles(block_m, block_n, num_warps, programs)


@lru_cache(maxsize=16)
def _counter(device: torch.device) -> torch.Tensor:
    """The backward's int32 count of finished programs, one per GPU, zero between calls (each last program resets
    it). Kernels on one stream run one after another; backward calls on two streams at once would share it."""
    return torch.zeros(1, dtype=torch.int32, device=device)


class AddRMSNormFunction(torch.autograd.Function):
    """Autograd for the fused kernels: saves h (bf16/fp32, one tensor) and rstd (one float per row)."""

    @staticmethod
    def forward(ctx, x, residual, weight, eps):
        n_cols = x.shape[-1]
        flat = x.dim() == 2                     # a view costs host time too: none where x is (N, C) already
        x2, r2 = (x, residual) if flat else (x.view(-1, n_cols), residual.view(-1, n_cols))   # (N, C)
        n_rows = x2.shape[0]
        y, h = torch.empty_like(x2), torch.empty_like(x2)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        tiles = row_tiles(n_rows, n_cols, sm_count(x.device))
        if n_rows:
            launch(add_rmsnorm_kernel, (-(-n_rows // tiles.block_m),),    # add_rmsnorm_kernel[grid](...)
                x2, r2, weight, y, h, rstd, n_rows, n_cols, eps,
                BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, num_warps=tiles.num_warps)
        ctx.save_for_backward(h, weight, rstd)
        ctx.tiles, ctx.shape = tiles, x.shape
        ctx.set_materialize_grads(False)        # an unused output's gradient stays None: gh is then not read
        return (y, h) if flat else (y.view_as(x), h.view_as(x))

    @staticmethod
    def backward(ctx, gy, gh):
        h, weight, rstd = ctx.saved_tensors
        n_rows, n_cols = h.shape
        tiles = ctx.tiles
        gy = torch.zeros_like(h) if gy is None else _rows(gy, n_rows, n_cols)
        gh = None if gh is None else _rows(gh, n_rows, n_cols)
        gx = torch.empty_like(h)
        rows = torch.empty(tiles.programs, n_cols, dtype=torch.float32, device=h.device)  # each program's dw row
        if n_rows:
            dw = torch.empty_like(weight)       # (n_cols,): the last program writes the sum, in weight's dtype
            launch(add_rmsnorm_backward_kernel, (tiles.programs,),
                gy, gh if gh is not None else gy, h, weight, rstd, gx, rows, dw, _counter(h.device), n_rows, n_cols,
                HAS_GH=gh is not None, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, num_warps=tiles.num_warps)
        else:
            dw = torch.zeros_like(weight)
        if gx.shape != ctx.shape:
            gx = gx.view(ctx.shape)
        return gx, gx, dw, None


def _rows(g: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """g as a contiguous (n_rows, n_cols) tensor, without a call where it is one already."""
    return g if g.dim() == 2 and g.is_contiguous() else g.reshape(n_rows, n_cols).contiguous()


class _Nothing(torch.autograd.Function):
    """An autograd.Function that launches nothing, forward or backward: the host time any kernel called from
    Python pays before it starts (`benchmark_add_rmsnorm`'s floor row)."""

    @staticmethod
    def forward(ctx, x, residual, weight):
        return x.view_as(x), residual.view_as(residual)

    @staticmethod
    def backward(ctx, gy, gh):
        return gy, gh, gy[0]                    # gy[0] has weight's shape; a view, not a kernel


def do_nothing(x, residual, weight, eps: float = 1e-6):
    """(x, residual) as views, through _Nothing: what calling through a Python autograd.Function costs alone."""
    return _Nothing.apply(x, residual, weight)


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


def add_rmsnorm_bytes(n_rows: int, n_cols: int, element_size: int = 4, backward: bool = True,
                      programs: int = 1) -> int:
    """Bytes the fused kernels move: forward reads x, r, w, writes y, h, rstd; backward reads gy, gh, h, w,
    rstd, writes gx and `programs` fp32 partial rows of dw, which its last program reads back to write dw."""
    nc, s = n_rows * n_cols, element_size
    fwd = 4 * nc * s + n_cols * s + 4 * n_rows
    bwd = 4 * nc * s + n_cols * s + 4 * n_rows + 2 * 4 * programs * n_cols + n_cols * s
    return fwd + (bwd if backward else 0)


def peer_rms_norms() -> dict:
    """torch's add, then Liger-Kernel's RMSNorm (it has no residual add of its own), if installed; as a user gets it:
    its defaults, which write the input gradient over the output gradient (in_place=True)."""
    try:
        import importlib.metadata as md
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    except ImportError:
        return {}

    def liger(x, r, w, eps: float = 1e-6):
        h = x + r
        return LigerRMSNormFunction.apply(h, w, eps), h
    return {f"add + Liger-Kernel {md.version('liger-kernel')} RMSNorm": liger}


FLOOR = "autograd.Function doing nothing"   # benchmark_add_rmsnorm's row of Python's cost alone
ROUNDS = 3                                   # benchmark_add_rmsnorm times the implementations in turn, this often


def _step(fn, x, r, w, grads):
    """One forward + backward of fn into the gradients of x, r and w, on its own copies of the output gradients
    (a peer may write its input gradient over them in place)."""
    gy, gh = (t.clone() for t in grads)
    return lambda: torch.autograd.grad(fn(x, r, w), (x, r, w), (gy, gh))


def benchmark_add_rmsnorm(shapes: list[tuple[int, int]], device: torch.device | str,
                          dtype: torch.dtype = torch.float32, repeats: int = 20, extra: dict | None = None) -> list[dict]:
    """Forward + backward time and bytes of fused against eager, torch's F.rms_norm and `extra` (name -> fn).

    "fwd+bwd ms" is one call from Python, the GPU idle before it (launches included), the median of `repeats`
    calls taken in ROUNDS turns over the implementations; on a GPU, "GPU ms" replays
    the same step from a CUDA graph: the kernels alone. Eager bytes are counted op by op
    (roofline.count_bytes_moved); fused bytes by add_rmsnorm_bytes. The last row, FLOOR, launches nothing: its
    time is what any kernel called through a Python autograd.Function pays before its own work.
    """
    device = torch.device(device)
    rows = []
    for n_rows, n_cols in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        x, r = (torch.randn(n_rows, n_cols, device=device, generator=g).to(dtype).requires_grad_() for _ in range(2))
        w = (1 + 0.1 * torch.randn(n_cols, device=device, generator=g)).to(dtype).requires_grad_()
        grads = [torch.randn(n_rows, n_cols, device=device, generator=g).to(dtype) for _ in range(2)]
        impls = {"fused (ours)": add_rmsnorm, "eager chain": add_rmsnorm_reference,
                 "add + F.rms_norm": _torch_rms_norm, **(extra or {}), FLOOR: do_nothing}
        steps = {name: _step(fn, x, r, w, grads) for name, fn in impls.items()}
        times = {name: [] for name in impls}
        for _ in range(ROUNDS):            # round-robin: a drift of the host's speed falls on every impl alike
            for name, step in steps.items():
                times[name] += measure_time(step, device, warmup=3, repeats=max(1, repeats // ROUNDS)).times_s
        for name, step in steps.items():
            t = statistics.median(times[name])
            row = {"shape": f"{n_rows}x{n_cols}", "impl": name, "fwd+bwd ms": t * 1e3}
            if device.type == "cuda" and name != FLOOR:      # the floor has no kernels to replay
                row["GPU ms"] = measure_graph_time(step, device, repeats=repeats) * 1e3
            if name == "fused (ours)":     # counted by hand: the interpreter's own aten calls would pollute a count
                programs = row_tiles(n_rows, n_cols, sm_count(device)).programs
                moved, launches = add_rmsnorm_bytes(n_rows, n_cols, x.element_size(), programs=programs), 2
            elif name in (extra or {}):    # a peer's Triton kernels are not aten ops: uncounted, left blank
                moved = launches = None
            elif name == FLOOR:
                moved, launches = 0, 0
            else:                          # (ours launches 2 Triton kernels, forward and backward)
                with count_bytes_moved() as rec:
                    step()
                moved, launches = rec.total, rec.launches
            rows.append({**row, "bytes moved": moved, "kernels": launches,
                         "GB/s": gbps(moved, t) if moved else None})
        mine = rows[-len(impls):]
        eager = next(rw for rw in mine if rw["impl"] == "eager chain")["fwd+bwd ms"]
        for rw in mine:
            rw["speedup vs eager"] = None if rw["impl"] == FLOOR else eager / rw["fwd+bwd ms"]
    return rows


def _torch_rms_norm(x, r, w, eps: float = 1e-6):
    h = x + r
    return torch.nn.functional.rms_norm(h, (h.shape[-1],), w, eps), h
