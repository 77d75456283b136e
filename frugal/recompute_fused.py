"""The optional speed path of frugal.recompute: selective recompute's LayerNorms rebuilt in one Triton pass.

frugal/recompute.py is the lesson and reads without this module. Here is only what makes it faster on a GPU:
- FusedNorms, handed to the core's _Frame (its one seam: forward, keeps, recompute): in forward it keeps each
  named LayerNorm's mean and 1/std (8 bytes a row) instead of dropping them; in the recomputation it rebuilds
  the LayerNorm's output from them, with the residual add before it and the autocast cast after it, in one pass
  (frugal.kernels.layer_norm_recompute), instead of three eager passes over memory;
- DirectMode: the core's dispatch modes without torch's per-call dynamo wrapper (host time, not results).
It imports nothing from frugal.recompute (which imports it), registers nothing, and changes no value: the
rebuilt LayerNorm is PyTorch's own CUDA formula, so gradients stay bit-identical on a GPU.
"""
from __future__ import annotations

import torch
# Recent torch (2.13 here) wraps a mode's __torch_dispatch__ in torch._disable_dynamo, which imports torch._dynamo
# on its first call. Inside a forward that import pins every frame on the stack (torch.fx.wrap holds its own frame
# in a cycle), the core's _run `frame` and its tensors too, until a gc pass; so import it now, outside any forward.
import torch._dynamo  # noqa: F401
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

aten = torch.ops.aten


class DirectMode(TorchDispatchMode):
    """A dispatch mode called directly. Recent torch wraps each mode's __torch_dispatch__ in torch._disable_dynamo
    unless the class opts out; the wrapper costs more than the mode's own work on every op it sees, tens of
    milliseconds of host time a GPT-2 step, enough to leave the GPU waiting. These modes only run eagerly."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


def _storage(t: torch.Tensor) -> int | None:
    s = t.untyped_storage()
    return s.data_ptr() if s.nbytes() else None


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


_WRITES: dict = {}                                 # op -> its arguments that it writes into: (position, name)


def _written(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an in-place or out= op writes into."""
    if func not in _WRITES:
        _WRITES[func] = [(i, a.name) for i, a in enumerate(func._schema.arguments)
                         if a.alias_info is not None and a.alias_info.is_write]
    found = [args[i] if i < len(args) else kwargs.get(name) for i, name in _WRITES[func]]
    return [t for a in found for t in (a if isinstance(a, (list, tuple)) else (a,)) if isinstance(t, torch.Tensor)]


def _hook(modules, pre, post, handles: list) -> None:
    """pre(module, args) as each module's forward starts, post(module, args, out) as it ends (raising or not)."""
    for m in modules:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post, always_call=True))


class FusedNorms:
    """The speed path of one checkpoint_selective(fuse_norms=norms) call; the core's _Frame calls three methods:
    forward() around fn in forward, keeps(t) from its pack hook, recompute(...) around the recomputation.
    Bit-identical to eager on a GPU; on a CPU Triton's interpreter may round one unit in the last place apart."""

    def __init__(self, norms):
        self.norms = list(norms)
        if not all(isinstance(m, torch.nn.Module) for m in self.norms):
            raise TypeError("fuse_norms must be a list of nn.LayerNorm modules inside fn (e.g. [block.ln_1, "
                            "block.ln_2]), or None to recompute LayerNorms eagerly")
        self.rows: tuple | None = None               # inside a LayerNorm of norms, in forward: its input's rows
        self.n_kept = 0                              # statistics kept in forward: a mean and a 1/std per call

    def keeps(self, t: torch.Tensor) -> bool:
        """Forward: is t a mean or 1/std saved by a LayerNorm of norms (one float32 per row)? Then keep it."""
        rows = self.rows
        if rows is None or t.dtype != torch.float32 or t.dim() != len(rows) + 1 or t.shape[:-1] != rows \
                or t.shape[-1] != 1:
            return False
        self.n_kept += 1
        return True

    def forward(self) -> _MarkNorms:
        """Around fn in forward: module hooks, not a dispatch mode, mark each LayerNorm call for keeps()."""
        return _MarkNorms(self)

    def recompute(self, fn, autocast: dict, kept: list[torch.Tensor], recomputed: dict) -> _Rebuild:
        """Around the recomputation: kept = the tensors keeps() chose, in order; what the recomputation hands
        to autograd (recomputed's values) is written before it leaves."""
        return _Rebuild(self.norms, fn, autocast, [tuple(kept[i:i + 2]) for i in range(0, len(kept), 2)],
                        recomputed)


class _MarkNorms:
    """Forward: while a LayerNorm of norms runs, fused.rows holds its input's rows."""

    def __init__(self, fused: FusedNorms):
        self.fused, self.handles = fused, []

    def _enter(self, module, args) -> None:
        self.fused.rows = tuple(args[0].shape[:-1]) if args and isinstance(args[0], torch.Tensor) else None

    def _exit(self, module, args, out) -> None:
        self.fused.rows = None

    def __enter__(self):
        _hook(self.fused.norms, self._enter, self._exit, self.handles)
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.fused.rows = None
        if exc[0] is None and self.fused.n_kept % 2:
            raise RuntimeError("fuse_norms: a LayerNorm saved a mean without its 1/std; pass only nn.LayerNorm "
                               "modules (normalising the last dimension)")
        return False


class _Rebuild:
    """Recomputation: each LayerNorm of norms rebuilt from forward's statistics in one pass
    (frugal.kernels.layer_norm_recompute), the residual add before it folded in.

    Results are handed back unfilled, with a note of how to fill them, and written as late as possible:
    - fn's own ops (a block's residual adds) run under a mode that turns each add into an unfilled sum; a LayerNorm
      of norms whose input is such a sum writes it in the same pass as its output;
    - a LayerNorm of norms reading a plain tensor x (a block's ln_1) leaves its output unfilled; the pass of a
      later LayerNorm of x + r writes it too, so the block's recomputation reads x once. In a pre-norm block the
      only reader of ln_1's output is the qkv matmul, replayed from forward, which reads nothing. (Not when the
      LayerNorm has forward hooks, its own or global: they would read the output before the mode watches again.)
    Any other reader gets an unfilled tensor filled first: an op of fn, an op of a submodule called with an unfilled
    LayerNorm output (the mode watches inside it), autograd keeping it. The mode steps aside inside every other
    submodule, so their ops cost no Python, and fills everything still due before it. Under autocast the output
    comes in the autocast dtype, the cast the matmul after it would make: fuse only LayerNorms that feed matmuls."""

    def __init__(self, norms, fn, autocast: dict, stats: list[tuple[torch.Tensor, torch.Tensor]], recomputed: dict):
        from frugal.kernels.layer_norm_recompute import layer_norm_from_stats   # Triton only on this path
        self.apply_norm = layer_norm_from_stats
        self.fn, self.autocast, self.recomputed = fn, autocast, recomputed
        self.stats = stats                           # (mean, rstd) per LayerNorm call, in forward's order
        self.pending: dict[int, tuple] = {}          # storage -> (unfilled sum, x, r)
        self.due: dict[int, tuple] = {}              # storage -> (unfilled LayerNorm output, x, mean, rstd, w, b)
        self.norms, self.ids = norms, set(map(id, norms))
        # a LayerNorm whose output may wait: forward hooks of its own or global ones would read it unwatched; and
        # one whose input must be written first: its forward pre-hooks would read that unwatched
        glob = torch.nn.modules.module
        self.may_wait = {id(m) for m in norms if not (glob._global_forward_hooks or m._forward_hooks)}
        self.fill_input = {id(m) for m in norms if glob._global_forward_pre_hooks or m._forward_pre_hooks}
        self.adds = _ResidualAdds(self)
        self.active: list[_NormFromStats] = []       # the mode of each LayerNorm call now running
        self.handles: list = []
        self.suspended = False
        self.suspended_by_norm = False               # suspended only for a LayerNorm of norms called where the
                                                     # mode watches, without hooks: its output's readers are watched

    def __enter__(self):
        _hook(self.norms, self._norm_enter, self._norm_exit, self.handles)
        for child in (self.fn.children() if isinstance(self.fn, torch.nn.Module) else ()):
            self.handles.append(child.register_forward_pre_hook(self._step_aside, prepend=True))
            self.handles.append(child.register_forward_hook(self._step_back, always_call=True))
        self.adds.__enter__()
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        if not self.suspended:
            self.adds.__exit__(None, None, None)
        while self.active:
            self.active.pop().__exit__(None, None, None)
        if exc[0] is None:                           # what autograd saved must hold values, not a placeholder
            with torch.no_grad():
                self.fill_all(self.recomputed.values())
        # the modes and their hooks point back here: drop the loop, or the frame and every tensor it recomputed
        # would wait for a gc pass instead of going when backward is done with them
        self.adds = self.fn = self.recomputed = None
        self.pending.clear()
        self.due.clear()
        return False

    def _norm_enter(self, module, args) -> None:
        mode = _NormFromStats(self)
        mode.__enter__()
        self.active.append(mode)

    def _norm_exit(self, module, args, out) -> None:
        if self.active:
            self.active.pop().__exit__(None, None, None)

    def _step_aside(self, module, args) -> None:
        if id(module) not in self.ids:               # a LayerNorm of norms reads an unfilled sum itself
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


class _ResidualAdds(DirectMode):
    """fn's own ops in the recomputation: x + r becomes an unfilled sum; anything else reading one fills it."""

    def __init__(self, fused: _Rebuild):
        super().__init__()
        self.fused = fused

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


class _NormFromStats(DirectMode):
    """Inside a LayerNorm of norms, in the recomputation: its output from forward's mean and 1/std."""

    def __init__(self, fused: _Rebuild):
        super().__init__()
        self.fused = fused

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
        enabled, dtype = fused.autocast.get(x.device.type, (False, None))
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
