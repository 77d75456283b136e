"""The optional speed path of frugal.fp8: Float8Linear's three torch._scaled_mm matmuls with one-pass casts.

frugal/fp8.py is the lesson and reads without this module. Its eager path is slower than bf16 (0.74x at
8192^3 on an H200), and its host work alone (about 0.4 ms a call) outlasts a 4096^3 matmul. Fixed here:
- a cast is four passes over memory with fp32 intermediates (x.float(), ·scale, clamp, .to(fp8)), and its scale
  six small ops after an amax: here two Triton launches (frugal.kernels.fp8_cast) compute amax, scale and 1/scale
  on the GPU and write 1 byte per element; under delayed scaling the cast takes the amax in its own pass;
- the backward matmuls need transposed operands (cuBLASLt takes A row-major, B column-major), which eager makes
  with .t().contiguous() copies: here the same pass writes qᵀ beside q (Transformer Engine's cast-transpose);
- the fp32 master weight is re-cast on every call, and on every recomputed forward: here its fp8 copies (q and
  qᵀ, 2 bytes a weight) are kept until the weight changes. An in-place edit moves the weight's version counter,
  but fused AdamW (train.make_optimizer's on CUDA) moves none, so a backward that computes grad_weight also
  drops the copies: the optimizer step it feeds changes the weight before the next forward;
- a cast is a pass of its own over the input, which no kernel makes cheaper than 3 bytes an element: with
  layer.input_gelu (fuse_gelu_into_float8) the GELU before the layer runs inside the input's cast instead, so
  the bf16 activation is never written; GELU's backward is eager's own kernel on the input it kept;
- its inf/NaN check reads each amax on the host (a sync per cast, the GPU idle while the host catches up):
  here the kernels mark an inf/NaN amax in the layer's GPU state, one copy a call sends it to pinned host memory
  without waiting, and it is read on the layer's next call: still an error, raised a call or more late.
The seam is Float8Linear.forward, which calls float8_linear(x, layer, out_dtype) when the layer runs on
torch._scaled_mm with Triton there. Scales follow the core's recipes bit for bit (tests/test_fp8.py checks),
and the matmuls are the core's calls with the same operands, so outputs and gradients are identical to it.
"""
from __future__ import annotations

import collections
import functools
import struct

import torch

from frugal.device import has_triton

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
ROLES = {"input": (E4M3, 0), "weight": (E4M3, 1), "grad_output": (E5M2, 2)}   # fp8 format, slot in the state
SLOTS = 8   # flag copies a layer keeps in flight: a step makes two (forward, backward), so four steps of slack


def cast_passes(recipe: str = "delayed", gelu: str = "inside", transposed: bool = True,
                source_bytes: int = 2) -> list[tuple[str, int]]:
    """The passes over memory that turn an activation x into its fp8 operands, and the bytes each moves per
    element: gelu "none" casts x, "before" runs an eager GELU first (it writes gelu(x) and the cast reads it back),
    "inside" computes the GELU in the cast's registers. Current scaling adds the amax pass; the cast writes q
    and, with transposed (a weight gradient is wanted), qᵀ: 1 byte each. Counted, so true on any device."""
    if recipe not in ("current", "delayed") or gelu not in ("none", "before", "inside"):
        raise ValueError(f"recipe={recipe!r}, gelu={gelu!r}: pick recipe 'current' or 'delayed' and gelu "
                         f"'none', 'before' or 'inside'")
    passes = [("eager GELU", 2 * source_bytes)] if gelu == "before" else []
    if recipe == "current":
        passes.append(("amax" + (" of gelu(x)" if gelu == "inside" else ""), source_bytes))
    passes.append(("cast" + (" with the GELU" if gelu == "inside" else ""), source_bytes + 1 + int(transposed)))
    return passes


def fusable(x: torch.Tensor) -> bool:
    """The speed path runs on a non-empty CUDA tensor where Triton is installed (the caller checked the rest)."""
    return x.is_cuda and x.numel() > 0 and has_triton()


@functools.cache
def fp32_transposes_right(device: torch.device) -> bool:
    """Whether fp8_cast's int32-lane transpose of fp32 input equals q.t() here, checked once per GPU (Triton 3.6
    on an H200 wrote wrong transposes of fp8 cast from fp32 tiles; without it torch copies the transpose)."""
    from frugal.kernels.fp8_cast import fp8_cast
    for shape in ((512, 256), (256, 128), (300, 200)):
        x = torch.randn(*shape, device=device) * 100
        for dtype in (E4M3, E5M2):
            q, qt = fp8_cast(x, torch.ones((), device=device), dtype, True, True, wide_transpose=True)
            if not torch.equal(qt.view(torch.uint8), q.t().contiguous().view(torch.uint8)):
                return False
    return True


class _State:
    """A layer's working state on its device: the kernels' int32 scratch and inf/NaN marks, and the pinned host
    slots (with an event each) its marks travel to. Made once per layer, so a call allocates nothing here."""

    def __init__(self, device: torch.device):
        from frugal.kernels.fp8_cast import new_state
        cuda = device.type == "cuda"
        self.device, self.gpu = device, new_state(device)
        self.slots = [(torch.zeros(self.gpu.numel(), dtype=torch.int32, pin_memory=cuda),
                       torch.cuda.Event() if cuda else _Arrived()) for _ in range(SLOTS)]
        self.in_flight, self.next = collections.deque(), 0
        self.wide = fp32_transposes_right(device) if cuda else True


class _Arrived:
    """Off a GPU (Triton's interpreter, in tests) a copy has arrived when copy_ returns."""

    def record(self):
        pass

    def query(self) -> bool:
        return True

    def synchronize(self):
        pass


def _state(layer, device: torch.device) -> _State:
    st = layer.__dict__.get("_fp8_state")
    if st is None or st.device != device:
        st = layer._fp8_state = _State(device)
    return st


def _cast(layer, st: _State, t: torch.Tensor, role: str, rows: bool, transposed: bool, gelu: bool = False):
    """(1/scale, q, qᵀ) of t (of gelu(t) with gelu) under the layer's recipe: current scaling's amax pass, then
    the cast; delayed scaling's cast pushes the amax into the layer's history."""
    from frugal.kernels.fp8_cast import META_INV, fp8_cast, fp8_scale
    dtype, slot = ROLES[role]
    history = getattr(layer, f"amax_history_{role}") if layer.recipe == "delayed" else None
    meta = fp8_scale(t, dtype, st.gpu, history, slot, gelu=gelu)
    q, qt = fp8_cast(t, meta, dtype, rows, transposed, history=history, state=st.gpu, role=slot,
                     wide_transpose=st.wide, gelu=gelu)
    return meta[META_INV], q, qt


# ----------------------------------------------------------------------------- the inf/NaN check, without a sync

def _send_flags(layer, st: _State) -> None:
    """Start copying the layer's inf/NaN marks to its next pinned host slot; an event marks their arrival."""
    if not layer.check_finite:
        return
    if len(st.in_flight) == SLOTS:
        check_arrived(layer, wait_oldest=True)                  # every slot busy: wait for the oldest copy
    host, event = st.slots[st.next]
    st.next = (st.next + 1) % SLOTS
    host.copy_(st.gpu, non_blocking=True)
    event.record()
    st.in_flight.append((host, event))


def check_arrived(layer, wait_oldest: bool = False) -> None:
    """Raise if marks that have reached the host say an amax was inf or NaN; marks still on their way are
    read on a later call (wait_oldest: wait for the oldest)."""
    st = layer.__dict__.get("_fp8_state")
    while st is not None and st.in_flight and (wait_oldest or st.in_flight[0][1].query()):
        wait_oldest = False
        host, event = st.in_flight.popleft()
        event.synchronize()
        marks = host.tolist()                                    # [4 + slot]: 0 while every amax was finite
        for role, (_, slot) in ROLES.items():
            if marks[4 + slot]:
                a = struct.unpack("f", struct.pack("i", marks[4 + slot]))[0]
                st.gpu[4:].zero_()
                st.in_flight.clear()
                label = f"{role} of {layer.layer_name}" if layer.layer_name else role
                raise ValueError(f"the {label} tensor had an inf or NaN (amax={a}) at a cast: fp8 has no scale "
                                 f"for it (seen a call or more late: the check waits for no GPU work). Check the "
                                 f"inputs for inf/NaN; if it is a gradient, lower the learning rate, or train "
                                 f"this layer in bf16 until it is stable")


# ----------------------------------------------------------------------------- casts and matmuls

def weight_fp8(layer, st: _State, weight: torch.Tensor):
    """(1/scale, w_qᵀ view (K, N), w_qtᵀ view (N, K)) of the layer's weight, cast once per weight version and
    kept on the layer (not saved by state_dict) until a backward computes grad_weight: every forward without
    gradients and a recomputed forward reuse it. The views are the column-major operands _scaled_mm takes."""
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.shape)
    cached = layer.__dict__.get("_fp8_weight")
    if cached is None or cached[0] != key:
        inv, w_q, w_qt = _cast(layer, st, weight.detach(), "weight", True, True)   # (N, K), (K, N)
        cached = layer._fp8_weight = (key, inv, w_q.t(), w_qt.t())
    return cached[1:]


def _forward(x, weight, bias, layer, out_dtype, need_weight_grad, need_input_grad=False):
    """y = x Wᵀ + b in fp8 (gelu(x) Wᵀ + b with layer.input_gelu, the GELU inside the input's cast), and what
    backward needs: (y, (x_qᵀ or None, 1/s_x, w_qt view, 1/s_w, x or None)); x is kept only for GELU's backward."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()                   # (M, K)
    st = _state(layer, x.device)
    gelu = layer.input_gelu
    inv_x, x_q, x_qt = _cast(layer, st, x2, "input", True, need_weight_grad, gelu)   # (M, K), (K, M) or None
    inv_w, w_q_cm, w_qt_cm = weight_fp8(layer, st, weight)
    y = torch._scaled_mm(x_q, w_q_cm, scale_a=inv_x, scale_b=inv_w, out_dtype=torch.bfloat16,
                         use_fast_accum=True)                       # (M, N)
    if bias is not None:
        y = y + bias
    _send_flags(layer, st)
    y = y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0])     # (..., N)
    return y, (x_qt, inv_x, w_qt_cm, inv_w, x2 if gelu and need_input_grad else None)


class Float8MatmulFused(torch.autograd.Function):
    """frugal.fp8._Float8Matmul with one-pass casts: saves xᵀ in fp8 for grad_weight (x itself is only read by
    the forward matmul), and reads the weight's cached fp8 copies. Autocast leaves _scaled_mm alone."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, out_dtype, need_weight_grad):
        y, saved = _forward(x, weight, bias, layer, out_dtype, need_weight_grad, x.requires_grad)
        ctx.save_for_backward(*saved)
        ctx.layer, ctx.has_bias = layer, bias is not None
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x_qt, inv_x, w_qt_cm, inv_w, x_pre = ctx.saved_tensors     # x_pre: the input before a fused GELU
        layer = ctx.layer
        g = grad_y.reshape(-1, grad_y.shape[-1]).contiguous()           # (M, N)
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and x_qt is not None
        grad_x = grad_w = grad_b = None
        if want_x or want_w:
            st = _state(layer, g.device)
            inv_g, g_q, g_qt = _cast(layer, st, g, "grad_output", want_x, want_w)   # (M, N), (N, M)
            if want_x:
                grad_x = torch._scaled_mm(g_q, w_qt_cm, scale_a=inv_g, scale_b=inv_w, out_dtype=torch.bfloat16)
                grad_x = grad_x.to(ctx.x_dtype)                                             # (M, K)
                if x_pre is not None:                    # through the fused GELU: eager's own backward kernel
                    grad_x = torch.ops.aten.gelu_backward(grad_x, x_pre)
                grad_x = grad_x.reshape(ctx.x_shape)
            if want_w:
                grad_w = torch._scaled_mm(g_qt, x_qt.t(), scale_a=inv_g, scale_b=inv_x,
                                          out_dtype=torch.bfloat16).to(ctx.w_dtype)         # (N, K)
                layer.__dict__.pop("_fp8_weight", None)      # a step follows: the next forward re-casts
            _send_flags(layer, st)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.float().sum(0).to(ctx.w_dtype)
        return grad_x, grad_w, grad_b, None, None, None


def float8_linear(x: torch.Tensor, layer, out_dtype: torch.dtype) -> torch.Tensor:
    """layer(x) through the speed path; x_qᵀ is written only when a weight gradient will be asked for, and
    without any gradient to record autograd is skipped (the same kernels, one Function call less)."""
    check_arrived(layer)
    if not torch.is_grad_enabled() or not (x.requires_grad or layer.weight.requires_grad
                                           or (layer.bias is not None and layer.bias.requires_grad)):
        return _forward(x, layer.weight, layer.bias, layer, out_dtype, False)[0]
    need_weight_grad = layer.weight.requires_grad
    return Float8MatmulFused.apply(x, layer.weight, layer.bias, layer, out_dtype, need_weight_grad)
