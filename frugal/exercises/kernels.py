"""Lesson 06's exercises: a Triton vector-add kernel (Triton's interpreter on a CPU) and the cross-entropy's gradient.

Triton is optional: this module imports it only inside the kernel's check, after frugal.kernels has switched on
the interpreter where there is no GPU (Triton reads TRITON_INTERPRET when a kernel is decorated).
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from frugal.device import enable_triton_interpreter, has_triton
from frugal.exercises._core import Exercise, Mismatch, NotDone, Skip, attempt, expect


def cross_entropy_backward(logits, targets):
    """Gradient of the mean cross-entropy over N rows: (softmax(logits) - onehot(targets)) / N, max-shifted."""
    shifted = logits - logits.max(dim=1, keepdim=True).values      # exp() of a large logit would overflow
    probs = shifted.exp() / shifted.exp().sum(dim=1, keepdim=True)  # (N, V) softmax, unchanged by the shift
    probs[torch.arange(len(targets)), targets] -= 1.0               # minus the one-hot of each row's target
    return probs / len(targets)                                      # the loss is a mean over N rows


# ----------------------------------------------------------------------------- vector_add_kernel

KERNEL_CASES = [(128, n) for n in (1, 127, 128, 129, 3 * 128 + 5)] + [(64, 1000)]   # (BLOCK_SIZE, n): off the block
SENTINEL = -7777.0                      # what the guard region after `out` holds, and must still hold


def _triton_kernel(candidate):
    """The candidate as a kernel that can run here: on a CPU, through Triton's interpreter."""
    if not has_triton():
        raise Skip("Triton is not installed: `pip install triton` (Linux, with or without a GPU), or run this "
                   "lesson on Colab. The other exercises work without it.")
    try:
        importlib.import_module("frugal.kernels")          # switches on the interpreter where there is no GPU
    except ImportError as e:
        raise Skip(str(e)) from None
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    interpret = enable_triton_interpreter()               # True where kernels run through the interpreter
    if interpret and isinstance(candidate, JITFunction):   # decorated before the interpreter was on: rebuild it
        candidate = InterpretedFunction(candidate.fn)
    if not isinstance(candidate, (JITFunction, InterpretedFunction)):
        try:                                               # a plain stub still says "not done yet"
            candidate(None, None, None, 0, 1)
        except NotImplementedError:
            raise NotDone() from None
        except Exception:  # noqa: BLE001 - not a kernel either way: said below
            pass
    expect(isinstance(candidate, (JITFunction, InterpretedFunction)), "it is not a Triton kernel",
           got=type(candidate).__name__, hint="decorate it with @triton.jit (import frugal.kernels first on a CPU)")
    return candidate, "cpu" if interpret else "cuda"


def check_vector_add_kernel(candidate) -> str:
    kernel, device = _triton_kernel(candidate)
    gen = torch.Generator().manual_seed(0)
    for block, n in KERNEL_CASES:
        inp = f"n_elements={n}, BLOCK_SIZE={block}, grid=(cdiv(n, BLOCK_SIZE),) = ({-(-n // block)},)"
        # every buffer runs one block past the end: a load or store that is not masked stays in memory we own
        xs = torch.cat([torch.randn(n, generator=gen), torch.full((block,), float("nan"))]).to(device)
        ys = torch.cat([torch.randn(n, generator=gen), torch.full((block,), float("nan"))]).to(device)
        out = torch.full((n + block,), SENTINEL, device=device)
        attempt(lambda: kernel[(-(-n // block),)](xs, ys, out, n, BLOCK_SIZE=block), input=inp)
        want = torch.add(xs[:n], ys[:n])
        guard = out[n:]
        changed = (guard != SENTINEL).nonzero().flatten().tolist()
        expect(not changed, f"it wrote past the end of out (out[{n + changed[0] if changed else n}] and "
                            f"{len(changed) - 1} more)", input=inp, expected=f"out[{n}:] untouched", got="overwritten",
               hint="mask the store: mask = offsets < n_elements; tl.store(out_ptr + offsets, x + y, mask=mask)")
        got = out[:n]
        if bool((got == SENTINEL).all()):
            raise NotDone()                                # a kernel whose body is still `pass`
        bad = (got != want).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            hint = "out[i] must be x[i] + y[i]"
            if i >= block and torch.equal(got[:block], want[:block]):
                hint = ("the first block is right, the others not: program p starts at p * BLOCK_SIZE "
                        "(offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE))")
            elif torch.equal(got, xs[:n] - ys[:n]) or torch.equal(got, xs[:n] * ys[:n]):
                hint = "that is another operation than x + y"
            raise Mismatch(f"differs from torch.add in {len(bad)} of {n} elements", input=f"{inp}, element {i}",
                           expected=f"{want[i].item():.6g}", got=f"{got[i].item():.6g}", hint=hint)
    where = "Triton's interpreter on the CPU" if device == "cpu" else "the GPU"
    return f"equals torch.add at {len(KERNEL_CASES)} sizes around the block, nothing written past the end ({where})"


# ----------------------------------------------------------------------------- cross_entropy_backward

def _ce_cases():
    gen = torch.Generator().manual_seed(0)
    t = lambda n, v: torch.randint(v, (n,), generator=gen)
    return [("random logits", torch.randn(8, 13, generator=gen), t(8, 13)),
            ("one row", torch.randn(1, 5, generator=gen), t(1, 5)),
            ("a vocabulary of 256, repeated targets", 3 * torch.randn(16, 256, generator=gen), torch.full((16,), 7)),
            ("float64 logits", torch.randn(4, 7, generator=gen, dtype=torch.float64), t(4, 7)),
            ("logits around 1e4 (exp overflows)", 1e4 + 5 * torch.randn(6, 11, generator=gen), t(6, 11)),
            ("logits around -1e4", -1e4 + 5 * torch.randn(6, 11, generator=gen), t(6, 11))]


def check_cross_entropy_backward(candidate) -> str:
    for what, logits, targets in _ce_cases():
        inp = f"{what}: logits {tuple(logits.shape)} {logits.dtype}, targets {tuple(targets.shape)}"
        leaf = logits.clone().requires_grad_()
        F.cross_entropy(leaf, targets).backward()
        want = leaf.grad
        given = logits.clone()
        got = attempt(candidate, given, targets.clone(), input=inp)
        expect(torch.equal(given, logits), "it changed its input logits in place", input=inp,
               hint="work on a new tensor: logits - max makes one")
        expect(isinstance(got, torch.Tensor) and got.shape == logits.shape and got.dtype == logits.dtype,
               "it must return a tensor of the logits' shape and dtype", input=inp,
               expected=f"{tuple(logits.shape)} {logits.dtype}",
               got=f"{type(got).__name__} {tuple(getattr(got, 'shape', ()))} {getattr(got, 'dtype', '')}")
        expect(bool(torch.isfinite(got).all()), "its gradient has inf or NaN", input=inp,
               hint="exp(1e4) overflows: subtract each row's max from the logits first (softmax does not change)")
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-7):
            i, j = divmod(int((got - want).abs().argmax()), logits.shape[1])
            hint = "softmax(logits) - onehot(targets), divided by N"
            n = logits.shape[0]
            if n > 1 and torch.allclose(got, want * n, rtol=1e-5, atol=1e-6):
                hint = f"it is N = {n} times autograd's: the loss is the mean over N rows, divide by N"
            elif torch.allclose(got, -want, rtol=1e-5, atol=1e-7):
                hint = "the sign is flipped: softmax minus the one-hot, not the other way"
            raise Mismatch("differs from autograd's gradient of F.cross_entropy (tolerance rtol=1e-5, atol=1e-7)",
                           input=f"{inp}, element [{i}, {j}]", expected=f"{want[i, j].item():.6g}",
                           got=f"{got[i, j].item():.6g}", hint=hint)
    return f"{len(_ce_cases())} cases against autograd, stable at logits of ±1e4"


EXERCISES = [
    Exercise("vector_add_kernel", "06_triton_kernels",
             "@triton.jit vector_add_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr)",
             check_vector_add_kernel, "frugal.kernels.vector_add:vector_add_kernel",
             ("Each program instance adds one block of BLOCK_SIZE elements; tl.program_id(0) says which.",
              "offsets = block start + tl.arange(0, BLOCK_SIZE); load x and y at those offsets, add, store. The "
              "last block runs past n_elements: mask every load and the store.",
              "pid = tl.program_id(0); offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE); mask = offsets < "
              "n_elements; tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + tl.load(y_ptr + "
              "offsets, mask=mask), mask=mask)"),
             needs="import triton\nimport triton.language as tl"),
    Exercise("cross_entropy_backward", "06_triton_kernels", "cross_entropy_backward(logits (N, V), targets (N,)) -> grad",
             check_cross_entropy_backward, cross_entropy_backward,
             ("loss = mean over rows of logsumexp(z) - z[target]. Differentiate one row first.",
              "d/dz of logsumexp(z) is softmax(z); d/dz of z[target] is the one-hot of target. Then the mean "
              "divides by N. For stability, compute softmax from z - max(z).",
              "probs = softmax of (logits - logits.max(dim=1, keepdim=True).values); probs[range(N), targets] -= 1; "
              "return probs / N")),
]
