"""The fp8 cast in one pass: scale, saturate, round to e4m3/e5m2, written row-major and transposed at once.

Eager PyTorch casts x to fp8 in four passes over memory (x.float(), ·scale, clamp, .to(fp8)), each writing an
fp32 intermediate; then torch._scaled_mm's backward operands need transposed copies (cuBLASLt takes A row-major
and B column-major only). This kernel reads x once and writes 1 byte per element for each layout asked for:

    q = clamp(x · scale, −max, max) rounded to fp8          (Transformer Engine's "cast-transpose")

fp32 multiply, clamp, then the round-to-nearest-even conversion: on a GPU the same bits as frugal.fp8.quantize.
The scale comes from an amax, and so do the bytes a cast costs (a bf16 tensor of n elements, both layouts):
- current scaling needs x's own amax before the cast: fp8_scale reads x (2n bytes) and writes the scale into an
  8-float `meta` on the GPU; fp8_cast reads x again and writes q and qᵀ: 2n + 2n + 2n = 6n bytes;
- delayed scaling knows its scale from the amax history, so fp8_cast takes this tensor's amax in the same pass
  and pushes it into the history (its last program to finish): 2n read + 2n written = 4n bytes.
The least any cast can move is 3n (read bf16 once, write one fp8 layout). At 8192² that is 201 MB, about 42 µs
at the H200's 4.8 TB/s: 5% of torch._scaled_mm's 0.86 ms there, so a forward that casts its input sits on the
5% line under delayed scaling (3n) and below it under current scaling (5n, ~70 µs).
A program per tile made that line out of reach: under delayed scaling each of the 16,384 tiles of 8192² added its
amax with two atomics on the same two words, which the GPU serializes, and the cast of q took 78 µs, slower than
torch's own x.to(float8_e4m3fn) (63 µs). So a fixed grid, CAST_PROGRAMS_PER_SM per SM, walks the tiles and each
program adds its amax once: 56 µs (3.6 TB/s). The delayed forward then took 0.93 ms against 0.87-0.88 ms for
_scaled_mm alone, 0.93x to 0.94x, timed in turns from 50-call CUDA graphs and from 50 and 200 calls back to back
(H200, 2026-12-03); the bench's shorter timings scattered from 0.89x to 0.97x over four runs. The gap is the
cast's 56 µs: even at the 42 µs floor it would be 0.95x.
The cast gets cheaper still only by leaving its own pass. `gelu=True` computes F.gelu(x) in the cast's registers:
the GELU a transformer's MLP runs before its second matmul then reads its input once and writes fp8 (2n + 2n
bytes with both layouts), where an eager GELU writes bf16 (2n + 2n) and the cast reads it back (frugal.fp8's
fuse_gelu_into_float8; Transformer Engine fuses its LayerNorm into the cast the same way). That cast is bound by
the GELU's arithmetic (erf), not by memory: at 8192² bf16 on the H200 (timed from CUDA graphs) it took 0.117 ms,
against 0.056 ms for the plain cast and 0.088 ms for torch's F.gelu alone. So at 8192 gelu(x) Wᵀ with the
GELU inside is within the runs' noise of the GELU as a pass of its own (0.98x against 0.99x of _scaled_mm alone
plus the GELU in one run, 0.95x against 0.94x in another); at 16384 it is ahead (0.98x against 0.97x), and in
the d=4096 train step it was the fastest variant in each run (17.9 ms against 18.1 ms without it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from frugal.kernels import check_reachable, sm_count
from frugal.kernels.launch import launch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP32_MAX = 3.4028234663852886e38
AMAX_PROGRAMS = 512    # fp8_scale's grid at most: each program strides over x, then one atomic max each
META_SIZE, META_INV = 8, 4   # meta = [scale, -, amax, -, 1/scale, -, -, -]: torch._scaled_mm's cuBLASLt refuses
                             # scale pointers that are not 16-byte aligned, so 1/scale sits 16 bytes in
CAST_PROGRAMS_PER_SM = 8    # fp8_cast's grid: each program walks tiles p, p + P, ..., so delayed scaling makes one
                            # atomic max and count per program (a program per tile made 32,768 at 8192², on one word)
CAST_WARPS = {False: 4, True: 8}   # fp8_cast's warps, without and with qᵀ (its swap through shared memory)
STATE_SLOTS = 8        # int32 state a caller keeps per layer: [0] amax being reduced, [1] programs done,
                       # [4 + role] the last inf/NaN amax of that role (float bits), 0 while all were finite


@triton.jit
def _scale_of(a, fp8_max):
    """frugal.fp8.amax_to_scale bit for bit: torch computes fp8_max / a as a.reciprocal() * fp8_max."""
    s = tl.minimum(tl.math.div_rn(1.0, tl.where(a > 0, a, 1.0)) * fp8_max, 3.4028234663852886e38)
    return tl.where(a > 0, s, 1.0)


@triton.jit
def _history_max(hist_ptr, HIST_LEN: tl.constexpr, HIST_BLOCK: tl.constexpr):
    """max of the amax history (non-negative floats: their bits order as integers, and NaN's bits win)."""
    offs = tl.arange(0, HIST_BLOCK)
    h = tl.load(hist_ptr + offs, mask=offs < HIST_LEN, other=0.0)
    return tl.max(h.to(tl.int32, bitcast=True), 0).to(tl.float32, bitcast=True)


@triton.jit
def _finish(tile_amax_bits, state_ptr, meta_ptr, hist_ptr, scale, fp8_max, ROLE: tl.constexpr,
            FROM_AMAX: tl.constexpr, HIST_LEN: tl.constexpr, HIST_BLOCK: tl.constexpr):
    """Each program adds its amax (an integer atomic max on float bits); the last to arrive writes meta =
    [scale, -, amax, -, 1/scale], flags an inf/NaN amax, rolls the history (newest first) and clears the state."""
    tl.atomic_max(state_ptr, tile_amax_bits)
    if tl.atomic_add(state_ptr + 1, 1) == tl.num_programs(0) * tl.num_programs(1) - 1:
        a = tl.atomic_xchg(state_ptr, 0).to(tl.float32, bitcast=True)
        tl.atomic_xchg(state_ptr + 1, 0)
        if FROM_AMAX:                                             # constexpr: one branch is compiled
            s = _scale_of(a, fp8_max)
        else:
            s = scale
        tl.store(meta_ptr, s)
        tl.store(meta_ptr + 4, tl.math.div_rn(1.0, s))         # META_INV: torch's s.reciprocal(), for _scaled_mm
        tl.store(meta_ptr + 2, a)
        if (a != a) | (a > 3.4028234663852886e38):                # NaN or inf
            tl.store(state_ptr + 4 + ROLE, a.to(tl.int32, bitcast=True))
        if HIST_LEN > 0:
            offs = tl.arange(0, HIST_BLOCK)
            older = tl.load(hist_ptr + offs - 1, mask=(offs >= 1) & (offs < HIST_LEN), other=0.0)
            tl.debug_barrier()                                    # every thread has read before any writes
            tl.store(hist_ptr + offs, tl.where(offs == 0, a, older), mask=offs < HIST_LEN)


@triton.jit
def _gelu(x, dtype: tl.constexpr):
    """torch's exact GELU of fp32 x, x·½·(1 + erf(x/√2)) as its CUDA kernel orders it, rounded to `dtype` as
    eager F.gelu returns it (the cast then reads what an eager GELU would have written)."""
    return (x * 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))).to(dtype).to(tl.float32)


@triton.jit
def fp8_scale_kernel(x_ptr, n, hist_ptr, state_ptr, meta_ptr, fp8_max, ROLE: tl.constexpr, GELU: tl.constexpr,
                     HIST_LEN: tl.constexpr, HIST_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """amax of x (n elements, flat) and its scale into meta; with a history, only while the history is all
    zero (the first step), since its max gives the scale otherwise and fp8_cast_kernel takes x's amax."""
    past = 0.0
    if HIST_LEN > 0:
        past = _history_max(hist_ptr, HIST_LEN, HIST_BLOCK)
    if (past <= 0) | (past != past):
        pid, step = tl.program_id(0).to(tl.int64), tl.num_programs(0) * BLOCK
        acc = tl.zeros([BLOCK], tl.int32)
        for start in range(pid * BLOCK, n, step):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
            if GELU:                                              # the amax of gelu(x): what will be cast
                x = _gelu(x, x_ptr.dtype.element_ty)
            acc = tl.maximum(acc, tl.abs(x).to(tl.int32, bitcast=True))
        _finish(tl.max(acc, 0), state_ptr, meta_ptr, hist_ptr, 1.0, fp8_max, ROLE, True, 0, 1)


@triton.jit
def fp8_cast_kernel(x_ptr, scale_ptr, q_ptr, qt_ptr, n_rows, n_cols, fp8_max, hist_ptr, state_ptr,
                    WRITE_Q: tl.constexpr, WRITE_QT: tl.constexpr, WIDE_TRANSPOSE: tl.constexpr, ROLE: tl.constexpr,
                    GELU: tl.constexpr, HIST_LEN: tl.constexpr, HIST_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """Tiles pid, pid + P, ... of x (n_rows, n_cols), contiguous, in (BLOCK_M, BLOCK_N) tiles numbered row band by
    row band: q[r, c] and, transposed, qt[c, r]. With a history (delayed scaling) the scale is the history's, or
    scale_ptr's when it is all zero, and the amax of all the program's tiles goes into the history: one atomic
    pair per program, not per tile. GELU: cast gelu(x) instead, computed in registers (gelu(0) = 0 where masked)."""
    if HIST_LEN > 0:
        past = _history_max(hist_ptr, HIST_LEN, HIST_BLOCK)
        scale = tl.where(past > 0, _scale_of(past, fp8_max), tl.load(scale_ptr))
    else:
        scale = tl.load(scale_ptr)
    tiles_across = tl.cdiv(n_cols, BLOCK_N)
    amax = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)         # |x| as float bits, the max so far (masked: 0)
    for tile in range(tl.program_id(0), tl.cdiv(n_rows, BLOCK_M) * tiles_across, tl.num_programs(0)):
        rows = ((tile // tiles_across) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = ((tile % tiles_across) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        x = tl.load(x_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if GELU:
            x = _gelu(x, x_ptr.dtype.element_ty)
        y = x * scale                                            # (BLOCK_M, BLOCK_N) fp32, rounded once
        y = tl.minimum(tl.maximum(y, -fp8_max, propagate_nan=tl.PropagateNan.ALL), fp8_max,
                       propagate_nan=tl.PropagateNan.ALL)        # saturate: never inf; NaN stays NaN as torch's
        q = y.to(q_ptr.dtype.element_ty)                         # round to nearest even, in registers
        if WRITE_Q:
            tl.store(q_ptr + rows[:, None] * n_cols + cols[None, :], q, mask=mask)
        if WRITE_QT:                                             # (BLOCK_N, BLOCK_M): Triton swaps via shared memory
            if WIDE_TRANSPOSE:                                   # the bytes swapped as int32 lanes
                wide = q.to(tl.uint8, bitcast=True).to(tl.int32)
                qt = tl.trans(wide).to(tl.uint8).to(q_ptr.dtype.element_ty, bitcast=True)
            else:
                qt = tl.trans(q)
            tl.store(qt_ptr + cols[:, None] * n_rows + rows[None, :], qt, mask=tl.trans(mask))
        if HIST_LEN > 0:
            amax = tl.maximum(amax, tl.abs(x).to(tl.int32, bitcast=True))   # NaN's bits order above inf's
    if HIST_LEN > 0:
        _finish(tl.max(tl.max(amax, 1), 0), state_ptr, scale_ptr, hist_ptr, scale, fp8_max, ROLE, False,
                HIST_LEN, HIST_BLOCK)


def _check(x, dtype, history, state):
    if dtype not in FP8_DTYPES:
        raise ValueError(f"dtype={dtype}: fp8_cast writes torch.float8_e4m3fn or torch.float8_e5m2")
    if x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"x of shape {tuple(x.shape)}, contiguous={x.is_contiguous()}: fp8_cast takes a "
                         f"contiguous 2-D tensor; pass x.reshape(-1, x.shape[-1]).contiguous()")
    if history is not None and (history.dtype != torch.float32 or not history.is_contiguous()):
        raise ValueError(f"history of {history.dtype}: pass the layer's float32 amax history buffer")
    if state is not None and (state.dtype != torch.int32 or state.numel() < STATE_SLOTS):
        raise ValueError(f"state of {state.numel()} {state.dtype}: pass new_state(device) (zeros, kept)")


def new_state(device) -> torch.Tensor:
    """The int32 scratch fp8_scale and a delayed fp8_cast share (STATE_SLOTS); each call leaves it cleared."""
    return torch.zeros(STATE_SLOTS, dtype=torch.int32, device=device)


def fp8_scale(x: torch.Tensor, dtype: torch.dtype, state: torch.Tensor, history: torch.Tensor | None = None,
              role: int = 0, block: int = 4096, gelu: bool = False) -> torch.Tensor:
    """meta = [scale, -, amax, -, 1/scale, -, -, -] of x on its device, no host sync: current scaling's amax pass. With a
    delayed history it reads x only while the history is all zero (else fp8_cast finds the scale). gelu: of gelu(x)."""
    _check(x, dtype, history, state)
    check_reachable(x, state)
    meta = torch.empty(META_SIZE, dtype=torch.float32, device=x.device)
    n = x.numel()
    hist_len = 0 if history is None else history.numel()
    grid = (max(1, min(triton.cdiv(n, block), AMAX_PROGRAMS)),)
    launch(fp8_scale_kernel, grid, x, n, x if history is None else history, state, meta,   # fp8_scale_kernel[grid]
           float(torch.finfo(dtype).max), ROLE=role, GELU=gelu, HIST_LEN=hist_len,
           HIST_BLOCK=triton.next_power_of_2(max(hist_len, 1)), BLOCK=block, num_warps=8)
    return meta


def fp8_cast(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, rows: bool = True, transposed: bool = False,
             block: int | tuple[int, int] = 64, history: torch.Tensor | None = None,
             state: torch.Tensor | None = None, role: int = 0, wide_transpose: bool = False, gelu: bool = False,
             programs: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(q, qt): x (M, N) · scale cast to fp8 `dtype` with saturation, q (M, N) row-major and qt = qᵀ (N, M)
    contiguous; each only if asked (rows / transposed), else None. scale: float32, its first element the scale
    (fp8_scale's meta). With history and state (delayed scaling), meta is filled and the history pushed.
    wide_transpose: swap the bytes as int32 (for fp32 input); without it, fp32's transpose is torch's copy.
    gelu: cast F.gelu(x) (exact GELU, rounded to x's dtype first), computed in the same pass: x is read once,
    where an eager GELU then a cast would write gelu(x) and read it back.
    block: the tile, square or (rows, columns); programs: how many walk the tiles (None: CAST_PROGRAMS_PER_SM per
    SM, at most one per tile)."""
    _check(x, dtype, history, state)
    if scale.dtype != torch.float32 or scale.numel() not in (1, META_SIZE) or (history is not None and scale.numel() != META_SIZE):
        raise ValueError(f"scale has {scale.numel()} elements of {scale.dtype}: pass one float32 value (a tensor), "
                         f"or with a history the {META_SIZE}-float meta fp8_scale returns")
    if history is not None and state is None:
        raise ValueError("history without state: pass state=new_state(device), kept between calls")
    check_reachable(x, scale)
    if transposed and x.dtype == torch.float32 and not wide_transpose:   # Triton 3.6 on an H200 wrote wrong
        q, _ = fp8_cast(x, scale, dtype, True, False, block, history, state, role, gelu=gelu,  # transposes from fp32
                        programs=programs)
        return (q if rows else None), q.t().contiguous()          # (tests/test_fp8.py, 512x256): torch's copy
    m, n = x.shape
    q = torch.empty((m, n), dtype=dtype, device=x.device) if rows else None
    qt = torch.empty((n, m), dtype=dtype, device=x.device) if transposed else None
    hist_len = 0 if history is None else history.numel()
    block_m, block_n = (block, block) if isinstance(block, int) else block
    tiles = -(-m // block_m) * -(-n // block_n)
    if programs is None:
        programs = CAST_PROGRAMS_PER_SM * sm_count(x.device)
    launch(fp8_cast_kernel, (max(1, min(programs, tiles)),),       # fp8_cast_kernel[grid](...)
           x, scale, q if rows else qt, qt if transposed else q, m, n, float(torch.finfo(dtype).max),
           x if history is None else history, x if state is None else state,
           WRITE_Q=rows, WRITE_QT=transposed, WIDE_TRANSPOSE=wide_transpose, ROLE=role, GELU=gelu,
           HIST_LEN=hist_len, HIST_BLOCK=triton.next_power_of_2(max(hist_len, 1)), BLOCK_M=block_m, BLOCK_N=block_n,
           num_warps=CAST_WARPS[transposed])
    return q, qt


def fp8_cast_reference(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                       gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """What fp8_cast computes, in eager PyTorch (four passes, fp32 intermediates, a transposed copy)."""
    if gelu:
        x = torch.nn.functional.gelu(x)
    m = torch.finfo(dtype).max
    q = (x.float() * scale).clamp(-m, m).to(dtype)
    return q, q.t().contiguous()


def benchmark_fp8_cast(n: int = 8192, device: str = "cuda") -> dict:
    """GB/s of fp8_cast (both layouts; current scaling's amax pass with it, and delayed's one pass) against the
    eager reference on an (n, n) bf16 tensor: median of repeats. Bytes: x read once or twice, two 1-byte copies."""
    from frugal.measure import measure_time
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    scale, state = torch.tensor(2.0, device=device), new_state(device)
    history = torch.full((16,), 4.0, device=device)
    e4m3 = torch.float8_e4m3fn
    cases = (("triton cast", 4, lambda: fp8_cast(x, scale, e4m3, True, True)),
             ("triton current (amax + cast)", 6,
              lambda: fp8_cast(x, fp8_scale(x, e4m3, state), e4m3, True, True)),
             ("triton delayed (one pass)", 4,
              lambda: fp8_cast(x, torch.empty(META_SIZE, device=device), e4m3, True, True, history=history, state=state)),
             ("eager", 4, lambda: fp8_cast_reference(x, scale, e4m3)))
    out = {}
    for name, bytes_per_element, fn in cases:
        t = measure_time(fn, torch.device(device), warmup=3, repeats=10).median_s
        out[name] = {"ms": t * 1e3, "GB/s": x.numel() * bytes_per_element / t / 1e9}
    return out
