"""Lesson 02's exercise: activation checkpointing, `checkpoint(fn, *args)` as torch.utils.checkpoint has it."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from frugal.exercises._core import Exercise, Mismatch, attempt, expect
from frugal.measure import SavedTensor, count_saved_tensors
from frugal.model import Block, preset


def checkpoint(fn, *args):
    """fn(*args) keeping only args for backward; backward reruns fn from the forward's RNG state (same dropout)."""

    class Recompute(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            ctx.save_for_backward(*inputs)               # all that stays: fn's intermediates are not recorded here
            ctx.cpu_rng = torch.get_rng_state()          # dropout draws its masks from these
            ctx.cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
            return fn(*inputs)

        @staticmethod
        def backward(ctx, grad_output):
            inputs = [x.detach().requires_grad_(need) for x, need in zip(ctx.saved_tensors, ctx.needs_input_grad)]
            devices = [torch.cuda.current_device()] if ctx.cuda_rng is not None else []
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                torch.set_rng_state(ctx.cpu_rng)
                if ctx.cuda_rng is not None:
                    torch.cuda.set_rng_state(ctx.cuda_rng)
                output = fn(*inputs)                     # the forward again, this time recording its graph
            torch.autograd.backward(output, grad_output)  # fills the inputs' and fn's parameters' .grad
            return tuple(x.grad if need else None for x, need in zip(inputs, ctx.needs_input_grad))

    return Recompute.apply(*args)


@contextmanager
def _count_kept(exclude):
    """count_saved_tensors, plus the tensors a checkpoint built on saved_tensors_hooks keeps from its pack hook
    (an inner pair of hooks hides what it keeps from the outer count)."""
    hooks = torch.autograd.graph.saved_tensors_hooks
    original, skip = hooks.__init__, {t.untyped_storage().data_ptr() for t in exclude}
    with count_saved_tensors(exclude=exclude) as saved:
        def init(self, pack_hook, unpack_hook):
            def pack(t):
                packed = pack_hook(t)
                for k in packed if isinstance(packed, (tuple, list)) else (packed,):
                    if isinstance(k, torch.Tensor) and k.untyped_storage().data_ptr() not in skip:
                        saved.tensors.append(SavedTensor(tuple(k.shape), k.dtype, k.untyped_storage().nbytes(),
                                                         k.untyped_storage().data_ptr()))
                return packed
            original(self, pack, unpack_hook)
        hooks.__init__ = init
        try:
            yield saved
        finally:
            hooks.__init__ = original


def _run(fn, inputs, weight, params, candidate=None):
    """Output and gradients (of the inputs, then of params) of (fn(*inputs) * weight).sum(), seeded."""
    inputs = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    for p in params:
        p.grad = None
    torch.manual_seed(1234)
    out = fn(*inputs) if candidate is None else attempt(candidate, fn, *inputs, input=_describe(fn, inputs))
    expect(isinstance(out, torch.Tensor), f"it returned {type(out).__name__}, not fn's output tensor",
           input=_describe(fn, inputs), hint="return the output of fn(*args)")
    expect(out.requires_grad, "its output does not require grad: backward cannot reach fn's inputs and parameters",
           input=_describe(fn, inputs), hint="return the output of a torch.autograd.Function (or of fn run under "
                                             "saved_tensors_hooks), not of fn run under torch.no_grad()")
    attempt((out * weight).sum().backward, input=_describe(fn, inputs) + ", in backward")
    return out.detach(), [x.grad for x in inputs if x.requires_grad] + [p.grad for p in params]


def _describe(fn, inputs) -> str:
    shapes = ", ".join(f"{tuple(x.shape)}{' (requires grad)' if x.requires_grad else ''}" for x in inputs)
    what = f"a TinyGPT Block (dropout={fn.attn.resid_drop.p})" if isinstance(fn, Block) else "fn(a, b) = tanh(a) * sin(b)"
    return f"{what} on inputs {shapes}"


def _compare(fn, inputs, candidate, names: list[str], hint: str) -> None:
    gen = torch.Generator().manual_seed(0)
    params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
    weight = torch.randn(fn(*inputs).shape, generator=gen)
    want_out, want_grads = _run(fn, inputs, weight, params)
    got_out, got_grads = _run(fn, inputs, weight, params, candidate)
    inp = _describe(fn, inputs)
    expect(torch.allclose(got_out, want_out, rtol=1e-5, atol=1e-6), "its output differs from fn(*args)", input=inp,
           expected=f"{want_out.flatten()[:3].tolist()}...", got=f"{got_out.flatten()[:3].tolist()}...",
           hint="the forward must return fn(*args) itself")
    for name, want, got in zip(names, want_grads, got_grads):
        expect(got is not None, f"the gradient of {name} is missing", input=inp, expected="a gradient", got="None",
               hint="in backward, rerun fn with grad enabled on detached inputs that require grad, then call "
                    "torch.autograd.backward(output, grad_output): that fills the inputs' and parameters' .grad")
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            err = (got - want).abs().max().item()
            raise Mismatch(f"the gradient of {name} differs from plain fn's (max abs error {err:.3g}; tolerance "
                           f"rtol=1e-5, atol=1e-6)", input=inp, hint=hint)


def check_checkpoint(candidate) -> str:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=gen).requires_grad_(), torch.randn(3, 5, generator=gen)
    _compare(lambda a, b: torch.tanh(a) * torch.sin(b), [a, b], candidate, ["a"],
             hint="backward must rerun fn on the saved inputs and backpropagate grad_output through it")
    for dropout in (0.0, 0.1):
        torch.manual_seed(0)
        block = Block(preset("tiny", dropout=dropout)).train()
        x = torch.randn(4, 16, 64, generator=gen).requires_grad_()
        names = ["the input x"] + [f"block.{n}" for n, _ in block.named_parameters()]
        _compare(block, [x], candidate, names,
                 hint="dropout drew other masks when backward reran fn: save torch.get_rng_state() in forward "
                      "and restore it (inside torch.random.fork_rng()) before the rerun" if dropout else
                      "backward must rerun fn on the saved inputs and backpropagate grad_output through it")
    params = list(block.parameters())
    with torch.enable_grad(), count_saved_tensors(exclude=params) as plain:
        block(x)
    with torch.enable_grad(), _count_kept(params) as kept:
        attempt(candidate, block, x, input=_describe(block, [x]))
    limit = 2 * x.numel() * x.element_size()
    expect(kept.nbytes <= limit, "it keeps more than its inputs for backward", input=_describe(block, [x]),
           expected=f"about the input's {x.numel() * x.element_size():,} bytes (at most {limit:,})",
           got=f"{kept.nbytes:,} bytes saved (plain fn saves {plain.nbytes:,})",
           hint="run fn where autograd records nothing (inside a torch.autograd.Function's forward, or under "
                "torch.no_grad()) and save only the inputs")
    return (f"gradients as plain fn's, dropout included; keeps {kept.nbytes:,} bytes of a block whose plain forward "
            f"saves {plain.nbytes:,}")


EXERCISES = [
    Exercise("checkpoint", "02_activation_checkpointing", "checkpoint(fn, *args) -> output",
             check_checkpoint, checkpoint,
             ("Forward: run fn without recording a graph and keep only args. Backward: run fn again, with a graph, "
              "and backpropagate through that.",
              "A torch.autograd.Function does it: its forward runs with autograd off (save the inputs with "
              "ctx.save_for_backward), its backward reruns fn under torch.enable_grad() on detached inputs and calls "
              "torch.autograd.backward(output, grad_output). Dropout: the rerun must draw the same masks.",
              "In forward: ctx.rng = torch.get_rng_state(). In backward: with torch.random.fork_rng(): "
              "torch.set_rng_state(ctx.rng); output = fn(*inputs); then return the inputs' .grad.")),
]
