"""The output projection and the cross-entropy tile by tile: no logit is ever written to memory, not even a chunk.

The chunked version (fused_linear_cross_entropy.py) still holds c × V logits. Here one Triton program
computes a (BLOCK_N × BLOCK_V) tile of logits in registers, folds it into a running log-sum-exp and drops
it; the backward recomputes each tile, turns it into its gradient and adds that tile's share into
grad_hidden and grad_weight. This is Cut Cross-Entropy (Wijmans et al. 2024, sections 4.1-4.3) without
its gradient filtering: every tile is computed, so the gradient is exact up to rounding.

Those atomic adds, not the FLOPs, bound the tiled backward (each row of grad_hidden gets V / BLOCK_V of
them). backward_by_vocab_chunks is the faster alternative: the same logit-free forward, then cuBLAS on
chunks of vocabulary columns; in bf16 its grad_hidden is rounded once per chunk, so it drifts further
from eager's than the tiles' fp32 sums do (the benchmark prints both errors).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from frugal.kernels.fused_linear_cross_entropy import autocast_inputs, check_inputs


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, n_tokens, n_vocab, n_embd,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    """hidden[rows] @ weight[cols].T in fp32, BLOCK_D columns of the width at a time: (BLOCK_N, BLOCK_V)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, n_embd, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        h = tl.load(h_ptr + rows.to(tl.int64)[:, None] * n_embd + d[None, :],
                    mask=(rows[:, None] < n_tokens) & (d[None, :] < n_embd), other=0.0)         # (BLOCK_N, BLOCK_D)
        w = tl.load(w_ptr + cols.to(tl.int64)[None, :] * n_embd + d[:, None],
                    mask=(cols[None, :] < n_vocab) & (d[:, None] < n_embd), other=0.0)          # (BLOCK_D, BLOCK_V)
        if UPCAST:                                                 # see _launch_args
            h, w = h.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision="ieee")            # ieee: fp32 inputs are not rounded to tf32
    return acc


@triton.jit
def lse_kernel(h_ptr, w_ptr, targets_ptr, lse_ptr, target_logit_ptr, n_tokens, n_vocab, n_embd, vocab_per_split,
               ignore_index,
               BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    """Program (i, j): log-sum-exp of token block i's logits over vocabulary split j, into lse[j, rows], and
    the target's logit where split j holds it (0 elsewhere), into target_logit[j, rows].

    An online log-sum-exp (Milakov & Gimelshein 2018): a running max m and sum s of exp(z − m), rescaled
    when m grows, so logits of any magnitude never overflow.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    target = tl.load(targets_ptr + rows, mask=rows < n_tokens, other=ignore_index)
    target = tl.where(target == ignore_index, -1, target)                    # -1 matches no column
    v_start = tl.program_id(1) * vocab_per_split
    v_end = tl.minimum(v_start + vocab_per_split, n_vocab)
    m = tl.full((BLOCK_N,), -float("inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_target = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = _logits_tile(h_ptr, w_ptr, rows, cols, n_tokens, n_vocab, n_embd, BLOCK_N, BLOCK_V, BLOCK_D, UPCAST)
        z = tl.where(cols[None, :] < v_end, z, -float("inf"))                               # (BLOCK_N, BLOCK_V)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
        z_target += tl.sum(tl.where(cols[None, :] == target[:, None], z, 0.0), axis=1)
    out = tl.program_id(1) * n_tokens + rows
    tl.store(lse_ptr + out, m + tl.log(s), mask=rows < n_tokens)
    tl.store(target_logit_ptr + out, z_target, mask=rows < n_tokens)


@triton.jit
def grad_kernel(h_ptr, w_ptr, targets_ptr, lse_ptr, scale_ptr, grad_h_ptr, grad_w_ptr,
                n_tokens, n_vocab, n_embd, ignore_index,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
                GROUP_N: tl.constexpr):
    """One tile: recompute its logits z, g = scale · (exp(z − lse) − onehot(target)), then atomically
    grad_hidden[rows] += g @ weight[cols] and grad_weight[cols] += g.T @ hidden[rows], BLOCK_D columns at a time.

    Programs run GROUP_N token blocks across each vocabulary block before the next, so those rows of
    grad_hidden stay in L2 while every vocabulary block adds to them (the grouped order of Triton's matmul tutorial).
    """
    n_blocks, v_blocks = tl.cdiv(n_tokens, BLOCK_N), tl.cdiv(n_vocab, BLOCK_V)
    pid = tl.program_id(0)
    group = pid // (GROUP_N * v_blocks)
    first_n = group * GROUP_N
    group_size = tl.minimum(n_blocks - first_n, GROUP_N)
    pid_n = first_n + (pid % (GROUP_N * v_blocks)) % group_size
    pid_v = (pid % (GROUP_N * v_blocks)) // group_size
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok, col_ok = rows < n_tokens, cols < n_vocab

    z = _logits_tile(h_ptr, w_ptr, rows, cols, n_tokens, n_vocab, n_embd, BLOCK_N, BLOCK_V, BLOCK_D, UPCAST)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    target = tl.load(targets_ptr + rows, mask=row_ok, other=ignore_index)
    g = tl.exp(z - lse[:, None]) - tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
    keep = (row_ok & (target != ignore_index))[:, None] & col_ok[None, :]
    g = tl.where(keep, g * tl.load(scale_ptr), 0.0)                                     # (BLOCK_N, BLOCK_V)
    if not UPCAST:
        g = g.to(h_ptr.dtype.element_ty)                     # the tensor cores' input type, as eager's backward

    for d0 in range(0, n_embd, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < n_embd
        w = tl.load(w_ptr + cols.to(tl.int64)[:, None] * n_embd + d[None, :],
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)                   # (BLOCK_V, BLOCK_D)
        h = tl.load(h_ptr + rows.to(tl.int64)[:, None] * n_embd + d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)                   # (BLOCK_N, BLOCK_D)
        if UPCAST:
            w, h = w.to(tl.float32), h.to(tl.float32)
        tl.atomic_add(grad_h_ptr + rows.to(tl.int64)[:, None] * n_embd + d[None, :],
                      tl.dot(g, w, input_precision="ieee"), mask=row_ok[:, None] & d_ok[None, :])
        tl.atomic_add(grad_w_ptr + cols.to(tl.int64)[:, None] * n_embd + d[None, :],
                      tl.dot(tl.trans(g), h, input_precision="ieee"), mask=col_ok[:, None] & d_ok[None, :])


@triton.jit
def softmax_grad_kernel(z_ptr, row_stride, lse_ptr, targets_ptr, scale_ptr, n_cols, col0, ignore_index,
                        BLOCK_C: tl.constexpr):
    """Row r of a vocabulary chunk's logits (columns col0... of the vocabulary), overwritten in place by its
    gradient scale · (exp(z − lse[r]) − onehot(target[r])), or 0 for an ignored row."""
    r = tl.program_id(0)
    lse, target = tl.load(lse_ptr + r), tl.load(targets_ptr + r)
    scale = tl.where(target == ignore_index, 0.0, tl.load(scale_ptr))
    base = z_ptr + r.to(tl.int64) * row_stride
    for c0 in range(0, n_cols, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        z = tl.load(base + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        g = (tl.exp(z - lse) - tl.where(cols + col0 == target, 1.0, 0.0)) * scale
        tl.store(base + cols, g.to(z_ptr.dtype.element_ty), mask=cols < n_cols)


def backward_by_vocab_chunks(hidden, weight, targets, lse, scale, ignore_index: int, chunk: int, need_w: bool):
    """The backward with cuBLAS: chunk vocabulary columns of logits at a time, recomputed for every token, turned
    into their gradient in place; each chunk writes its own rows of grad_weight once and adds into grad_hidden."""
    n_tokens, n_vocab = hidden.shape[0], weight.shape[0]
    grad_h, grad_w = None, torch.empty_like(weight) if need_w else None
    block_c = min(triton.next_power_of_2(chunk), 4096 if hidden.device.type == "cuda" else 65536)
    for v0 in range(0, n_vocab, chunk):
        w = weight[v0:v0 + chunk]                                                       # (c, C)
        z = hidden @ w.t()                                                              # (N, c): the only logits
        softmax_grad_kernel[(n_tokens,)](z, z.stride(0), lse, targets, scale, w.shape[0], v0, ignore_index,
                                         BLOCK_C=block_c, num_warps=4 if hidden.device.type == "cuda" else 1)
        if need_w:
            torch.mm(z.t(), hidden, out=grad_w[v0:v0 + chunk])                          # (c, C), written once
        grad_h = z @ w if grad_h is None else grad_h.addmm_(z, w)                      # (N, C) += (N, c) @ (c, C)
    return grad_h, grad_w


@dataclass(frozen=True)
class TileConfig:
    """How the logits are cut into tiles and how many threads work on one."""

    block_n: int = 128       # tokens per tile
    block_v: int = 128       # vocabulary entries per tile
    block_d: int = 64        # width columns per step of a tile's matmul
    group_n: int = 8         # backward: token blocks that sweep the vocabulary together (their grad_hidden stays in L2)
    num_warps: int = 8       # warps (32 threads each) per program
    num_stages: int = 3      # software-pipeline depth of the loads


# The interpreter: the smallest tiles tl.dot allows, one warp.
INTERPRETER_TILES = TileConfig(block_n=16, block_v=16, block_d=16, group_n=2, num_warps=1, num_stages=1)


def _launch_args(tiles: TileConfig, device: torch.device) -> dict:
    """Kernel keyword arguments. In the interpreter every dot runs in fp32 (UPCAST): Triton 3.x's interpreter reads
    bf16 dot inputs as garbage, which the GPU compiler does not."""
    return dict(BLOCK_N=tiles.block_n, BLOCK_V=tiles.block_v, BLOCK_D=tiles.block_d, UPCAST=device.type != "cuda",
                num_warps=tiles.num_warps, num_stages=tiles.num_stages)


class LinearCrossEntropyTiledFunction(torch.autograd.Function):
    """Forward: per-token log-sum-exp from tiles, loss = lse − z[target]. Backward: tiles again, into both gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, reduction, vocab_per_split, tiles, vocab_chunk):
        n_tokens, n_embd = hidden.shape
        n_vocab = weight.shape[0]
        cfg = _launch_args(tiles, hidden.device)
        splits = triton.cdiv(n_vocab, vocab_per_split)
        lse_parts = torch.empty(splits, n_tokens, dtype=torch.float32, device=hidden.device)
        target_parts = torch.empty_like(lse_parts)
        if n_tokens:
            lse_kernel[(triton.cdiv(n_tokens, cfg["BLOCK_N"]), splits)](
                hidden, weight, targets, lse_parts, target_parts, n_tokens, n_vocab, n_embd, vocab_per_split,
                ignore_index, **cfg)
        lse = torch.logsumexp(lse_parts, dim=0)                  # (N,) log-sum-exp over the splits' log-sum-exps
        valid = targets != ignore_index
        losses = torch.where(valid, lse - target_parts.sum(0), 0.0)
        n_valid = valid.sum()
        loss = losses.sum() / n_valid if reduction == "mean" else losses.sum()          # all ignored: nan
        ctx.save_for_backward(hidden, weight, targets, lse, n_valid)
        ctx.ignore_index, ctx.reduction, ctx.tiles, ctx.vocab_chunk = ignore_index, reduction, tiles, vocab_chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, targets, lse, n_valid = ctx.saved_tensors
        n_tokens, n_embd = hidden.shape
        n_vocab = weight.shape[0]
        cfg = _launch_args(ctx.tiles, hidden.device)
        scale = (grad_loss.float() / (n_valid.clamp(min=1) if ctx.reduction == "mean" else 1)).reshape(1)
        need_h, need_w = ctx.needs_input_grad[:2]
        if ctx.vocab_chunk is not None and n_tokens:
            grad_h, grad_w = backward_by_vocab_chunks(hidden, weight, targets, lse, scale, ctx.ignore_index,
                                                      ctx.vocab_chunk, need_w)
            return grad_h if need_h else None, grad_w, None, None, None, None, None, None
        grad_h = torch.zeros(n_tokens, n_embd, dtype=torch.float32, device=hidden.device)   # atomics add in fp32
        grad_w = torch.zeros(n_vocab, n_embd, dtype=torch.float32, device=hidden.device)
        grid = (triton.cdiv(n_tokens, cfg["BLOCK_N"]) * triton.cdiv(n_vocab, cfg["BLOCK_V"]),)
        if n_tokens:
            grad_kernel[grid](hidden, weight, targets, lse, scale, grad_h, grad_w,
                              n_tokens, n_vocab, n_embd, ctx.ignore_index, GROUP_N=ctx.tiles.group_n, **cfg)
        return (grad_h.to(hidden.dtype) if need_h else None, grad_w.to(weight.dtype) if need_w else None,
                None, None, None, None, None, None)


def linear_cross_entropy_tiled(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               ignore_index: int = -100, reduction: str = "mean",
                               vocab_per_split: int = 4096, tiles: TileConfig | None = None,
                               vocab_chunk: int | None = None) -> torch.Tensor:
    """Cross-entropy of (hidden @ weight.T) against targets without materialising any logits; differentiable.

    hidden (N, C), weight (V, C), targets (N,) int64. vocab_per_split: the vocabulary one forward program
    covers (more splits, more programs to fill the GPU). tiles None: TileConfig() on a GPU, INTERPRETER_TILES on CPU.
    vocab_chunk None: the backward recomputes tiles in Triton; an int: vocab_chunk columns at a time with cuBLAS.
    """
    hidden, weight = autocast_inputs(hidden, weight)
    check_inputs(hidden, weight, targets, ignore_index, reduction)
    if tiles is None:
        tiles = TileConfig() if hidden.device.type == "cuda" else INTERPRETER_TILES
    if not isinstance(tiles, TileConfig):
        raise TypeError(f"tiles is {type(tiles).__name__}: pass a TileConfig(block_n=..., block_v=..., ...)")
    sizes = (tiles.block_n, tiles.block_v, tiles.block_d)
    if any(b < 16 or b & (b - 1) for b in sizes):
        raise ValueError(f"tiles {sizes}: block_n, block_v and block_d must be powers of two of at least 16 (tl.dot)")
    if not isinstance(vocab_per_split, int) or vocab_per_split < tiles.block_v or vocab_per_split % tiles.block_v:
        raise ValueError(f"vocab_per_split={vocab_per_split}: must be a positive multiple of block_v={tiles.block_v}")
    if vocab_chunk is not None and (not isinstance(vocab_chunk, int) or vocab_chunk < 1):
        raise ValueError(f"vocab_chunk={vocab_chunk}: None (tiles) or a positive number of vocabulary columns")
    return LinearCrossEntropyTiledFunction.apply(hidden, weight, targets, ignore_index, reduction, vocab_per_split,
                                                 tiles, vocab_chunk)
