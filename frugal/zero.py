"""ZeRO stages 1, 2 and 3 from scratch: shard the optimizer states, then the gradients, then the weights.

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", sec. 5:
plain data parallel keeps weights, gradients and Adam states whole on every rank (16 bytes per parameter
in mixed precision); stage s shards the first s of (optimizer states, gradients, weights) over N ranks.
Each unit (a TinyGPT block; the rest of the model is the root unit) is one flat buffer padded to a
multiple of N, and rank r owns slice r of every unit. Stage 3 all-gathers a unit just before its forward
and again for its backward, and frees it after: the idea torch's FSDP is built on.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from frugal.dist import grad_hooks, remove_handles, weak_method

STAGES = (1, 2, 3)


# ----------------------------------------------------------------------------- flat buffers

@dataclass
class FlatLayout:
    """Where each parameter of a unit sits in its flat buffer, padded so world_size ranks own equal slices."""
    numels: list[int]
    shapes: list[torch.Size]
    world_size: int

    @property
    def offsets(self) -> list[int]:
        out, o = [], 0
        for n in self.numels:
            out.append(o)
            o += n
        return out

    @property
    def numel(self) -> int:
        return sum(self.numels)

    @property
    def padded(self) -> int:
        """numel rounded up to a multiple of world_size (the padding is zeros that no one trains)."""
        return -(-self.numel // self.world_size) * self.world_size

    @property
    def shard_size(self) -> int:
        return self.padded // self.world_size

    def flatten(self, tensors: list[torch.Tensor | None], dtype: torch.dtype, device) -> torch.Tensor:
        """One padded 1-D buffer of the tensors (None = zeros, for a parameter that got no gradient)."""
        flat = torch.zeros(self.padded, dtype=dtype, device=device)
        for t, o, n in zip(tensors, self.offsets, self.numels):
            if t is not None:
                flat[o:o + n].copy_(t.reshape(-1))
        return flat

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter as a view into flat (no copy)."""
        return [flat[o:o + n].view(s) for o, n, s in zip(self.offsets, self.numels, self.shapes)]


@dataclass
class CommCounter:
    """Bytes this rank sends, as a ring algorithm sends them: reduce-scatter and all-gather of a B-byte
    buffer send B(N-1)/N each, an all-reduce (one of each) 2B(N-1)/N (ZeRO paper, sec. 7)."""
    world_size: int
    bytes_by_op: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, op: str, full_buffer_bytes: int) -> None:
        n = self.world_size
        passes = 2 if op == "all_reduce" else 1
        self.bytes_by_op[op] = self.bytes_by_op.get(op, 0.0) + passes * full_buffer_bytes * (n - 1) / n

    @property
    def total(self) -> float:
        return sum(self.bytes_by_op.values())

    def per_step(self) -> float:
        return self.total / max(self.steps, 1)


class _GatherUnit(torch.autograd.Function):
    """All-gather a unit's shard into its full flat buffer; the backward is the adjoint, a reduce-scatter."""

    @staticmethod
    def forward(ctx, shard, zero, unit):
        ctx.zero, ctx.unit = zero, unit
        return zero._all_gather(shard)

    @staticmethod
    def backward(ctx, grad_full):
        grad_shard = ctx.zero._reduce_scatter(grad_full)
        ctx.zero._regathered.pop(ctx.unit, None)          # this unit's backward is done: free its weights
        return grad_shard, None, None


# ----------------------------------------------------------------------------- the wrapper

class ZeroDataParallel(nn.Module):
    """Data parallel training with ZeRO stage 1, 2 or 3 sharding of the training state over the process group.

    zero = ZeroDataParallel(model, stage=2, lr=3e-3); loss = zero(x, y)[1]; loss.backward();
    zero.clip_grad_norm_(1.0); zero.step(); zero.zero_grad(). Call it on every rank (inside frugal.dist.launch):
    the model must start identical on all ranks. param_dtype=torch.bfloat16 (or float16) computes with 16-bit
    copies of the weights and keeps an fp32 master shard. units: the modules gathered one at a time in
    stage 3 (default: model.blocks; stages 1-2 reduce unit by unit); the other parameters form the root unit.
    With recompute, make each checkpointed module a unit, so its recomputed forward gathers it again.
    """

    def __init__(self, model: nn.Module, stage: int, optimizer_cls=torch.optim.AdamW,
                 param_dtype: torch.dtype | None = None, units: list[nn.Module] | None = None,
                 group=None, **optim_kwargs):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}: ZeRO has stages 1 (optimizer states), 2 (+ gradients) and "
                             f"3 (+ weights); plain data parallel (stage 0) is torch DDP or frugal.data_parallel")
        if not dist.is_initialized():
            raise RuntimeError("ZeroDataParallel needs a process group: build it inside a function run by "
                               "frugal.dist.launch(fn, world_size)")
        if param_dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"param_dtype={param_dtype}: pick None (fp32), torch.bfloat16 or torch.float16")
        self.stage, self.group = stage, group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.backend = dist.get_backend(group)
        self.mixed = param_dtype not in (None, torch.float32)
        self.param_dtype = param_dtype or torch.float32
        self.module = model
        self.comm = CommCounter(self.world_size)
        params = list(dict.fromkeys(model.parameters()))      # a tied weight once
        n_total = sum(p.numel() for p in params)
        if n_total < self.world_size:
            raise ValueError(f"the model has {n_total} parameters but world_size={self.world_size}: every rank "
                             f"must own at least one; use fewer ranks or a larger model")
        device = params[0].device
        self.units = self._find_units(model, units, required=stage == 3)
        # unit 0 is the root (what no unit owns); unit i+1 is self.units[i]
        owned: list[list[nn.Parameter]] = []
        seen: set[int] = set()
        for u in self.units:
            ps = [p for p in dict.fromkeys(u.parameters()) if id(p) not in seen]
            seen.update(id(p) for p in ps)
            owned.append(ps)
        root = [p for p in params if id(p) not in seen]
        self.unit_params = [root] + owned
        # every (module, attribute name) each parameter is reachable by, tied weights included
        where = {id(p): [] for p in params}
        for m in model.modules():
            for name, p in m._parameters.items():
                if p is not None:
                    where[id(p)].append((m, name))
        self._where = [[where[id(p)] for p in ps] for ps in self.unit_params]
        self.layouts = [FlatLayout([p.numel() for p in ps], [p.shape for p in ps], self.world_size)
                        for ps in self.unit_params]
        self._native_rs = self._probe_reduce_scatter(device)

        # fp32 master shards: the optimizer's parameters (slice `rank` of each unit's flat buffer)
        self.master: list[nn.Parameter] = []
        self.flat: list[torch.Tensor | None] = []        # stages 1-2: full flat weights, param_dtype
        self.shard: list[torch.Tensor] = []              # stage 3: this rank's weights, param_dtype
        self.grad_shard: list[torch.Tensor | None] = [None] * len(self.layouts)
        for u, (ps, lay) in enumerate(zip(self.unit_params, self.layouts)):
            full = lay.flatten([p.detach() for p in ps], torch.float32, device)
            lo, hi = self.rank * lay.shard_size, (self.rank + 1) * lay.shard_size
            if stage < 3:
                flat = full.to(self.param_dtype)
                self.flat.append(flat)
                for p, v in zip(ps, lay.views(flat)):
                    p.data = v                             # the model's weights now live in the flat buffer
                master = flat[lo:hi] if not self.mixed else full[lo:hi].clone()
                self.master.append(nn.Parameter(master))   # fp32: a view of the flat weights, no copy
            else:
                master = nn.Parameter(full[lo:hi].clone())
                self.master.append(master)
                self.shard.append(master if not self.mixed
                                  else master.detach().to(self.param_dtype).requires_grad_(True))
                for m, name in [mn for w in self._where[u] for mn in w]:
                    del m._parameters[name]
                    setattr(m, name, None)                 # filled with a gathered view just before use
                for p in ps:
                    p.data = torch.empty(0, dtype=p.dtype, device=device)   # free the whole weights
            del full
        self.optimizer = optimizer_cls(self.master, **optim_kwargs)
        self._hooks = []
        self._inflight: list = []                         # stage 2: (unit, finish) of reduce-scatters under way
        self._regathered: dict[int, torch.Tensor] = {}   # stage 3: units gathered again for backward
        self._live: dict[int, int] = {}                  # stage 3: storage address -> unit, during forward
        if stage == 2:
            self._pending = [len(ps) for ps in self.unit_params]
            for u, ps in enumerate(self.unit_params):
                grad_hooks(self, ps, "_grad_ready", u)
        if stage == 3:                                     # held weakly, as grad_hooks does: see frugal.dist
            gather, release = weak_method(self._pre_forward), weak_method(self._release)
            for i, m in enumerate(self.units):
                self._hooks.append(m.register_forward_pre_hook(lambda m, a, u=i + 1: gather(u)))
                self._hooks.append(m.register_forward_hook(lambda m, a, o, u=i + 1: release(u)))
            weakref.finalize(self, remove_handles, self._hooks)
        self._reduced = False

    @staticmethod
    def _find_units(model: nn.Module, units, required: bool):
        """The units to shard one by one: given, else model.blocks; stages 1-2 may do with the root alone."""
        if units is None:
            units = getattr(model, "blocks", None)
            if not isinstance(units, (nn.ModuleList, nn.Sequential)) or len(units) == 0:
                if not required:
                    return []
                raise ValueError(f"{type(model).__name__} has no `blocks` list to shard unit by unit: pass "
                                 f"units=[...] (the modules to gather one at a time, e.g. its layers)")
        units = list(units)
        mods = set(map(id, model.modules()))
        for u in units:
            if not isinstance(u, nn.Module) or id(u) not in mods:
                raise ValueError(f"units must be submodules of the model; got {type(u).__name__}")
        return units

    def _probe_reduce_scatter(self, device) -> bool:
        """True when the backend has a native reduce-scatter (NCCL; gloo from torch 2.x); else we emulate."""
        if self.backend == "nccl":
            return True
        try:
            out = torch.zeros(1, device=device)
            _reduce_scatter_into(out, torch.ones(self.world_size, device=device), self.group)
            return True
        except (RuntimeError, NotImplementedError, AttributeError):
            return False

    # ------------------------------------------------------------------ collectives, counted
    def _all_gather(self, shard: torch.Tensor) -> torch.Tensor:
        full = torch.empty(shard.numel() * self.world_size, dtype=shard.dtype, device=shard.device)
        _all_gather_into(full, shard.detach().contiguous(), self.group)
        self.comm.add("all_gather", full.numel() * full.element_size())
        return full

    def _reduce_scatter(self, full: torch.Tensor) -> torch.Tensor:
        """Average of `full` over ranks, this rank's slice only. Without a native reduce-scatter (older gloo)
        it all-reduces and keeps the slice; the counter still records what a real reduce-scatter sends."""
        return self._reduce_scatter_start(full.contiguous() / self.world_size)()   # divide first, as DDP does

    def _reduce_scatter_start(self, flat: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Launch the reduce-scatter of `flat` (already divided by N) without waiting; returns the function that
        waits (on NCCL: makes the compute stream wait, the host goes on) and gives this rank's slice."""
        n = flat.numel() // self.world_size
        self.comm.add("reduce_scatter", flat.numel() * flat.element_size())
        if self._native_rs:
            out = torch.empty(n, dtype=flat.dtype, device=flat.device)
            work = _reduce_scatter_into(out, flat, self.group, async_op=True)
        else:
            out = flat
            work = dist.all_reduce(flat, group=self.group, async_op=True)

        def finish() -> torch.Tensor:
            work.wait()
            return out if self._native_rs else out[self.rank * n:(self.rank + 1) * n].clone()
        return finish

    # ------------------------------------------------------------------ stage 2: reduce as gradients arrive
    def _grad_ready(self, u: int, param=None) -> None:
        self._pending[u] -= 1
        if self._pending[u] == 0:
            self._reduce_unit(u)

    def _reduce_unit(self, u: int) -> None:
        """Start this unit's reduce-scatter and let the rest of backward run meanwhile; the previous unit's is
        finished first, so at most one unit's full gradient waits on the network at a time."""
        ps = self.unit_params[u]
        flat = self.layouts[u].flatten([p.grad for p in ps], self.param_dtype, self.master[u].device)
        for p in ps:
            p.grad = None                                  # keep only the shard's gradients
        self._finish_reductions()
        self._inflight.append((u, self._reduce_scatter_start(flat.div_(self.world_size))))  # divide first, as DDP
        if self.stage == 2:
            self._pending[u] = len(ps)                     # ready for the next backward (or micro-batch)

    def _finish_reductions(self) -> None:
        for u, finish in self._inflight:
            g = finish()
            self.grad_shard[u] = g if self.grad_shard[u] is None else self.grad_shard[u] + g
        self._inflight = []

    def reduce_gradients(self) -> None:
        """Stages 1-2: make sure every unit's gradient is reduce-scattered into this rank's shard."""
        if self._reduced or self.stage == 3:
            return
        for u in range(len(self.layouts)):
            if self.stage == 1 or any(p.grad is not None for p in self.unit_params[u]):
                self._reduce_unit(u)
        self._finish_reductions()
        self._reduced = True

    # ------------------------------------------------------------------ stage 3: gather, free, regather
    def _gather_into(self, u: int, for_backward: bool = False) -> torch.Tensor:
        full = _GatherUnit.apply(self.shard[u], self, u)
        if not for_backward:
            self._live[full.untyped_storage().data_ptr()] = u       # forgotten at _release: the address is reused
            for w, v in zip(self._where[u], self.layouts[u].views(full)):
                for m, name in w:
                    setattr(m, name, v)
        return full

    def _pre_forward(self, u: int) -> None:
        self._gather_into(u)

    def _release(self, u: int) -> None:
        self._live = {ptr: v for ptr, v in self._live.items() if v != u}
        for w in self._where[u]:
            for m, name in w:
                setattr(m, name, None)                     # drop the gathered weights: only saved markers remain

    def _pack(self, t: torch.Tensor):
        u = self._live.get(t.untyped_storage().data_ptr()) if t.device.type != "meta" else None
        if u is None:
            return t
        return ("zero-unit", u, t.shape, t.stride(), t.storage_offset())   # a weight: keep where, not what

    def _unpack(self, packed):
        if not (isinstance(packed, tuple) and packed and packed[0] == "zero-unit"):
            return packed
        _, u, shape, stride, offset = packed
        if u not in self._regathered:                      # first use in backward: all-gather the unit again
            with torch.no_grad():
                self._regathered[u] = self._all_gather(self.shard[u])
        return self._regathered[u].as_strided(shape, stride, offset)

    def forward(self, *args, **kwargs):
        self._reduced = False
        if self.stage < 3:
            return self.module(*args, **kwargs)
        self._live.clear()
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            self._gather_into(0)                           # the root unit stays gathered for the whole forward
            try:
                return self.module(*args, **kwargs)
            finally:
                self._release(0)
                self._live.clear()

    # ------------------------------------------------------------------ optimizer
    def _shard_grads(self) -> list[torch.Tensor | None]:
        self.reduce_gradients()
        return self.grad_shard if self.stage < 3 else [s.grad for s in self.shard]

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale gradients so their global L2 norm is at most max_norm: each rank sums squares of its
        shard, one all-reduce adds them (padding is zero and adds nothing). Returns the norm before clipping."""
        grads = [g for g in self._shard_grads() if g is not None]
        sq = torch.stack([g.float().pow(2).sum() for g in grads]).sum()
        dist.all_reduce(sq, group=self.group)
        norm = sq.sqrt()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.to(g.dtype))
        return norm

    @torch.no_grad()
    def step(self) -> None:
        """Adam on this rank's shard only, then (stages 1-2) all-gather the updated weights to every rank."""
        for m, g in zip(self.master, self._shard_grads()):
            m.grad = None if g is None else g.to(torch.float32)
        self.optimizer.step()
        for u, m in enumerate(self.master):
            m.grad = None
            if self.stage < 3:
                self.flat[u].copy_(self._all_gather(m.to(self.param_dtype)))
            elif self.mixed:
                self.shard[u].copy_(m)
        self.comm.steps += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._finish_reductions()                          # nothing left in flight to land in a cleared shard
        for ps in self.unit_params:
            for p in ps:
                p.grad = None
        self.grad_shard = [None] * len(self.layouts)
        for s in self.shard:
            s.grad = None
        self._reduced = False

    # ------------------------------------------------------------------ serialization
    def state_dict(self) -> dict:
        """This rank's shard of the training state: fp32 master weights and the optimizer's state for them."""
        return {"stage": self.stage, "rank": self.rank, "world_size": self.world_size,
                "numels": [lay.numel for lay in self.layouts],
                "master": [m.detach().clone() for m in self.master],
                "optimizer": self.optimizer.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Resume from state_dict() saved by the same rank of the same layout (same world size, same model)."""
        for key, mine in (("world_size", self.world_size), ("rank", self.rank),
                          ("numels", [lay.numel for lay in self.layouts])):
            if state.get(key) != mine:
                raise ValueError(f"state {key}={state.get(key)!r} but this rank has {mine!r}: load each rank's "
                                 f"own shard, saved with the same world size and model")
        for u, (m, saved) in enumerate(zip(self.master, state["master"])):
            m.copy_(saved)
            if self.stage < 3:
                self.flat[u].copy_(self._all_gather(m.to(self.param_dtype)))
            elif self.mixed:
                self.shard[u].copy_(m)
        self.optimizer.load_state_dict(state["optimizer"])

    @torch.no_grad()
    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter, whole and in fp32 (all-gathered from the master shards): for checks and saving."""
        out = {}
        for u, (m, lay) in enumerate(zip(self.master, self.layouts)):
            full = torch.empty(lay.padded, dtype=torch.float32, device=m.device)
            _all_gather_into(full, m.detach().contiguous(), self.group)
            for w, v in zip(self._where[u], lay.views(full)):
                for mod, attr in w:
                    out[self._qualname(mod, attr)] = v.clone()
        return out

    def _qualname(self, mod: nn.Module, attr: str) -> str:
        for name, m in self.module.named_modules():
            if m is mod:
                return f"{name}.{attr}" if name else attr
        raise KeyError(attr)

    # ------------------------------------------------------------------ memory, counted
    def memory_bytes(self) -> dict[str, int]:
        """Bytes of weights, gradients and optimizer states this rank holds now, each storage counted once
        (call it after backward, before step(), to see the gradients at their peak)."""
        self._finish_reductions()                          # stage 2: the last unit's shard may still be on its way
        seen: set[int] = set()

        def size(ts) -> int:
            total = 0
            for t in ts:
                if t is None:
                    continue
                s = t.untyped_storage()
                if s.data_ptr() not in seen:
                    seen.add(s.data_ptr())
                    total += s.nbytes()
            return total

        weights = size(self.flat if self.stage < 3 else self.shard)
        grads = size([p.grad for ps in self.unit_params for p in ps] + list(self.grad_shard)
                     + [s.grad for s in self.shard])
        opt_state = [t for st in self.optimizer.state.values() for t in st.values()
                     if torch.is_tensor(t) and t.dim() > 0]     # not Adam's step count
        optimizer = size(list(self.master) + opt_state)
        return {"weights": weights, "gradients": grads, "optimizer": optimizer}


def _all_gather_into(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def _reduce_scatter_into(out: torch.Tensor, inp: torch.Tensor, group, async_op: bool = False):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(out, inp, group=group, async_op=async_op)
