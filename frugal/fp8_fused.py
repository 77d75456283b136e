"""The optional speed path of frugal.fp8: Float8Linear's three torch._scaled_mm matmuls with one-pass casts.

frugal/fp8.py is the lesson and reads without this module. Its eager path is slower than bf16 (0.62x at
8192^3 on an H200) for three reasons, each fixed here:
- a cast is four passes over memory with fp32 intermediates (x.float(), ·scale, clamp, .to(fp8)): here one
  Triton pass (frugal.kernels.fp8_cast) reads x once and writes 1 byte per element;
- the backward matmuls need transposed operands (cuBLASLt takes A row-major, B column-major), which eager makes
  with .t().contiguous() copies: here the same pass writes qᵀ beside q (Transformer Engine's cast-transpose);
- the fp32 master weight is re-cast on every call, and on every recomputed forward: here its fp8 copies (q and
  qᵀ, 2 bytes a weight) are kept until the weight changes (its version counter moves at optimizer.step()).
- its inf/NaN check reads each amax on the host (a sync per cast, the GPU idle while the host catches up):
  here the flags travel to pinned host memory without waiting and are read on the layer's next call, so an
  inf or NaN is still an error, raised one call after the cast that saw it.
The seam is Float8Linear.forward, which calls float8_linear(x, layer, out_dtype) when the layer runs on
torch._scaled_mm with Triton there. Scales still come from layer.scale_for (the core's recipes and checks), and
the matmuls are the core's calls with the same operands, so outputs and gradients are bit-identical to it.
"""
from __future__ import annotations

import functools

import torch

from frugal.device import has_triton

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def fusable(x: torch.Tensor) -> bool:
    """The speed path runs on a CUDA tensor where Triton is installed (the caller checked _scaled_mm's rules)."""
    return x.is_cuda and has_triton()


@functools.cache
def kernel_transposes_right(device: torch.device) -> bool:
    """Whether fp8_cast's transposed write equals q.t() here, checked once per GPU on fp32 tiles (Triton 3.6 on
    an H200 wrote wrong transposes from fp32 input before the cast rounded ahead of the transpose)."""
    from frugal.kernels.fp8_cast import fp8_cast
    x = torch.randn(256, 128, device=device) * 100
    for dtype in (E4M3, E5M2):
        q, qt = fp8_cast(x, torch.ones((), device=device), dtype, True, True)
        if not torch.equal(qt.view(torch.uint8), q.t().contiguous().view(torch.uint8)):
            return False
    return True


def _cast(t: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, rows: bool, transposed: bool):
    """fp8_cast (imported on a GPU only: frugal.kernels sets up Triton); the transpose by torch's copy where the
    kernel's own is not right."""
    from frugal.kernels.fp8_cast import fp8_cast
    if not transposed or kernel_transposes_right(t.device):
        return fp8_cast(t, scale, dtype, rows, transposed)
    q, _ = fp8_cast(t, scale, dtype, True, False)
    return (q if rows else None), q.t().contiguous()


# ----------------------------------------------------------------------------- the inf/NaN check, without a sync

SLOTS = 8   # flag copies a layer keeps in flight: a step makes two (forward, backward), so four steps of slack


def _send_flags(layer, pending: list) -> None:
    """Start copying isfinite of each pending (role, amax) to the layer's pinned host slots; an event marks its
    arrival. Slots and events are made once per layer and reused, so a call allocates nothing on the host."""
    if not pending:
        return
    if "_fp8_slots" not in layer.__dict__:
        layer._fp8_slots = [(torch.ones(3, dtype=torch.bool, pin_memory=True), torch.cuda.Event())
                            for _ in range(SLOTS)]
        layer._fp8_in_flight, layer._fp8_next = [], 0
    if len(layer._fp8_in_flight) == SLOTS:
        check_arrived(layer, wait_oldest=True)                  # every slot busy: wait for the oldest copy
    host, event = layer._fp8_slots[layer._fp8_next]
    layer._fp8_next = (layer._fp8_next + 1) % SLOTS
    flags = torch.isfinite(torch.stack([a for _, a in pending]))
    host[:len(pending)].copy_(flags, non_blocking=True)
    event.record()
    layer._fp8_in_flight.append(([r for r, _ in pending], [a for _, a in pending], host, event))
    pending.clear()


def check_arrived(layer, wait_oldest: bool = False) -> None:
    """Raise if a flag that has reached the host says an amax was inf or NaN; a flag still on its way is read
    on a later call (wait_oldest: wait for the oldest one)."""
    in_flight = layer.__dict__.get("_fp8_in_flight", [])
    while in_flight and (wait_oldest or in_flight[0][3].query()):
        wait_oldest = False
        roles, amaxes, host, event = in_flight.pop(0)
        event.synchronize()
        ok = host[:len(roles)]
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0])
            raise ValueError(f"the {roles[i]} tensor had an inf or NaN (amax={amaxes[i].item()}) at its last cast: "
                             f"fp8 has no scale for it (seen a call or more late: the check waits for no GPU "
                             f"work). Check the inputs for inf/NaN; if it is a gradient, lower the learning rate, "
                             f"or train this layer in bf16 until it is stable")


# ----------------------------------------------------------------------------- casts and matmuls

def weight_fp8(layer, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, w_q, w_qᵀ) of the layer's weight, cast once per weight version and kept on the layer (not saved
    by state_dict): the forward of every micro-batch, and a recomputed forward, reuse it."""
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.shape)
    cached = getattr(layer, "_fp8_weight", None)
    if cached is None or cached[0] != key:
        s_w = layer.scale_for(weight, "weight", layer._fp8_pending)
        w_q, w_qt = _cast(weight.detach(), s_w, E4M3, True, True)       # (N, K), (K, N)
        cached = layer._fp8_weight = (key, s_w, w_q, w_qt)
    return cached[1], cached[2], cached[3]


def _mm(a_q, s_a, b_q_colmajor, s_b, fast_accum: bool) -> torch.Tensor:
    """torch._scaled_mm on a row-major a and a column-major b, dequantised by 1/s_a·1/s_b, bf16 out."""
    return torch._scaled_mm(a_q, b_q_colmajor, scale_a=s_a.reciprocal(), scale_b=s_b.reciprocal(),
                            out_dtype=torch.bfloat16, use_fast_accum=fast_accum)


class Float8MatmulFused(torch.autograd.Function):
    """frugal.fp8._Float8Matmul with one-pass casts: saves xᵀ in fp8 for grad_weight (x itself is only read by
    the forward matmul), and reads the weight's cached fp8 copies."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, out_dtype, need_weight_grad):
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).contiguous()               # (M, K)
            s_x = layer.scale_for(x2, "input", layer._fp8_pending)
            x_q, x_qt = _cast(x2, s_x, E4M3, True, need_weight_grad)    # (M, K), (K, M) or None
            s_w, w_q, w_qt = weight_fp8(layer, weight)
            y = _mm(x_q, s_x, w_q.t(), s_w, fast_accum=True)            # (M, N)
            if bias is not None:
                y = y + bias
            _send_flags(layer, layer._fp8_pending)
        ctx.save_for_backward(x_qt, s_x, w_qt, s_w)
        ctx.layer, ctx.has_bias = layer, bias is not None
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        return y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0])  # (..., N)

    @staticmethod
    def backward(ctx, grad_y):
        x_qt, s_x, w_qt, s_w = ctx.saved_tensors
        with torch.autocast(grad_y.device.type, enabled=False):
            g = grad_y.reshape(-1, grad_y.shape[-1]).contiguous()       # (M, N)
            s_g = ctx.layer.scale_for(g, "grad_output", ctx.layer._fp8_pending)
            want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and x_qt is not None
            g_q, g_qt = _cast(g, s_g, E5M2, want_x, want_w)             # (M, N), (N, M)
            grad_x = grad_w = grad_b = None
            if want_x:
                grad_x = _mm(g_q, s_g, w_qt.t(), s_w, False).to(ctx.x_dtype).reshape(ctx.x_shape)   # (M, K)
            if want_w:
                grad_w = _mm(g_qt, s_g, x_qt.t(), s_x, False).to(ctx.w_dtype)                         # (N, K)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g.float().sum(0).to(ctx.w_dtype)
            _send_flags(ctx.layer, ctx.layer._fp8_pending)
        return grad_x, grad_w, grad_b, None, None, None


def float8_linear(x: torch.Tensor, layer, out_dtype: torch.dtype) -> torch.Tensor:
    """layer(x) through the speed path; x_qᵀ is written only when a weight gradient will be asked for."""
    need_weight_grad = torch.is_grad_enabled() and layer.weight.requires_grad
    check_arrived(layer)
    layer.__dict__.setdefault("_fp8_pending", [])
    return Float8MatmulFused.apply(x, layer.weight, layer.bias, layer, out_dtype, need_weight_grad)
