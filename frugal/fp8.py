"""fp8 training: per-tensor scaled e4m3/e5m2 casts and a Linear whose three matmuls run in fp8.

Micikevicius et al. 2022, "FP8 Formats for Deep Learning": e4m3 (max 448) for weights and activations,
e5m2 (max 57344) for gradients, each tensor multiplied by a scale that maps its amax onto the format's max
before the cast. On an NVIDIA GPU with fp8 tensor cores (compute capability 8.9+) the matmuls run through
torch._scaled_mm; elsewhere the same numerics are emulated (quantize, dequantize, fp32 matmul), so a CPU
loss curve shows what fp8 does to training and only the speed needs the hardware. On a GPU, Float8Linear takes
the optional speed path frugal.fp8_fused (one-pass casts, cached fp8 weights); this module reads without it.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from frugal import fp8_fused                # the optional speed path (one-pass casts, cached fp8 weights)
from frugal.device import has_fp8_matmul   # the hardware probe lives in device.py

E4M3 = torch.float8_e4m3fn   # weights and activations: 3 mantissa bits, max 448, no inf
E5M2 = torch.float8_e5m2     # gradients: 2 mantissa bits, max 57344, the range of fp16
ROLES = {"input": E4M3, "weight": E4M3, "grad_output": E5M2}   # the three tensors a Linear casts, and their format
RECIPES = ("current", "delayed")
BACKENDS = ("auto", "emulate", "scaled_mm")


def fp8_max(dtype: torch.dtype) -> float:
    """Largest finite value of an fp8 format, read from torch: 448 (e4m3), 57344 (e5m2)."""
    return float(torch.finfo(dtype).max)


# ----------------------------------------------------------------------------- scaling and casts

def amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as an fp32 scalar tensor on x's device (0 for an empty tensor, NaN if x holds one); no host sync.
    The infinity norm is that max in one pass, without writing |x| to memory first as x.abs().amax() would."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    return torch.linalg.vector_norm(x.detach(), float("inf")).float()


def check_amax(a: torch.Tensor, role: str) -> None:
    """Raise when an amax is inf or NaN: no scale can fit it into fp8 (this reads the value: one host sync)."""
    if not bool(torch.isfinite(a)):
        raise ValueError(f"the {role} tensor has an inf or NaN (amax={a.item()}): fp8 has no scale for it. "
                         f"Check the inputs for inf/NaN; if it is a gradient, lower the learning rate or scale the "
                         f"loss (fp16's loss scaler), or train this layer in bf16 until it is stable")


def _checked(a: torch.Tensor, role: str, check) -> None:
    """check: True raises now on an inf/NaN amax (a host sync); a list collects (role, amax) to check later, as
    the speed path does; False lets inf/NaN flow through."""
    if isinstance(check, list):
        check.append((role, a))
    elif check:
        check_amax(a, role)


def amax_to_scale(a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp8_max / amax: the factor mapping the largest |x| onto the format's max. An amax of 0 gives scale 1
    (an all-zero tensor casts exactly at any scale); a tiny amax gives at most fp32's max, never inf."""
    a = a.float()
    scale = (fp8_max(dtype) / a).clamp(max=torch.finfo(torch.float32).max)
    return torch.where(a > 0, scale, torch.ones_like(scale))


def compute_scale(x: torch.Tensor, dtype: torch.dtype, role: str = "tensor", check=True) -> torch.Tensor:
    """Current (dynamic) scaling: the scale of x from its own amax, as torchao's default recipe."""
    a = amax(x)
    _checked(a, role, check)
    return amax_to_scale(a, dtype)


def delayed_scale(x: torch.Tensor, dtype: torch.dtype, history: torch.Tensor, role: str = "tensor",
                  check=True) -> torch.Tensor:
    """Delayed scaling (Transformer Engine's recipe): the scale from the max of the last k amaxes, then x's amax
    is pushed in (history[0] newest, the oldest dropped). An all-zero history (the first step) scales from x's
    own amax instead, as torchao's delayed recipe did, rather than TE's scale of 1. history is updated in place."""
    a = amax(x)
    _checked(a, role, check)
    past = history.amax()
    scale = amax_to_scale(torch.where(past > 0, past, a), dtype)
    history.copy_(torch.roll(history, 1))
    history[0] = a
    return scale


def quantize(x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor) -> torch.Tensor:
    """x·scale cast to fp8, saturating: |x·scale| beyond the format's max clamps to ±max, never inf or NaN
    (torch's plain cast gives inf in e5m2). Within range it is exactly torch's `(x·scale).to(dtype)`."""
    m = fp8_max(dtype)
    return (x.float() * scale).clamp(-m, m).to(dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The value an fp8 tensor stands for: q / scale, in dtype."""
    return (q.float() / scale).to(dtype)


# ----------------------------------------------------------------------------- the matmul and its backend

def _shape_problem(m: int, k: int, n: int) -> str | None:
    """Why torch._scaled_mm would refuse this layer's matmuls, or None. The three matmuls are (M,K)x(K,N),
    (M,N)x(N,K) and (N,M)x(M,K), so M, K and N each end up as an inner or outer dim cuBLASLt needs % 16."""
    for label, v in (("in_features K", k), ("out_features N", n),
                     ("token count M (batch x sequence, the inner dim of the weight-gradient matmul)", m)):
        if v % 16:
            return (f"torch._scaled_mm needs every matmul dim a multiple of 16 (cuBLASLt's fp8 kernels read "
                    f"16-element aligned tiles), and the {label} = {v} is not; pad it to {-(-v // 16) * 16}, or use "
                    f"backend='auto', which emulates such a layer")
    return None


def choose_backend(backend: str, device: torch.device, m: int, k: int, n: int) -> str:
    """'emulate' or 'scaled_mm' for one call. 'auto' takes the real kernel where it runs and emulates elsewhere
    (warning on a GPU without fp8); 'scaled_mm' raises instead of falling back."""
    if backend not in BACKENDS:
        raise ValueError(f"fp8 backend={backend!r}: pick one of {BACKENDS}")
    if backend == "emulate":
        return "emulate"
    problem = _shape_problem(m, k, n)
    if problem is not None:
        if backend == "scaled_mm":
            raise ValueError(problem)
        return "emulate"
    if not has_fp8_matmul(device):
        where = (f"{torch.cuda.get_device_name(device)} (compute capability "
                 f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
                 if device.type == "cuda" else f"device {device.type!r}")
        why = f"{where} has no fp8 tensor cores (torch._scaled_mm needs an NVIDIA GPU of compute capability 8.9+)"
        if backend == "scaled_mm":
            raise RuntimeError(f"backend='scaled_mm': {why}; use backend='auto' (emulation runs instead: the same "
                               f"fp8 numerics, matmuls in fp32) or 'emulate'")
        if device.type == "cuda":
            warnings.warn(f"{why}: emulating fp8 instead, slower than bf16", stacklevel=2)
        return "emulate"
    return "scaled_mm"


def scaled_matmul(a_q: torch.Tensor, s_a: torch.Tensor, b_q: torch.Tensor, s_b: torch.Tensor, backend: str,
                  use_fast_accum: bool = False) -> torch.Tensor:
    """(a_q / s_a) @ (b_q / s_b) for fp8 a (M, K) and b (K, N): torch._scaled_mm (bf16 out) or emulated in fp32.

    _scaled_mm multiplies the product by scale_a·scale_b, so it gets the dequantization scales 1/s; cuBLASLt
    wants a row-major and b column-major, which `.t().contiguous().t()` makes (free when b already is)."""
    if backend == "emulate":
        return dequantize(a_q, s_a) @ dequantize(b_q, s_b)                       # (M, N) fp32
    return torch._scaled_mm(a_q.contiguous(), b_q.t().contiguous().t(), scale_a=s_a.reciprocal(),
                            scale_b=s_b.reciprocal(), out_dtype=torch.bfloat16, use_fast_accum=use_fast_accum)


class _Float8Matmul(torch.autograd.Function):
    """y = x Wᵀ + b, grad_input = grad_out W, grad_weight = grad_outᵀ x: each matmul on fp8 operands
    (x, W in e4m3, grad_out in e5m2). Saves the fp8 x and W for backward: 1 byte per element."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, out_dtype, backend):
        with torch.autocast(x.device.type, enabled=False):        # our casts decide every dtype here
            x2 = x.reshape(-1, x.shape[-1])                         # (M, K)
            s_x, s_w = layer.scale_for(x2, "input"), layer.scale_for(weight, "weight")
            x_q, w_q = quantize(x2, E4M3, s_x), quantize(weight, E4M3, s_w)
            y = scaled_matmul(x_q, s_x, w_q.t(), s_w, backend, use_fast_accum=True)   # (M, N)
            if bias is not None:
                y = y + bias
        ctx.save_for_backward(x_q, s_x, w_q, s_w)
        ctx.layer, ctx.backend, ctx.has_bias = layer, backend, bias is not None
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        return y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0])            # (..., N)

    @staticmethod
    def backward(ctx, grad_y):
        x_q, s_x, w_q, s_w = ctx.saved_tensors
        with torch.autocast(grad_y.device.type, enabled=False):
            g = grad_y.reshape(-1, grad_y.shape[-1])                # (M, N)
            s_g = ctx.layer.scale_for(g, "grad_output")
            g_q = quantize(g, E5M2, s_g)
            grad_x = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = scaled_matmul(g_q, s_g, w_q, s_w, ctx.backend)                    # (M, K)
                grad_x = grad_x.to(ctx.x_dtype).reshape(ctx.x_shape)
            if ctx.needs_input_grad[1]:
                grad_w = scaled_matmul(g_q.t(), s_g, x_q, s_x, ctx.backend).to(ctx.w_dtype)  # (N, K)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g.float().sum(0).to(ctx.w_dtype)          # the bias gradient stays in high precision
        return grad_x, grad_w, grad_b, None, None, None


# ----------------------------------------------------------------------------- the layer

class Float8Linear(nn.Linear):
    """nn.Linear whose forward and both backward matmuls run in fp8 (weights stay fp32 masters).

    recipe 'current' scales each tensor from its own amax; 'delayed' from the last `history` amaxes, kept in
    buffers amax_history_{input,weight,grad_output} so state_dict saves them. backend: 'auto' (the real kernel
    where it runs, else emulation), 'emulate' or 'scaled_mm' (raise where it cannot run). The output has the
    autocast dtype under autocast, else the input's dtype. Under activation recompute, a delayed history
    records the recomputed forward twice."""

    backend: str = "auto"      # class default; an instance's own backend= overrides it
    check_finite: bool = True  # raise on an inf/NaN amax (one host sync per cast; off = NaNs flow through)
    fused: bool = True         # on _scaled_mm with Triton: the speed path frugal.fp8_fused (same numerics)
    input_gelu: bool = False   # y = gelu(x) Wᵀ: the GELU before this layer, moved in by fuse_gelu_into_float8

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 recipe: str = "current", history: int = 16, backend: str | None = None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if recipe not in RECIPES:
            raise ValueError(f"fp8 recipe={recipe!r}: pick one of {RECIPES}")
        if backend is not None:
            if backend not in BACKENDS:
                raise ValueError(f"fp8 backend={backend!r}: pick one of {BACKENDS}")
            self.backend = backend
        self.recipe = recipe
        self.layer_name = ""   # set by convert_to_float8, so errors say which layer
        if recipe == "delayed":
            if not isinstance(history, int) or history < 1:
                raise ValueError(f"history={history!r}: delayed scaling needs a positive number of steps (TE uses 16+)")
            for role in ROLES:
                self.register_buffer(f"amax_history_{role}", torch.zeros(history, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options) -> "Float8Linear":
        """A Float8Linear sharing linear's weight and bias Parameters (ties and optimizer state survive)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta", **options)
        new.weight, new.bias = linear.weight, linear.bias
        for name, buf in list(new.named_buffers()):
            setattr(new, name, torch.zeros_like(buf, device=linear.weight.device))
        return new

    def scale_for(self, t: torch.Tensor, role: str, pending: list | None = None) -> torch.Tensor:
        """The scale of one of the three tensors ('input', 'weight', 'grad_output') under this layer's recipe;
        with check_finite and a `pending` list, the amax goes there to be checked later instead of now."""
        label = f"{role} of {self.layer_name}" if self.layer_name else role
        check = pending if self.check_finite and pending is not None else self.check_finite
        if self.recipe == "delayed":
            return delayed_scale(t, ROLES[role], getattr(self, f"amax_history_{role}"), label, check)
        return compute_scale(t, ROLES[role], label, check)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        out_dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        m = x.numel() // x.shape[-1] if x.shape[-1] else 0
        key = (x.device, m, self.backend)                      # choosing asks the hardware: once per shape
        route = self.__dict__.get("_fp8_route")
        if route is None or route[0] != key:
            route = self._fp8_route = (key, choose_backend(self.backend, x.device, m, self.in_features,
                                                           self.out_features))
        backend = route[1]
        if backend == "scaled_mm" and self.fused and fp8_fused.fusable(x):
            return fp8_fused.float8_linear(x, self, out_dtype)      # the optional speed path (GELU in its cast)
        if self.input_gelu:
            x = F.gelu(x)                                           # the core: eager GELU, then the casts
        return _Float8Matmul.apply(x, self.weight, self.bias, self, out_dtype, backend)

    def __getstate__(self):
        """Copies and pickles leave out the speed path's working state (cached fp8 weights, flags in flight)."""
        return {k: v for k, v in super().__getstate__().items() if not k.startswith("_fp8_")}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, recipe={self.recipe}, backend={self.backend}"
                + (", input_gelu=True" if self.input_gelu else ""))


def default_filter(name: str, module: nn.Linear, min_features: int = 1024) -> bool:
    """convert_to_float8's rule: not lm_head, in and out features >= min_features and multiples of 16."""
    if name.split(".")[-1] == "lm_head":
        return False
    dims = (module.in_features, module.out_features)
    return all(d >= min_features and d % 16 == 0 for d in dims)


def convert_to_float8(model: nn.Module, filter=None, recipe: str = "current", history: int = 16,
                      backend: str | None = None, min_features: int = 1024, fuse_gelu: bool = False) -> list[str]:
    """Swap the chosen nn.Linear modules of model for Float8Linear, in place, keeping their weights; returns
    the names converted.

    The default rule keeps the first and last layers in high precision: TinyGPT's first (the token embedding)
    is no Linear, its last, lm_head, is skipped by name (tied to the embedding; its logits feed the softmax).
    It also skips matrices too small to pay: in_features or out_features below min_features (1024) or not a
    multiple of 16 (_scaled_mm's rule); below ~1024 the casts cost about what the faster matmul saves.
    filter(name, module) -> bool replaces the rule. fuse_gelu: then fuse_gelu_into_float8(model).
    """
    keep = filter if filter is not None else (lambda n, m: default_filter(n, m, min_features))
    chosen = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and keep(n, m)]
    for name, linear in chosen:
        if not name:
            raise ValueError("convert_to_float8 swaps submodules: pass a module that holds the Linear, not the "
                             "Linear itself (or build Float8Linear.from_linear(linear))")
        parent, _, child = name.rpartition(".")
        new = Float8Linear.from_linear(linear, recipe=recipe, history=history, backend=backend)
        new.layer_name = name
        setattr(model.get_submodule(parent), child, new)
    if fuse_gelu:
        fuse_gelu_into_float8(model)
    return [n for n, _ in chosen]


def _gelu_feeds(module: nn.Module) -> list[tuple[str, str]]:
    """(GELU child, Float8Linear child) pairs of one module where the GELU's output is that layer's input:
    adjacent in an nn.Sequential, or TinyGPT's MLP (c_proj(gelu(c_fc(x))))."""
    from frugal.model import MLP
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        return [(a, b) for a, b in zip(names, names[1:])]
    if isinstance(module, MLP):
        return [("gelu", "c_proj")]
    return []


def fuse_gelu_into_float8(model: nn.Module) -> list[str]:
    """Move each exact nn.GELU that feeds a Float8Linear into that layer (input_gelu = True), leaving an
    nn.Identity where it was; returns the names of the layers that took one. The output is the same function:
    the core still runs F.gelu then its casts; on the speed path the GELU runs inside the input's cast and its
    bf16 output is never written (frugal.kernels.fp8_cast), with the same bits from bf16 inputs (autocast's) and,
    from fp32, a few elements one fp8 step away (Triton's erf and torch's differ in a last bit). A
    tanh-approximate GELU is left where it is."""
    fused = []
    for name, module in model.named_modules():
        for a, b in _gelu_feeds(module):
            act, layer = getattr(module, a, None), getattr(module, b, None)
            if (type(act) is nn.GELU and act.approximate == "none" and isinstance(layer, Float8Linear)
                    and not layer.input_gelu):
                layer.input_gelu = True
                setattr(module, a, nn.Identity())
                fused.append(f"{name}.{b}" if name else b)
    return fused
