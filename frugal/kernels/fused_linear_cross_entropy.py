"""The output projection and the cross-entropy, chunk by chunk over tokens: the (tokens × vocab) logits never exist.

At vocabulary 50304 the logits of 8k tokens are 1.6 GB in fp32, and eager autograd keeps several copies
(logits, log-probabilities, their gradients). Here each chunk of c tokens makes its c × V logits, turns
them in place into their gradient, and folds that into grad_hidden and grad_weight at once, as in
Liger-Kernel (Hsu et al. 2024, section 3.3). The mechanism (chunking, gradients in the forward pass) is
plain PyTorch; the Triton kernel is the per-row softmax, loss and gradient written over the logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from frugal.kernels import check_reachable

from frugal.measure import measure_peak_memory, measure_time


@triton.jit
def linear_cross_entropy_kernel(logits_ptr, row_stride, targets_ptr, loss_ptr, scale_ptr, n_rows, n_vocab,
                                ignore_index,
                                ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Each row of logits z: loss = logsumexp(z) − z[target], then z is overwritten by its gradient,
    scale · (softmax(z) − onehot(target)), scale being d(loss)/d(row loss) (1/n_valid for the mean).

    logsumexp in one pass with a running max (online softmax, Milakov & Gimelshein 2018, algorithm 3);
    an ignored row gets loss 0 and gradient 0. ROWS rows per program: 1 on a GPU, many in the interpreter.
    """
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    rows = tl.minimum(rows, n_rows - 1)                   # past-the-end rows redo the last one, never stored
    base = logits_ptr + rows.to(tl.int64)[:, None] * row_stride                # (ROWS, 1) row starts
    target = tl.load(targets_ptr + rows)
    m = tl.zeros([ROWS], dtype=tl.float32) - float("inf")   # running max
    s = tl.zeros([ROWS], dtype=tl.float32)                  # running sum of exp(z − m)
    for start in range(0, n_vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)[None, :]
        z = tl.load(base + cols, mask=cols < n_vocab, other=-float("inf")).to(tl.float32)   # (ROWS, BLOCK_V)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
    lse = m + tl.log(s)
    valid = target != ignore_index
    z_target = tl.load(logits_ptr + rows.to(tl.int64) * row_stride + tl.where(valid, target, 0)).to(tl.float32)
    tl.store(loss_ptr + rows, tl.where(valid, lse - z_target, 0.0), mask=row_ok)
    scale = tl.load(scale_ptr)
    for start in range(0, n_vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)[None, :]
        mask = (cols < n_vocab) & row_ok[:, None]
        z = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        grad = (tl.exp(z - lse[:, None]) - tl.where(cols == target[:, None], 1.0, 0.0)) * scale
        tl.store(base + cols, tl.where(valid[:, None], grad, 0.0).to(logits_ptr.dtype.element_ty), mask=mask)


# The grad_weight update of a chunk of c rows reads and writes the (V, C) gradient once for 2·V·C·c FLOPs:
# c / element_size FLOPs per byte. A GPU computes at full speed past its ridge point (peak FLOP/s over
# bandwidth; Williams et al. 2009): ~300 FLOP/byte for an H100's bf16 (989 TFLOP/s / 3.35 TB/s), ~200
# for an A100's, ~165 for an H200's. Chunks of 2x the highest ridge keep every such GPU compute-bound.
RIDGE_FLOP_PER_BYTE = 300
MAX_CHUNK_BYTES = 2 ** 30        # the bound on one chunk's logits, whatever the GPU wants


def default_chunk_size(n_tokens: int, n_vocab: int, *, element_size: int = 4,
                       max_chunk_bytes: int = MAX_CHUNK_BYTES) -> int:
    """Tokens per chunk: enough rows to put grad_weight's update past the ridge, within max_chunk_bytes of logits."""
    fill = triton.next_power_of_2(2 * RIDGE_FLOP_PER_BYTE * element_size)
    fit = max(1, max_chunk_bytes // max(1, n_vocab * element_size))
    fit = 1 << (fit.bit_length() - 1)                                   # largest power of two that fits
    return max(1, min(n_tokens, fill, fit))


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward only scales them by grad_output."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_size, reduction):
        n_tokens = hidden.shape[0]
        n_vocab = weight.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None                       # (V, C) in weight's dtype, accumulated by cuBLAS (fp32 inside each matmul)
        losses = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
        n_valid = (targets != ignore_index).sum()                            # mean over tokens not ignored
        # d(loss)/d(loss of one token): 1/n_valid for the mean, 1 for the sum; a tensor, so no host sync
        scale = (1.0 / n_valid.clamp(min=1).float() if reduction == "mean"
                 else torch.ones((), device=hidden.device)).reshape(1)
        on_gpu = hidden.device.type == "cuda"
        block_v = min(triton.next_power_of_2(n_vocab), 4096 if on_gpu else 65536)
        rows = 1 if on_gpu else 64                                           # the interpreter is fast on wide tiles
        for start in range(0, n_tokens, chunk_size):
            h = hidden[start:start + chunk_size]                            # (c, C)
            logits = h @ weight.t()                                          # (c, V): the only logits alive
            c = h.shape[0]
            linear_cross_entropy_kernel[(triton.cdiv(c, rows),)](
                logits, logits.stride(0), targets[start:start + c], losses[start:start + c], scale, c, n_vocab,
                ignore_index, ROWS=rows, BLOCK_V=block_v, num_warps=8 if on_gpu else 1)
            # logits now holds d(loss)/d(logits) of these rows, (c, V)
            if need_h:
                torch.mm(logits, weight, out=grad_h[start:start + c])         # (c, C), written in place
            if need_w:                                                       # (V, C) += (V, c) @ (c, C)
                grad_w = logits.t() @ h if grad_w is None else grad_w.addmm_(logits.t(), h)
            del logits
        if need_w and grad_w is None:                                        # no tokens at all
            grad_w = torch.zeros_like(weight)
        loss = losses.sum()
        if reduction == "mean":
            loss = loss / n_valid                                            # all ignored: nan, as F.cross_entropy
        ctx.save_for_backward(grad_h, grad_w)
        ctx.scaled = False
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.scaled:
            raise RuntimeError("backward ran twice through linear_cross_entropy (retain_graph=True): its gradients "
                               "were made in the forward pass and scaled in place once; run the forward again")
        ctx.scaled = True
        grad_h, grad_w = ctx.saved_tensors
        # in place: a scaled copy of grad_weight would be one more (V, C) tensor at the peak
        return (None if grad_h is None else grad_h.mul_(grad_loss.to(grad_h.dtype)),
                None if grad_w is None else grad_w.mul_(grad_loss.to(grad_w.dtype)), None, None, None, None)


def check_inputs(hidden, weight, targets, ignore_index: int, reduction: str) -> None:
    """The checks both linear cross-entropies share: shapes, dtypes, devices, labels, reduction."""
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.device != hidden.device:
            raise ValueError(f"hidden is on {hidden.device} but {name} on {t.device}: move them to one device")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: need (N, C) and (V, C); "
                         f"flatten batch and time first (hidden.view(-1, C))")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets has shape {tuple(targets.shape)}: need ({hidden.shape[0]},), one per row of hidden")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets is {targets.dtype}: class indices must be int64 (targets.long())")
    if hidden.dtype != weight.dtype or hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"hidden is {hidden.dtype} and weight {weight.dtype}: need one float dtype for both")
    if not (hidden.is_contiguous() and weight.is_contiguous() and targets.is_contiguous()):
        raise ValueError("hidden, weight and targets must be contiguous (chunks are row slices): pass .contiguous()")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: use 'mean' or 'sum'")
    n_vocab = weight.shape[0]
    bad = ((targets < 0) | (targets >= n_vocab)) & (targets != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"targets outside [0, {n_vocab}) that are not ignore_index={ignore_index}: check the labels")
    check_reachable(hidden)


def autocast_inputs(hidden: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under torch.autocast, hidden and weight in autocast's dtype, as nn.Linear would see them (differentiably)."""
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        return hidden.to(dtype), weight.to(dtype)
    return hidden, weight


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk_size: int | None = None,
                         reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of (hidden @ weight.T) against targets, chunk_size tokens at a time; differentiable.

    hidden (N, C), weight (V, C) as nn.Linear stores it, targets (N,) int64. chunk_size None = default_chunk_size.
    """
    hidden, weight = autocast_inputs(hidden, weight)
    check_inputs(hidden, weight, targets, ignore_index, reduction)
    if chunk_size is None:
        chunk_size = default_chunk_size(hidden.shape[0], weight.shape[0], element_size=hidden.element_size())
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be an integer of at least 1 token")
    return LinearCrossEntropyFunction.apply(hidden, weight, targets, ignore_index, chunk_size, reduction)


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """The unfused head: all N × V logits, then F.cross_entropy (as TinyGPT does by default)."""
    return F.cross_entropy((hidden @ weight.t()).float(), targets, ignore_index=ignore_index, reduction=reduction)


def estimate_linear_cross_entropy_memory(n_tokens: int, n_vocab: int, n_embd: int, chunk_size: int | None,
                                         element_size: int = 4) -> int:
    """Peak bytes of the head, inputs included: chunk_size None = unfused. A model, not a measurement.

    Unfused: the logits, an fp32 copy if they are not fp32, fp32 log-probabilities and one fp32 gradient
    of them alive at once. Chunked: grad_hidden, grad_weight (both in the inputs' dtype) and one chunk of logits.
    """
    s = element_size
    inputs = n_tokens * n_embd * s + n_vocab * n_embd * s
    if chunk_size is None:
        return inputs + n_tokens * n_vocab * (s + (4 if s < 4 else 0) + 4 + 4)
    c = min(chunk_size, n_tokens)
    return inputs + n_tokens * n_embd * s + n_vocab * n_embd * s + c * n_vocab * s


def benchmark_linear_cross_entropy(n_tokens: int, n_vocab: int, n_embd: int, device: torch.device | str,
                                   dtype: torch.dtype = torch.float32, chunk_sizes=(None,),
                                   repeats: int = 10, extra: dict | None = None) -> list[dict]:
    """Forward + backward into both gradients: time and peak memory above the inputs (measured on CUDA,
    estimated elsewhere) of the unfused head, ours at each chunk size, and each `extra` name -> fn(h, w, t)."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n_tokens, n_embd, device=device, generator=g).to(dtype).requires_grad_()
    weight = (0.02 * torch.randn(n_vocab, n_embd, device=device, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(n_vocab, (n_tokens,), device=device, generator=g)
    impls = {"unfused head": (lambda: linear_cross_entropy_reference(hidden, weight, targets), None)}
    for c in chunk_sizes:
        chunk = default_chunk_size(n_tokens, n_vocab, element_size=hidden.element_size()) if c is None else c
        impls[f"chunked (ours), chunk={chunk}"] = (lambda chunk=chunk: linear_cross_entropy(hidden, weight, targets,
                                                                                           chunk_size=chunk), chunk)
    for name, fn in (extra or {}).items():
        impls[name] = (lambda fn=fn: fn(hidden, weight, targets), "n/a")
    inputs = hidden.nbytes + weight.nbytes + targets.nbytes
    rows = []
    for name, (fn, chunk) in impls.items():
        step = lambda: torch.autograd.grad(fn(), (hidden, weight))
        t = measure_time(step, device, warmup=2, repeats=repeats).median_s
        peak = measure_peak_memory(step, device)
        est = (estimate_linear_cross_entropy_memory(n_tokens, n_vocab, n_embd, chunk, hidden.element_size())
               if chunk != "n/a" else None)
        rows.append({"impl": name, "tokens": n_tokens, "vocab": n_vocab, "n_embd": n_embd, "dtype": str(dtype),
                     "fwd+bwd ms": t * 1e3,
                     "peak above inputs (measured)": None if peak is None else peak - torch.cuda.memory_allocated(device),
                     "peak above gradients (measured)": None if peak is None else
                     peak - torch.cuda.memory_allocated(device) - hidden.nbytes - weight.nbytes,
                     "peak above inputs (estimated)": None if est is None else est - inputs})
    base = rows[0]
    for r in rows:
        r["time vs unfused"] = r["fwd+bwd ms"] / base["fwd+bwd ms"]
        if base["peak above inputs (measured)"]:
            r["memory vs unfused"] = r["peak above inputs (measured)"] / base["peak above inputs (measured)"]
    return rows
