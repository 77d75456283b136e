"""The mechanism under frugal.recompute: a region that keeps its inputs and replays itself in backward.

Inside `_run(fn, ...)` every tensor autograd would save for backward is swapped, through saved-tensor hooks
(`_Frame.pack` / `_Frame.unpack`), for a ticket; the first ticket cashed in backward re-runs fn with the forward's
RNG and autocast state and hands back the recomputed tensors (Chen et al. 2016). With `keep`, the outputs of
those ops (matmuls, attention) are kept and only the cheap work between them is replayed (Korthikanti et al.
2022). The optional speed path, frugal/recompute_fused.py, meets this file at one seam: `fast` on _Frame.
"""
from __future__ import annotations

from contextlib import ExitStack, nullcontext

import torch
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
