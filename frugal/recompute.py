"""Activation checkpointing from scratch: keep a region's inputs, recompute its insides in backward.

Mirrors torch.utils.checkpoint (use_reentrant=False). Inside `checkpoint(fn, *args)` every tensor autograd
would save for backward is swapped, through saved-tensor hooks, for a ticket; the first ticket cashed in
backward re-runs fn (same RNG, same autocast) and hands back the recomputed tensors (Chen et al. 2016).
"""
from __future__ import annotations

import math
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
# Recent torch (2.13 here) wraps a mode's __torch_dispatch__ in torch._disable_dynamo, which imports torch._dynamo
# on its first call. Inside a forward that import pins every frame on the stack (torch.fx.wrap holds its own frame
# in a cycle), _run's `frame` and its tensors too, until a gc pass; so import it now, outside any forward.
import torch._dynamo  # noqa: F401
from frugal.device import has_triton
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

aten = torch.ops.aten

# Ops whose outputs the selective policy keeps: the matrix multiplies and fused attention (the FLOPs).
MATMUL_OPS = frozenset({
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
})


_TENSOR = object()  # marks where a kept op's output tuple had a tensor (held in the frame's kept_node)


class _StopRecompute(Exception):
    """Raised inside the recomputation once every dropped tensor is back: the rest of fn is not needed."""


class _Hold(torch.autograd.Function):
    """Saves tensors in an autograd node, so they pass through the saved-tensor hooks around the call:
    a counter sees them, and an enclosing checkpoint drops and recomputes them too."""

    @staticmethod
    def forward(ctx, dummy, *tensors):
        ctx.save_for_backward(*tensors)
        return dummy.new_empty(0)

    @staticmethod
    def backward(ctx, grad):
        return (None,) * len(ctx.needs_input_grad)


class _Held:
    """A _Hold node kept alive through its output: some torch releases (2.11) free a node's saved
    tensors once its outputs are gone, so the output is held too."""

    def __init__(self, out: torch.Tensor):
        self.out = out

    @property
    def saved_tensors(self):
        return self.out.grad_fn.saved_tensors


def _hold(tensors: list[torch.Tensor]) -> _Held:
    """Tensors held in an autograd node; .saved_tensors gives them back (through the outer hooks)."""
    return _Held(_Hold.apply(torch.empty(0, requires_grad=True), *tensors))


def _storage(t: torch.Tensor) -> int | None:
    s = t.untyped_storage()
    return s.data_ptr() if s.nbytes() else None


class _Mode(TorchDispatchMode):
    """A dispatch mode called directly. Recent torch wraps each mode's __torch_dispatch__ in torch._disable_dynamo
    unless the class opts out; the wrapper costs more than the mode's own work on every op it sees, tens of
    milliseconds of host time a GPT-2 step, enough to leave the GPU waiting. These modes only run eagerly."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


class _KeepOutputs(_Mode):
    """Below autograd: records the outputs of `keep` ops in forward, and replays them in the recomputation
    instead of running the op again (how selective recompute skips the matmuls)."""

    def __init__(self, keep: frozenset, frame: "_Frame", replay: list | None = None):
        super().__init__()
        self.keep, self.frame, self.replay = keep, frame, replay

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.keep or _dropout_p(func, args, kwargs) > 0:  # random attention is recomputed
            return func(*args, **kwargs)
        if self.replay is not None:
            recorded, out = self.replay.pop(0)
            if recorded is not None and recorded is not func:     # None: a Linear's matmul, seen from a hook
                raise RuntimeError(f"selective recompute replayed {func} where forward ran {recorded}: "
                                   f"fn must run the same ops each time")
            return tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in out) \
                if isinstance(out, tuple) else out.detach()
        out = func(*args, **kwargs)
        items = out if isinstance(out, tuple) else (out,)
        frame, op = self.frame, len(self.frame.kept_ops)
        for o in items:
            if isinstance(o, torch.Tensor) and _storage(o) is not None:
                frame.kept_ptrs[_storage(o)] = op
        # (op, outputs detached, tuple?, tensors dropped before it: ops after the last drop are never replayed)
        frame.kept_ops.append((func, tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in items),
                               isinstance(out, tuple), len(frame.meta)))
        return out


class _AroundModules:
    """While open, calls _enter(module, args) as each of `modules` starts its forward and _exit(module, args, out)
    as it ends (hooks on the modules, removed on leaving); _exit also when forward raises, if always_call."""

    always_call = True

    def __init__(self, modules):
        self.modules, self.handles = list(modules), []

    def _enter(self, module, args) -> None:
        pass

    def _exit(self, module, args, out) -> None:
        pass

    def __enter__(self):
        for m in self.modules:
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._exit, always_call=self.always_call))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False


class _ModeInModules(_AroundModules):
    """Enters a fresh dispatch mode each time one of `modules` starts its forward and leaves it when that forward
    ends: only their few ops pass through Python, the rest of the checkpointed function runs at full speed."""

    def __init__(self, modules, make_mode: Callable[[], TorchDispatchMode]):
        super().__init__(modules)
        self.make_mode = make_mode
        self.active: list[TorchDispatchMode] = []

    def _enter(self, module, args) -> None:
        mode = self.make_mode()
        mode.__enter__()
        self.active.append(mode)

    def _exit(self, module, args, out) -> None:
        if self.active:
            self.active.pop().__exit__(None, None, None)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        while self.active:
            self.active.pop().__exit__(None, None, None)
        return False


class _KeepLinearOutputs(_AroundModules):
    """Forward, for the nn.Linear modules of keep_in: a Linear's output is its one matmul's result (or a view of
    it), so a forward hook records it without sending the Linear's ops (casts, views, the matmul) through a
    dispatch mode, which costs more host time than the rest of the block's forward. The recomputation still
    replays it from inside a mode: that is where the matmul must be skipped."""

    always_call = False                                # _exit reads the output

    def __init__(self, modules, frame: "_Frame"):
        super().__init__(modules)
        self.frame, self.dropped = frame, []

    def _enter(self, module, args) -> None:
        self.dropped.append(len(self.frame.meta))

    def _exit(self, module, args, out) -> None:
        frame, op = self.frame, len(self.frame.kept_ops)
        base = out._base if out._base is not None else out
        if _storage(base) is not None:
            frame.kept_ptrs[_storage(base)] = op
        frame.kept_ops.append((None, (base.detach(),), False, self.dropped.pop()))


_LINEAR_MATMULS = frozenset({aten.addmm.default, aten.mm.default})   # what nn.Linear runs, bias or not


def _keeping(frame: "_Frame", replay: list | None = None):
    """The context that records (forward) or replays (recomputation) the kept ops' outputs: around all of fn,
    or only inside the modules of keep_in."""
    def make_mode():
        return _KeepOutputs(frame.keep, frame, replay)

    if frame.keep_in is None:
        return make_mode()
    linear = [m for m in frame.keep_in if type(m) is torch.nn.Linear]
    if replay is not None or not linear or not _LINEAR_MATMULS <= frame.keep:
        return _ModeInModules(frame.keep_in, make_mode)
    stack = ExitStack()                                # forward: Linears by hook, the other modules by mode
    stack.enter_context(_KeepLinearOutputs(linear, frame))
    stack.enter_context(_ModeInModules([m for m in frame.keep_in if type(m) is not torch.nn.Linear], make_mode))
    return stack


class _KeepNormStats(_AroundModules):
    """Forward, around the LayerNorms of fuse_norms: marks them, so pack keeps each one's mean and 1/std (one float
    per row, saved by LayerNorm for its backward) instead of dropping them; the recomputation rebuilds the output
    from them in one pass instead of reducing every row again. Module hooks, not a dispatch mode: no op of theirs
    goes through Python."""

    def __init__(self, frame: "_Frame"):
        super().__init__(frame.fuse_norms)
        self.frame = frame

    def _enter(self, module, args) -> None:
        self.frame.norm_rows = tuple(args[0].shape[:-1]) if args and isinstance(args[0], torch.Tensor) else None

    def _exit(self, module, args, out) -> None:
        self.frame.norm_rows = None

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.frame.norm_rows = None
        return False


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b are the same elements of the same storage (the same tensor, or an identical view of it)."""
    return a is b or (_storage(a) == _storage(b) and a.shape == b.shape and a.stride() == b.stride()
                      and a.storage_offset() == b.storage_offset())


def _fusable_add(args, kwargs) -> bool:
    """x + r as the residual stream does it: fp32 x, a float r of the same shape, both contiguous, alpha 1."""
    if len(args) != 2 or not all(isinstance(a, torch.Tensor) for a in args) or kwargs.get("alpha", 1) != 1:
        return False
    x, r = args
    return (x.dtype == torch.float32 and r.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and x.shape == r.shape and x.device == r.device and x.is_contiguous() and r.is_contiguous())


class _FusedNorms:
    """Recomputation: each LayerNorm of fuse_norms rebuilt from forward's statistics in one pass
    (frugal.kernels.layer_norm_recompute), the residual add before it folded in.

    Results are handed back unfilled, with a note of how to fill them, and written as late as possible:
    - fn's own ops (a block's residual adds) run under a mode that turns each add into an unfilled sum; a LayerNorm
      of fuse_norms whose input is such a sum writes it in the same pass as its output;
    - a LayerNorm of fuse_norms reading a plain tensor x (a block's ln_1) leaves its output unfilled; the pass of a
      later LayerNorm of x + r writes it too, so the block's recomputation reads x once. In a pre-norm block the
      only reader of ln_1's output is the qkv matmul, replayed from forward, which reads nothing. (Not when the
      LayerNorm has forward hooks, its own or global: they would read the output before the mode watches again.)
    Any other reader gets an unfilled tensor filled first: an op of fn, an op of a submodule called with an unfilled
    LayerNorm output (the mode watches inside it), autograd keeping it. The mode steps aside inside every other
    submodule, so their ops cost no Python, and fills everything still due before it. Under autocast the output
    comes in the autocast dtype, the cast the matmul after it would make: fuse only LayerNorms that feed matmuls."""

    def __init__(self, frame: "_Frame", stats: list[tuple[torch.Tensor, torch.Tensor]]):
        from frugal.kernels.layer_norm_recompute import layer_norm_from_stats
        self.apply_norm = layer_norm_from_stats
        self.frame, self.stats = frame, list(stats)  # (mean, rstd) per LayerNorm call, in forward's order
        self.pending: dict[int, tuple] = {}          # storage -> (unfilled sum, x, r)
        self.due: dict[int, tuple] = {}              # storage -> (unfilled LayerNorm output, x, mean, rstd, w, b)
        self.norms = set(map(id, frame.fuse_norms))
        # a LayerNorm whose output may wait: forward hooks of its own or global ones would read it unwatched; and
        # one whose input must be written first: its forward pre-hooks would read that unwatched
        glob = torch.nn.modules.module
        self.may_wait = {id(m) for m in frame.fuse_norms if not (glob._global_forward_hooks or m._forward_hooks)}
        self.fill_input = {id(m) for m in frame.fuse_norms if glob._global_forward_pre_hooks or m._forward_pre_hooks}
        self.adds = _ResidualAdds(self)
        self.norm_modes = _ModeInModules(frame.fuse_norms, lambda: _NormFromStats(self))
        self.handles: list = []
        self.suspended = False
        self.suspended_by_norm = False               # suspended only for a LayerNorm of fuse_norms called where the
                                                     # mode watches, without hooks: its output's readers are watched

    def __enter__(self):
        self.norm_modes.__enter__()
        fn = self.frame.fn
        for child in (fn.children() if isinstance(fn, torch.nn.Module) else ()):
            self.handles.append(child.register_forward_pre_hook(self._step_aside, prepend=True))
            self.handles.append(child.register_forward_hook(self._step_back, always_call=True))
        self.adds.__enter__()
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        if not self.suspended:
            self.adds.__exit__(None, None, None)
        self.norm_modes.__exit__(*exc)
        if exc[0] is None:                           # what autograd saved must hold values, not a placeholder
            with torch.no_grad():
                self.fill_all(self.frame.recomputed.values())
        # the modes and their hooks point back here: drop the loop, or the frame and every tensor it recomputed
        # would wait for a gc pass instead of going when backward is done with them
        self.adds = self.norm_modes = self.frame = None
        self.pending.clear()
        self.due.clear()
        return False

    def _step_aside(self, module, args) -> None:
        if id(module) not in self.norms:             # a LayerNorm of fuse_norms reads an unfilled sum itself
            if any(isinstance(a, torch.Tensor) and _storage(a) in self.due for a in args):
                return                               # watch inside: its reads fill, a replayed matmul reads nothing
            self.fill_everything()                   # unwatched, it may read or overwrite anything
        elif id(module) in self.fill_input:
            self.fill_all([a for a in args if isinstance(a, torch.Tensor)])
        if not self.suspended and _get_current_dispatch_mode() is self.adds:
            self.adds.__exit__(None, None, None)
            self.suspended = True
            self.suspended_by_norm = id(module) in self.may_wait

    def _step_back(self, module, args, out) -> None:
        if self.suspended:
            self.adds.__enter__()
            self.suspended = False

    def pending_sum(self, t: torch.Tensor):
        """(x, r) if t is exactly an unfilled x + r (not a view of one)."""
        entry = self.pending.get(_storage(t))
        return entry[1:] if entry is not None and _same_view(t, entry[0]) else None

    def norm_of(self, x: torch.Tensor) -> tuple | None:
        """The unfilled LayerNorm output of exactly x, taken off the due list, as the kernel's x_norm argument."""
        for key, (y, x_in, *stats) in self.due.items():
            if _same_view(x, x_in):
                del self.due[key]
                return (*stats, y)
        return None

    def fill(self, t: torch.Tensor) -> None:
        """Write an unfilled sum (the eager add's result) or LayerNorm output before anything reads it."""
        key = _storage(t)
        entry = self.pending.pop(key, None)
        if entry is not None:
            h, x, r = entry
            self.fill(x)
            self.fill(r)
            with torch.no_grad():                    # h's place in the graph is set; only its values are due
                torch.add(x, r, out=h)
        entry = self.due.pop(key, None)
        if entry is not None:
            y, x, mean, rstd, weight, bias = entry
            self.apply_norm(x, mean, rstd, weight, bias, y_out=y)

    def fill_all(self, tensors) -> None:
        for t in tensors:
            self.fill(t)

    def _unfilled(self) -> list[tuple]:
        """Every entry still to write: (unfilled tensor, what it is computed from...)."""
        return [*self.pending.values(), *self.due.values()]

    def fill_everything(self) -> None:
        self.fill_all([entry[0] for entry in self._unfilled()])

    def fill_readers_of(self, tensors) -> None:
        """Fill the unfilled tensors computed from any of `tensors` (before those are overwritten)."""
        storages = {_storage(t) for t in tensors}
        self.fill_all([entry[0] for entry in self._unfilled()
                       if any(_storage(src) in storages for src in entry[1:3] if isinstance(src, torch.Tensor))])


class _FusedNormsMode(_Mode):
    """A mode working for one _FusedNorms."""

    def __init__(self, fused: _FusedNorms):
        super().__init__()
        self.fused = fused


class _ResidualAdds(_FusedNormsMode):
    """fn's own ops in the recomputation: x + r becomes an unfilled sum; anything else reading one fills it."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.is_view:                             # an alias (a detach, a reshape) reads nothing
            return func(*args, **kwargs)
        if func._schema.is_mutable:                  # it may overwrite what an unfilled tensor is computed from
            self.fused.fill_readers_of(_written(func, args, kwargs))
        if func is aten.add.Tensor and _fusable_add(args, kwargs):
            h = torch.empty_like(args[0])
            self.fused.pending[_storage(h)] = (h, args[0], args[1])
            return h
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):   # aten takes tensors or lists of them
                if isinstance(t, torch.Tensor):
                    self.fused.fill(t)
        return func(*args, **kwargs)


class _NormFromStats(_FusedNormsMode):
    """Inside a LayerNorm of fuse_norms, in the recomputation: its output from forward's mean and 1/std."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fused = self.fused
        if func is not aten.native_layer_norm.default or not fused.stats:
            return func(*args, **kwargs)
        x, shape, weight, bias = (list(args) + [None] * 4)[:4]
        mean, rstd = fused.stats.pop(0)
        if (len(shape) != 1 or x.dtype != torch.float32 or not x.is_contiguous()
                or mean.numel() != x.numel() // max(x.shape[-1], 1)):
            fused.fill(x)
            return func(*args, **kwargs)[0], mean.detach(), rstd.detach()   # forward's statistics: same values
        enabled, dtype = fused.frame.autocast.get(x.device.type, (False, None))
        out_dtype = dtype if enabled and dtype in (torch.bfloat16, torch.float16) else x.dtype
        add = fused.pending_sum(x)
        if add is None:
            fused.fill(x)
            if fused.suspended and not fused.suspended_by_norm:    # read where no mode watches: write it now
                y = fused.apply_norm(x, mean, rstd, weight, bias, out_dtype=out_dtype)[1]
            else:                                    # written when read, or by the pass of a later x + r
                y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
                fused.due[_storage(y)] = (y, x, mean, rstd, weight, bias)
        else:
            del fused.pending[_storage(x)]
            fused.fill(add[0])
            fused.fill(add[1])
            y = fused.apply_norm(add[0], mean, rstd, weight, bias, residual=add[1], h_out=x, out_dtype=out_dtype,
                                 x_norm=fused.norm_of(add[0]))[1]
        return y, mean.detach(), rstd.detach()


_WRITES: dict = {}                                 # op -> its arguments that it writes into: (position, name)


def _written(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an in-place or out= op writes into."""
    if func not in _WRITES:
        _WRITES[func] = [(i, a.name) for i, a in enumerate(func._schema.arguments)
                         if a.alias_info is not None and a.alias_info.is_write]
    found = [args[i] if i < len(args) else kwargs.get(name) for i, name in _WRITES[func]]
    return [t for a in found for t in (a if isinstance(a, (list, tuple)) else (a,)) if isinstance(t, torch.Tensor)]


_DROPOUT_ARG: dict = {}                            # op -> position of its dropout_p argument (None: it has none)


def _dropout_p(func, args, kwargs) -> float:
    if func not in _DROPOUT_ARG:
        _DROPOUT_ARG[func] = next((i for i, a in enumerate(func._schema.arguments) if a.name == "dropout_p"), None)
    i = _DROPOUT_ARG[func]
    if i is None:
        return 0.0
    return float(args[i] if i < len(args) else kwargs.get("dropout_p", 0.0))


class _Frame:
    """One checkpointed call: what is needed to run fn again, and the tensors recomputed for backward."""

    def __init__(self, fn, args, kwargs, preserve_rng_state: bool, keep: frozenset | None, keep_in=None,
                 fuse_norms=None):
        self.fn, self.args, self.kwargs, self.keep, self.keep_in = fn, args, kwargs, keep, keep_in
        self.fuse_norms = fuse_norms
        self.stats: list[torch.Tensor] = []          # fuse_norms: each LayerNorm's mean and rstd, kept
        self.norm_rows: tuple | None = None          # inside a LayerNorm of fuse_norms: its input's rows
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        self.requires_grad = [t.requires_grad for t in tensors]
        self.inputs = _hold(tensors)                 # saved through the hooks outside this call
        self.args = tuple(None if isinstance(a, torch.Tensor) else a for a in args)
        self.tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        self.meta: list[tuple] = []                  # (shape, dtype, device) of each dropped tensor
        self.recomputed: dict[int, torch.Tensor] = {}
        self.kept_ops: list[tuple] = []              # selective: ops whose outputs are kept, in order
        self.kept_ptrs: dict[int, int] = {}          # storage -> index in kept_ops
        self.packed_ops: set[int] = set()            # kept ops whose output autograd saved
        self.kept_node = None
        self.preserve = preserve_rng_state
        self.cuda_devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
        if preserve_rng_state:
            self.cpu_rng = torch.get_rng_state()
            self.cuda_rng = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]
        device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        self.autocast = {d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in device_types}

    # --- forward: drop what autograd saves, keep a ticket
    def pack(self, t: torch.Tensor):
        storage = _storage(t)
        if storage in self.kept_ptrs:                # selective: a kept matmul output (or a view of one)
            self.packed_ops.add(self.kept_ptrs[storage])
            return t.detach()
        if self.norm_rows is not None and t.dtype == torch.float32 and t.shape[:-1] == self.norm_rows \
                and t.dim() == len(self.norm_rows) + 1 and t.shape[-1] == 1:   # a LayerNorm's mean or 1/std
            self.stats.append(t.detach())
            return self.stats[-1]
        self.meta.append((t.shape, t.dtype, t.device))
        return len(self.meta) - 1

    # --- backward: cash a ticket, recomputing fn the first time
    def unpack(self, ticket):
        if isinstance(ticket, torch.Tensor):
            return ticket
        if ticket not in self.recomputed:
            self.recompute()
        return self.recomputed.pop(ticket)

    def recompute(self) -> None:
        args = list(self.args)
        for i, t, rg in zip(self.tensor_pos, self.inputs.saved_tensors, self.requires_grad):
            args[i] = t.detach().requires_grad_(rg)  # same requires_grad: ops save differently without it
        replay, stats = self._replay_list() if self.keep is not None else ([], [])
        kept_ptrs = {_storage(t) for _, out in replay for t in (out if isinstance(out, tuple) else (out,))
                     if isinstance(t, torch.Tensor)} | {_storage(t) for pair in stats for t in pair}
        kept_ptrs.discard(None)
        fused = _FusedNorms(self, stats) if self.fuse_norms else None
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
            stack.enter_context(_restored_rng(self))
            for device_type, (enabled, dtype) in self.autocast.items():
                stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None))
            if self.keep is not None:
                stack.enter_context(_keeping(self, replay))
            if fused is not None:                    # after: its hooks must step aside first and come back last
                stack.enter_context(fused)
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
                               + self.stats)
        if len(self.stats) % 2:
            raise RuntimeError("fuse_norms: a LayerNorm saved a mean without its 1/std; pass only nn.LayerNorm "
                               "modules (normalising the last dimension)")
        self.stats = len(self.stats) // 2            # (mean, rstd) pairs; they now live in kept_node only
        self.kept_ops = [(func, tuple(_TENSOR if isinstance(o, torch.Tensor) else o for o in outs), was_tuple, n)
                         for func, outs, was_tuple, n in self.kept_ops]  # tensors now live in kept_node only
        self.kept_ptrs, self.packed_ops = {}, set()

    def _replay_list(self) -> list:
        kept = iter(self.kept_node.saved_tensors)   # through the outer hooks: a nested checkpoint recomputes them
        replay = []
        for func, outs, was_tuple, _ in self.kept_ops:
            items = tuple(next(kept) if o is _TENSOR else o for o in outs)
            replay.append((func, items if was_tuple else items[0]))
        rest = list(kept)
        return replay, [tuple(rest[i:i + 2]) for i in range(0, 2 * self.stats, 2)]


class _restored_rng:
    """Run the recomputation with the RNG state forward saw, then put the current state back."""

    def __init__(self, frame: _Frame):
        self.frame = frame

    def __enter__(self):
        f = self.frame
        if f.preserve:
            self.saved = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in f.cuda_devices])
            torch.set_rng_state(f.cpu_rng)
            for d, state in zip(f.cuda_devices, f.cuda_rng):
                torch.cuda.set_rng_state(state, d)

    def __exit__(self, *exc):
        f = self.frame
        if f.preserve:
            torch.set_rng_state(self.saved[0])
            for d, state in zip(f.cuda_devices, self.saved[1]):
                torch.cuda.set_rng_state(state, d)
        return False


def _run(fn, args, kwargs, preserve_rng_state, keep, keep_in=None, fuse_norms=None):
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
    frame = _Frame(fn, args, kwargs, preserve_rng_state, keep, keep_in, fuse_norms)
    with torch.autograd.graph.saved_tensors_hooks(frame.pack, frame.unpack):
        if keep is None:
            out = fn(*args, **kwargs)
        else:
            stats = _KeepNormStats(frame) if fuse_norms else nullcontext()
            with _keeping(frame), stats:
                out = fn(*args, **kwargs)
    if keep is not None:
        frame.keep_needed()
    return out


def checkpoint(fn: Callable, *args, preserve_rng_state: bool = True, **kwargs):
    """fn(*args, **kwargs), saving only its tensor inputs; backward re-runs fn with the same RNG and autocast.

    Mirrors torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False).
    """
    return _run(fn, args, kwargs, preserve_rng_state, keep=None)


def checkpoint_selective(fn: Callable, *args, keep: frozenset = MATMUL_OPS, keep_in=None, fuse_norms=None,
                         preserve_rng_state: bool = True, **kwargs):
    """Like checkpoint, but keeps the outputs of `keep` ops (matmuls, attention) and recomputes only the cheap
    pointwise and normalisation work: selective recompute (Korthikanti et al. 2022, sec. 5).

    keep_in: the modules (e.g. [block.attn.c_attn, block.mlp.c_fc]) whose `keep` ops are kept; None = every
    `keep` op in fn. Naming them also costs less host time: only their ops go through a Python dispatch mode.
    fuse_norms: LayerNorm modules (e.g. [block.ln_1, block.ln_2]) whose mean and 1/std are kept (8 bytes a row)
    so backward rebuilds their output, with the residual add before it and the cast after it, in one Triton
    pass (frugal.kernels.layer_norm_recompute; needs Triton). Under autocast the rebuilt output comes already
    in the autocast dtype, as the matmul reading it would cast it: name only LayerNorms whose output feeds
    matmuls (a pre-norm block's ln_1 and ln_2). Bit-identical to eager on a GPU; on a CPU the interpreter's
    rounding may differ from PyTorch's by one unit in the last place.
    """
    if not isinstance(keep, (set, frozenset)) or not all(isinstance(op, torch._ops.OpOverload) for op in keep):
        raise TypeError("keep must be a set of aten op overloads, e.g. {torch.ops.aten.mm.default}; "
                        "see frugal.recompute.MATMUL_OPS")
    if keep_in is not None:
        keep_in = list(keep_in)
        if not all(isinstance(m, torch.nn.Module) for m in keep_in):
            raise TypeError("keep_in must be a list of nn.Module (the submodules whose matmul outputs to keep), "
                            "or None to keep every matmul output in fn")
    if fuse_norms is not None:
        fuse_norms = list(fuse_norms)
        if not all(isinstance(m, torch.nn.Module) for m in fuse_norms):
            raise TypeError("fuse_norms must be a list of nn.LayerNorm modules inside fn (e.g. [block.ln_1, "
                            "block.ln_2]), or None to recompute LayerNorms eagerly")
    return _run(fn, args, kwargs, preserve_rng_state, keep=frozenset(keep), keep_in=keep_in,
                fuse_norms=fuse_norms or None)


def sqrt_segments(n: int) -> int:
    """√n segments: n/k stored boundaries plus one segment of n/k recomputed is smallest at k = √n
    (Chen et al. 2016, sec. 4.1)."""
    return max(1, round(math.sqrt(n)))


def checkpoint_sequential(modules, segments: int | None, x: torch.Tensor, *, preserve_rng_state: bool = True,
                          checkpoint_fn: Callable | None = None) -> torch.Tensor:
    """Run modules in order, storing only the inputs of `segments` segments (None = √n, Chen et al. 2016).

    As torch.utils.checkpoint.checkpoint_sequential, the last segment runs plainly: its backward comes first.
    """
    mods = list(modules)
    if not mods or not all(callable(m) for m in mods):
        raise TypeError("modules must be a non-empty nn.Sequential, nn.ModuleList or list of callables")
    n = len(mods)
    segments = sqrt_segments(n) if segments is None else segments
    if not isinstance(segments, int) or not 1 <= segments <= n:
        raise ValueError(f"segments={segments!r} for {n} modules: pick an integer in 1..{n}, or None for √n")
    ckpt = checkpoint_fn or (lambda f, inp: checkpoint(f, inp, preserve_rng_state=preserve_rng_state))
    size = n // segments

    def run(start, end):
        def forward(inp):
            for m in mods[start:end]:
                inp = m(inp)
            return inp
        return forward

    start = 0
    for _ in range(segments - 1):
        x = ckpt(run(start, start + size), x)
        start += size
    return run(start, n)(x)


# ----------------------------------------------------------------------------- TinyGPT's switch

POLICIES = ("none", "full", "every", "first", "selective", "sqrt")

# The selective policy's default: inside each block keep the outputs of the qkv projection, the attention core
# and the MLP's up-projection (the expensive work); recompute LayerNorms, GELU, the attention's output
# projection and the residual adds in backward.
SELECTIVE_KEEP = ("attn.c_attn", "attn.core", "mlp.c_fc")


@dataclass(frozen=True)
class Recompute:
    """How TinyGPT runs its blocks (TinyGPT.recompute): which blocks recompute their activations in backward."""
    policy: str = "none"                    # none | full | every (every k-th block) | first (the first k) | selective | sqrt
    k: int = 1                              # for 'every' and 'first'
    checkpoint_fn: Callable | None = None   # None = ours; e.g. partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    keep: tuple[str, ...] | None = SELECTIVE_KEEP  # 'selective': block submodules whose matmul outputs stay;
                                            # None = every matmul output, found op by op (every op via Python)
    fused: bool = True                      # 'selective' on a GPU: rebuild LayerNorms (with the add before and
                                            # the cast after) from kept statistics in one Triton pass

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
        """The block's LayerNorms when they are rebuilt by the fused kernel: selective, fused, on a GPU with
        Triton (on a CPU Triton only interprets, far slower than eager)."""
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
