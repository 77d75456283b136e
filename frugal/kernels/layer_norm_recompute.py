"""LayerNorm recomputed from the statistics forward kept: one pass, the residual add and the cast folded in.

Selective recompute (lesson 02) drops LayerNorm's output and rebuilds it in backward. Eager PyTorch does that
in three passes over memory: the residual add writes h in fp32, LayerNorm reads h and writes y in fp32 (and
reduces every row again for its mean and 1/std), autocast's cast reads y and writes it in bf16. Forward already
computed the mean and 1/std (one float per row each, kept instead of dropped); with them the output is a
pointwise function of x:

    h = x + r                                   (optional, written once: LayerNorm's backward needs it)
    y = weight · (rstd · (h − mean)) + bias     (one fused multiply-add, rounded once to y's dtype)

which is PyTorch's own CUDA formula, so on a GPU y comes out bit-identical to layer_norm followed by the cast.
A pre-norm block normalises x twice, LayerNorm(x) and LayerNorm(x + r): the same pass can write both, so the
block's recomputation reads x once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from frugal.kernels import check_reachable


@triton.jit
def _norm_row(h, row, cols, mask, mean_ptr, rstd_ptr, w_ptr, b_ptr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """w·(rstd·(h − mean)) + b for one row, in fp32."""
    y = tl.load(rstd_ptr + row) * (h - tl.load(mean_ptr + row))
    if HAS_W:
        y = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) * y
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return y


@triton.jit
def layer_norm_apply_kernel(x_ptr, r_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, h_ptr, y_ptr,
                            xmean_ptr, xrstd_ptr, xw_ptr, xb_ptr, xy_ptr, n_cols,
                            HAS_R: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                            HAS_XN: tl.constexpr, XN_HAS_W: tl.constexpr, XN_HAS_B: tl.constexpr,
                            BLOCK_N: tl.constexpr):
    """One program per row: h = x (+ r), y = w·(rstd·(h − mean)) + b in fp32, stored in y's dtype; with HAS_XN
    also x's own LayerNorm (its statistics and weights at xmean.., stored at xy), from the same read of x."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    offsets = row * n_cols + cols
    h = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_XN:
        yx = _norm_row(h, row, cols, mask, xmean_ptr, xrstd_ptr, xw_ptr, xb_ptr, XN_HAS_W, XN_HAS_B)
        tl.store(xy_ptr + offsets, yx.to(xy_ptr.dtype.element_ty), mask=mask)
    if HAS_R:
        h = h + tl.load(r_ptr + offsets, mask=mask, other=0.0).to(tl.float32)   # eager's promoted add: one rounding
        tl.store(h_ptr + offsets, h, mask=mask)
    y = _norm_row(h, row, cols, mask, mean_ptr, rstd_ptr, w_ptr, b_ptr, HAS_W, HAS_B)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def layer_norm_from_stats(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None,
                          bias: torch.Tensor | None, *, residual: torch.Tensor | None = None,
                          h_out: torch.Tensor | None = None, y_out: torch.Tensor | None = None,
                          out_dtype: torch.dtype | None = None, x_norm: tuple | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, y): h = x + residual (x itself without one), y = LayerNorm(h) over the last dim from its mean and rstd.

    x: float32, contiguous; residual: same shape, any float dtype, contiguous; mean, rstd: one float32 per row
    (what torch.native_layer_norm returns). h_out / y_out: tensors to write into (else new ones); out_dtype:
    y's dtype (default x's). x_norm = (mean, rstd, weight, bias, out): in the same pass also LayerNorm(x) itself,
    from its own statistics, into out (in out's dtype): a pre-norm block's first LayerNorm, whose input is the
    x of the residual add before its second, costs no second read of x.
    """
    if x.dtype != torch.float32 or not x.is_contiguous() or x.dim() == 0:
        raise ValueError(f"x is {x.dtype}, contiguous={x.is_contiguous()}: layer_norm_from_stats takes a "
                         f"contiguous float32 tensor (LayerNorm's input under autocast); pass x.float().contiguous()")
    n_cols = x.shape[-1]
    n_rows = x.numel() // max(n_cols, 1)
    stats = [mean, rstd] + ([] if x_norm is None else list(x_norm[:2]))
    if any(s.numel() != n_rows for s in stats):
        raise ValueError(f"statistics of {[s.numel() for s in stats]} values for {n_rows} rows: pass the mean and "
                         f"rstd torch.native_layer_norm returned for this x")
    if residual is not None and (residual.shape != x.shape or not residual.is_contiguous()):
        raise ValueError(f"residual has shape {tuple(residual.shape)} for x {tuple(x.shape)}: it must match "
                         f"and be contiguous")
    if x_norm is not None and (len(x_norm) != 5 or x_norm[4].shape != x.shape or not x_norm[4].is_contiguous()):
        raise ValueError("x_norm must be (mean, rstd, weight, bias, out) with out contiguous and shaped like x")
    check_reachable(x)
    h = x if residual is None else (h_out if h_out is not None else torch.empty_like(x))
    y = y_out if y_out is not None else torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    xmean, xrstd, xw, xb, xy = x_norm if x_norm is not None else (x, x, None, None, x)
    block = triton.next_power_of_2(n_cols)
    if n_rows:
        layer_norm_apply_kernel[(n_rows,)](
            x, residual if residual is not None else x, mean, rstd,
            weight if weight is not None else x, bias if bias is not None else x, h, y,
            xmean, xrstd, xw if xw is not None else x, xb if xb is not None else x, xy, n_cols,
            HAS_R=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None,
            HAS_XN=x_norm is not None, XN_HAS_W=xw is not None, XN_HAS_B=xb is not None,
            BLOCK_N=block, num_warps=4 if block <= 2048 else 8)
    return h, y
