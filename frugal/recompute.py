"""Activation checkpointing from scratch: keep a region's inputs, recompute its insides in backward.

Mirrors torch.utils.checkpoint (use_reentrant=False). Inside `checkpoint(fn, *args)` every tensor autograd
would save for backward is swapped, through saved-tensor hooks, for a ticket; the first ticket cashed in
backward re-runs fn (same RNG, same autocast) and hands back the recomputed tensors (Chen et al. 2016).
`checkpoint_selective` keeps the matmul outputs and recomputes only the cheap work (Korthikanti et al. 2022).
The optional speed path, frugal/recompute_fused.py (a GPU's LayerNorms rebuilt in one Triton pass), is not needed
to read this file; its one seam is `fast` (a recompute_fused.FusedNorms, or None) on _Frame.
"""
from __future__ import annotations

import functools
import math
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from frugal.device import has_triton
from frugal.recompute_fused import DirectMode, FusedNorms   # the optional speed path (and the modes' base)

aten = torch.ops.aten

# Ops whose outputs the selective policy keeps: the matrix multiplies and fused attention (the FLOPs).
MATMUL_OPS = frozenset({
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default, aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default, aten._scaled_dot_product_cudnn_attention.default,
})
_LINEAR_MATMULS = frozenset({aten.addmm.default, aten.mm.default})   # what nn.Linear runs, bias or not
_TENSOR = object()  # marks where a kept op's output tuple had a tensor (held in the frame's kept_node)


class _StopRecompute(Exception):
    """Raised inside the recomputation once every dropped tensor is back: the rest of fn is not needed."""


class _Hold(torch.autograd.Function):
    """Saves tensors in an autograd node, so they pass through the saved-tensor hooks around the call: a counter
    sees them, and an enclosing checkpoint drops and recomputes them too."""

    @staticmethod
    def forward(ctx, dummy, *tensors):
        ctx.save_for_backward(*tensors)
        return dummy.new_empty(0)

    @staticmethod
    def backward(ctx, grad):
        return (None,) * len(ctx.needs_input_grad)


def _hold(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A _Hold node's output (.grad_fn.saved_tensors gives the tensors back). Keep the output, not the node: some
    torch releases (2.11) free a node's saved tensors once its outputs are gone."""
    return _Hold.apply(torch.empty(0, requires_grad=True), *tensors)


def _storage(t: torch.Tensor) -> int | None:
    s = t.untyped_storage()
    return s.data_ptr() if s.nbytes() else None


def _dropout_p(func, args, kwargs) -> float:
    i = next((i for i, a in enumerate(func._schema.arguments) if a.name == "dropout_p"), None)
    return 0.0 if i is None else float(args[i] if i < len(args) else kwargs.get("dropout_p", 0.0))


class _KeepOutputs(DirectMode):
    """Below autograd: records the outputs of `keep` ops in forward, and replays them in the recomputation
    instead of running the op again (how selective recompute skips the matmuls)."""

    def __init__(self, frame: _Frame, replay: list | None = None):
        super().__init__()
        self.frame, self.replay = frame, replay

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.frame.keep or _dropout_p(func, args, kwargs) > 0:  # random attention is recomputed
            return func(*args, **kwargs)
        if self.replay is not None:
            recorded, out = self.replay.pop(0)
            if recorded is not None and recorded is not func:     # None: a Linear's matmul, seen from a hook
                raise RuntimeError(f"selective recompute replayed {func} where forward ran {recorded}: "
                                   f"fn must run the same ops each time")
            return tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in out) \
                if isinstance(out, tuple) else out.detach()
        out = func(*args, **kwargs)
        self.frame.record(func, out if isinstance(out, tuple) else (out,), isinstance(out, tuple))
        return out


class _KeepInModules:
    """Keeps the `keep` ops' outputs only inside the modules of keep_in (hooks on them, removed on leaving): each of
    their forwards runs under a fresh _KeepOutputs mode, so only their few ops pass through Python. In forward a
    kept nn.Linear's output is its one matmul's result (or a view of it): a forward hook records it, cheaper in
    host time than sending the Linear's ops through a mode. The recomputation replays it from inside a mode."""

    def __init__(self, frame: _Frame, replay: list | None):
        self.frame, self.replay, self.active, self.dropped, self.handles = frame, replay, [], [], []
        by_hook = replay is None and _LINEAR_MATMULS <= frame.keep      # what nn.Linear runs is kept
        self.linears = [m for m in frame.keep_in if by_hook and type(m) is torch.nn.Linear]

    def __enter__(self):
        for m in self.linears:
            self.handles += [m.register_forward_pre_hook(self._linear_in), m.register_forward_hook(self._linear_out)]
        for m in self.frame.keep_in:
            if not any(m is lin for lin in self.linears):
                self.handles += [m.register_forward_pre_hook(self._mode_in),
                                 m.register_forward_hook(self._mode_out, always_call=True)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        while self.active:
            self.active.pop().__exit__(None, None, None)
        return False

    def _mode_in(self, module, args) -> None:
        self.active.append(_KeepOutputs(self.frame, self.replay))
        self.active[-1].__enter__()

    def _mode_out(self, module, args, out) -> None:
        if self.active:
            self.active.pop().__exit__(None, None, None)

    def _linear_in(self, module, args) -> None:
        self.dropped.append(len(self.frame.meta))

    def _linear_out(self, module, args, out) -> None:
        self.frame.record(None, (out._base if out._base is not None else out,), False, self.dropped.pop())


class _Frame:
    """One checkpointed call: what is needed to run fn again, and the tensors recomputed for backward."""

    def __init__(self, fn, args, kwargs, preserve_rng_state: bool, keep: frozenset | None, keep_in=None,
                 fast: FusedNorms | None = None):
        self.fn, self.kwargs, self.keep, self.keep_in, self.fast = fn, kwargs, keep, keep_in, fast
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        self.requires_grad = [t.requires_grad for t in tensors]
        self.inputs = _hold(tensors)                 # saved through the hooks outside this call
        self.args = tuple(None if isinstance(a, torch.Tensor) else a for a in args)
        self.tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        self.meta: list[tuple] = []                  # (shape, dtype, device) of each dropped tensor
        self.recomputed: dict[int, torch.Tensor] = {}
        self.kept_ops: list[tuple] = []              # selective: (op, outputs, tuple?, tensors dropped before it)
        self.kept_ptrs: dict[int, int] = {}          # storage -> index in kept_ops
        self.packed_ops: set[int] = set()            # kept ops whose output autograd saved
        self.fast_kept: list[torch.Tensor] = []      # what the speed path keeps (fast.keeps), in order
        self.cuda_devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
        self.rng = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.cuda_devices]) \
            if preserve_rng_state else None          # forward's RNG states: CPU, then each CUDA device's
        device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        self.autocast = {d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in device_types}

    # --- forward: drop what autograd saves, keep a ticket
    def pack(self, t: torch.Tensor):
        storage = _storage(t)
        if storage in self.kept_ptrs:                # selective: a kept matmul output (or a view of one)
            self.packed_ops.add(self.kept_ptrs[storage])
            return t.detach()
        if self.fast is not None and self.fast.keeps(t):   # the optional speed path keeps a few small tensors
            self.fast_kept.append(t.detach())
            return self.fast_kept[-1]
        self.meta.append((t.shape, t.dtype, t.device))
        return len(self.meta) - 1

    # --- backward: cash a ticket, recomputing fn the first time
    def unpack(self, ticket):
        if isinstance(ticket, torch.Tensor):
            return ticket
        if ticket not in self.recomputed:
            self.recompute()
        return self.recomputed.pop(ticket)

    def keeping(self, replay: list | None = None):
        """Selective: records (forward) or replays (recomputation) the kept ops' outputs, in all of fn or in keep_in."""
        return _KeepOutputs(self, replay) if self.keep_in is None else _KeepInModules(self, replay)

    def record(self, func, outs: tuple, was_tuple: bool, dropped: int | None = None) -> None:
        """Selective, forward: keep a kept op's outputs (ops after the last dropped tensor are never replayed)."""
        for o in outs:
            if isinstance(o, torch.Tensor) and _storage(o) is not None:
                self.kept_ptrs[_storage(o)] = len(self.kept_ops)
        self.kept_ops.append((func, tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in outs),
                              was_tuple, len(self.meta) if dropped is None else dropped))

    def recompute(self) -> None:
        args = list(self.args)
        for i, t, rg in zip(self.tensor_pos, self.inputs.grad_fn.saved_tensors, self.requires_grad):
            args[i] = t.detach().requires_grad_(rg)  # same requires_grad: ops save differently without it
        replay, fast_kept = self._replay_list() if self.keep is not None else ([], [])
        kept_ptrs = {_storage(t) for _, out in replay for t in (out if isinstance(out, tuple) else (out,))
                     if isinstance(t, torch.Tensor)} | {_storage(t) for t in fast_kept}
        kept_ptrs.discard(None)
        counter = [0]

        def pack(t):
            if _storage(t) in kept_ptrs:
                return None
            i = counter[0]
            counter[0] += 1
            if i >= len(self.meta) or (t.shape, t.dtype, t.device) != self.meta[i]:
                raise RuntimeError(
                    f"checkpoint: recomputed tensor #{i} is {tuple(t.shape)} {t.dtype}, but forward saved "
                    f"{self.meta[i][:2] if i < len(self.meta) else 'nothing there'}: fn must compute the same "
                    f"thing every call (no data-dependent control flow or global state)")
            self.recomputed[i] = t.detach()
            if i == len(self.meta) - 1:
                raise _StopRecompute

        with ExitStack() as stack:
            if self.rng is not None:                 # forward's RNG state, and the current one back afterwards
                stack.enter_context(torch.random.fork_rng(self.cuda_devices, device_type="cuda"))
                torch.set_rng_state(self.rng[0])
                for d, state in zip(self.cuda_devices, self.rng[1]):
                    torch.cuda.set_rng_state(state, d)
            for device_type, (enabled, dtype) in self.autocast.items():
                stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None))
            if self.keep is not None:
                stack.enter_context(self.keeping(replay))
            if self.fast is not None:                # after: its hooks must step aside first and come back last
                stack.enter_context(self.fast.recompute(self.fn, self.autocast, fast_kept, self.recomputed))
            try:
                self.fn(*args, **self.kwargs)
            except _StopRecompute:
                pass
        if counter[0] != len(self.meta):
            raise RuntimeError(f"checkpoint: the recomputation saved {counter[0]} tensors but forward saved "
                               f"{len(self.meta)}: fn must compute the same thing every call")

    def keep_needed(self) -> None:
        """After forward: hold the kept outputs that autograd saved or that the recomputation will replay."""
        self.kept_ops = [op for j, op in enumerate(self.kept_ops) if op[3] < len(self.meta) or j in self.packed_ops]
        self.kept_node = _hold([o for op in self.kept_ops for o in op[1] if isinstance(o, torch.Tensor)]
                               + self.fast_kept)
        self.kept_ops = [(func, tuple(_TENSOR if isinstance(o, torch.Tensor) else o for o in outs), was_tuple, n)
                         for func, outs, was_tuple, n in self.kept_ops]  # tensors now live in kept_node only
        self.kept_ptrs, self.packed_ops, self.fast_kept = {}, set(), []

    def _replay_list(self) -> tuple[list, list]:
        kept = iter(self.kept_node.grad_fn.saved_tensors)   # through the outer hooks: a nested checkpoint recomputes them
        replay = []
        for func, outs, was_tuple, _ in self.kept_ops:
            items = tuple(next(kept) if o is _TENSOR else o for o in outs)
            replay.append((func, items if was_tuple else items[0]))
        return replay, list(kept)                   # the rest: the speed path's


def _run(fn, args, kwargs, preserve_rng_state, keep, keep_in=None, fast=None):
    if not callable(fn):
        raise TypeError(f"checkpoint(fn, *args): fn must be callable (a module or function), got "
                        f"{type(fn).__name__}; pass the function first, then its arguments")
    if not isinstance(preserve_rng_state, bool):
        raise TypeError(f"preserve_rng_state={preserve_rng_state!r}: pass True or False")
    if kwargs.pop("use_reentrant", False):
        raise ValueError("use_reentrant=True: frugal's checkpoint is always non-reentrant (saved-tensor hooks); "
                         "drop the argument or pass use_reentrant=False")
    if not torch.is_grad_enabled():                  # nothing is saved for backward anyway
        return fn(*args, **kwargs)
    frame = _Frame(fn, args, kwargs, preserve_rng_state, keep, keep_in, fast)
    with torch.autograd.graph.saved_tensors_hooks(frame.pack, frame.unpack):
        if keep is None:
            out = fn(*args, **kwargs)
        else:
            with frame.keeping(), (fast.forward() if fast is not None else nullcontext()):
                out = fn(*args, **kwargs)
    if keep is not None:
        frame.keep_needed()
    return out


def checkpoint(fn: Callable, *args, preserve_rng_state: bool = True, **kwargs):
    """fn(*args, **kwargs), saving only its tensor inputs; backward re-runs fn with the same RNG and autocast.
    Mirrors torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)."""
    return _run(fn, args, kwargs, preserve_rng_state, keep=None)


def checkpoint_selective(fn: Callable, *args, keep: frozenset = MATMUL_OPS, keep_in=None, fuse_norms=None,
                         preserve_rng_state: bool = True, **kwargs):
    """Like checkpoint, but keeps the outputs of `keep` ops (matmuls, attention) and recomputes only the cheap
    pointwise and normalisation work: selective recompute (Korthikanti et al. 2022, sec. 5).

    keep_in: the modules (e.g. [block.attn.c_attn, block.mlp.c_fc]) whose `keep` ops are kept; None = every
    `keep` op in fn. Naming them also costs less host time: only their ops go through a Python dispatch mode.
    fuse_norms: LayerNorms (e.g. [block.ln_1, block.ln_2]) rebuilt in backward from their kept mean and 1/std in
    one Triton pass: the optional speed path, see frugal.recompute_fused.FusedNorms (None: recomputed eagerly).
    """
    if not isinstance(keep, (set, frozenset)) or not all(isinstance(op, torch._ops.OpOverload) for op in keep):
        raise TypeError("keep must be a set of aten op overloads, e.g. {torch.ops.aten.mm.default}; "
                        "see frugal.recompute.MATMUL_OPS")
    if keep_in is not None:
        keep_in = list(keep_in)
        if not all(isinstance(m, torch.nn.Module) for m in keep_in):
            raise TypeError("keep_in must be a list of nn.Module (the submodules whose matmul outputs to keep), "
                            "or None to keep every matmul output in fn")
    fuse_norms = None if fuse_norms is None else list(fuse_norms)
    fast = FusedNorms(fuse_norms) if fuse_norms else None      # the optional speed path
    return _run(fn, args, kwargs, preserve_rng_state, keep=frozenset(keep), keep_in=keep_in, fast=fast)


def sqrt_segments(n: int) -> int:
    """√n segments: n/k stored boundaries plus one segment of n/k recomputed is smallest at k = √n
    (Chen et al. 2016, sec. 4.1)."""
    return max(1, round(math.sqrt(n)))


def checkpoint_sequential(modules, segments: int | None, x: torch.Tensor, *, preserve_rng_state: bool = True,
                          checkpoint_fn: Callable | None = None) -> torch.Tensor:
    """Run modules in order, storing only the inputs of `segments` segments (None = √n, Chen et al. 2016).
    As torch.utils.checkpoint.checkpoint_sequential, the last segment runs plainly: its backward comes first."""
    mods = list(modules)
    if not mods or not all(callable(m) for m in mods):
        raise TypeError("modules must be a non-empty nn.Sequential, nn.ModuleList or list of callables")
    n = len(mods)
    segments = sqrt_segments(n) if segments is None else segments
    if not isinstance(segments, int) or not 1 <= segments <= n:
        raise ValueError(f"segments={segments!r} for {n} modules: pick an integer in 1..{n}, or None for √n")
    ckpt = checkpoint_fn or (lambda f, inp: checkpoint(f, inp, preserve_rng_state=preserve_rng_state))
    size = n // segments

    def segment(part):                               # one segment as a function of its input
        return lambda inp: functools.reduce(lambda h, m: m(h), part, inp)

    for s in range(segments - 1):
        x = ckpt(segment(mods[s * size:(s + 1) * size]), x)
    return segment(mods[(segments - 1) * size:])(x)


# ----------------------------------------------------------------------------- TinyGPT's switch
POLICIES = ("none", "full", "every", "first", "selective", "sqrt")

# The selective policy's default: inside each block keep the outputs of the qkv projection, the attention core and
# the MLP's up-projection (the expensive work); recompute LayerNorms, GELU, the output projection, residual adds.
SELECTIVE_KEEP = ("attn.c_attn", "attn.core", "mlp.c_fc")


@dataclass(frozen=True)
class Recompute:
    """How TinyGPT runs its blocks (TinyGPT.recompute): which blocks recompute their activations in backward."""
    policy: str = "none"                    # none | full | every (every k-th block) | first (the first k) | selective | sqrt
    k: int = 1                              # for 'every' and 'first'
    checkpoint_fn: Callable | None = None   # None = ours; e.g. partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    keep: tuple[str, ...] | None = SELECTIVE_KEEP  # 'selective': block submodules whose matmul outputs stay;
                                            # None = every matmul output, found op by op (every op via Python)
    fused: bool = True                      # 'selective' on a GPU: LayerNorms rebuilt in one pass (recompute_fused)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"recompute policy {self.policy!r}: pick one of {POLICIES}")
        if not isinstance(self.k, int) or self.k < (1 if self.policy == "every" else 0):
            raise ValueError(f"k={self.k!r}: 'every' needs k >= 1, 'first' needs k >= 0")
        if self.policy == "selective" and self.checkpoint_fn is not None:
            raise ValueError("policy 'selective' is ours only: leave checkpoint_fn=None")

    def checkpointed(self, n_layer: int) -> list[int]:
        """Indices of the blocks that keep only their input (for 'sqrt': all but the last segment)."""
        if self.policy in ("full", "selective"):
            return list(range(n_layer))
        if self.policy == "every":
            return list(range(0, n_layer, self.k))
        if self.policy == "first":
            return list(range(min(self.k, n_layer)))
        if self.policy == "sqrt":
            k = sqrt_segments(n_layer)
            return list(range((n_layer // k) * (k - 1)))
        return []

    def __call__(self, blocks, x: torch.Tensor) -> torch.Tensor:
        if self.policy == "sqrt":
            return checkpoint_sequential(blocks, None, x, checkpoint_fn=self.checkpoint_fn)
        chosen = set(self.checkpointed(len(blocks)))
        run = self.checkpoint_fn or checkpoint
        for i, block in enumerate(blocks):
            if i not in chosen:
                x = block(x)
            elif self.policy == "selective":
                if getattr(block, "_compiled_call_impl", None) is not None:
                    raise ValueError(f"block {i} is compiled (module.compile()): selective recompute works inside "
                                     f"the block, where torch.compile saves other tensors than the recomputation "
                                     f"makes; use Recompute('full') with compiled blocks, or leave them uncompiled")
                x = checkpoint_selective(block, x, keep_in=self.kept_modules(block), fuse_norms=self.fused_norms(block, x))
            else:
                x = run(block, x)
        return x

    def fused_norms(self, block: torch.nn.Module, x: torch.Tensor) -> list[torch.nn.Module] | None:
        """The block's LayerNorms for the speed path: fused, on a GPU, with Triton (a CPU only interprets it)."""
        if not (self.fused and x.is_cuda and has_triton()):
            return None
        return [m for m in block.modules() if isinstance(m, torch.nn.LayerNorm)] or None

    def kept_modules(self, block: torch.nn.Module) -> list[torch.nn.Module] | None:
        """The submodules of `block` named by self.keep (None: keep every matmul output)."""
        if self.keep is None:
            return None
        try:
            return [block.get_submodule(name) for name in self.keep]
        except AttributeError as e:
            names = [n for n, _ in block.named_modules() if n]
            raise ValueError(f"Recompute(keep={self.keep!r}): {e}; the block's submodules are {names}") from None


def from_spec(spec: str) -> Recompute | None:
    """'none', 'full', 'every:2', 'first:3', 'selective' or 'sqrt' (TrainConfig.recompute) to a Recompute."""
    if not isinstance(spec, str):
        raise TypeError(f"recompute={spec!r}: pass a string such as 'full', 'every:2' or 'selective'")
    name, _, k = spec.partition(":")
    if name in ("every", "first"):
        if not k.isdigit():
            raise ValueError(f"recompute={spec!r}: write '{name}:K' with an integer K, e.g. '{name}:2'")
        return Recompute(name, int(k))
    if k or name not in POLICIES:
        raise ValueError(f"recompute={spec!r}: pick 'none', 'full', 'every:K', 'first:K', 'selective' or 'sqrt'")
    return None if name == "none" else Recompute(name)
