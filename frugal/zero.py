"""ZeRO stages 1, 2 and 3 from scratch: shard the optimizer states, then the gradients, then the weights.

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", sec. 5:
plain data parallel keeps weights, gradients and Adam states whole on every rank (16 bytes per parameter
in mixed precision); stage s shards the first s of (optimizer states, gradients, weights) over N ranks.
Each unit (a TinyGPT block; the rest of the model is the root unit) is one flat buffer padded to a
multiple of N, and rank r owns slice r of every unit. Each stage is a class that adds to the one before:
ZeroStage1 shards Adam, ZeroStage2(ZeroStage1) reduce-scatters each unit's gradients as backward makes them,
ZeroStage3(ZeroStage2) all-gathers a unit just before its forward and again for its backward, and frees it
after: the idea torch's FSDP is built on. ZeroDataParallel(model, stage) picks the class by number.
"""
from __future__ import annotations

import weakref

import torch
import torch.distributed as dist
import torch.nn as nn

from frugal.dist import grad_hooks, remove_handles, weak_method
from frugal.zero_comm import Collectives, CommCounter, FlatLayout, all_gather_into

STAGES = (1, 2, 3)


def _find_units(model: nn.Module, units, required: bool) -> list[nn.Module]:
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


# ----------------------------------------------------------------------------- stage 1: shard the optimizer states

class ZeroStage1(nn.Module):
    """Data parallel training with ZeRO stage 1: each rank keeps the fp32 master weights and Adam's m and v of
    its slice of every unit only, reduce-scatters the gradients after backward, steps its slice and all-gathers
    the updated weights (the model's parameters are views of each unit's full flat buffer).

    zero = ZeroStage1(model, lr=3e-3); loss = zero(x, y)[1]; loss.backward(); zero.clip_grad_norm_(1.0);
    zero.step(); zero.zero_grad(). Build it on every rank (inside frugal.dist.launch) from identical models.
    param_dtype=torch.bfloat16 (or float16) computes with 16-bit weights beside an fp32 master shard. units:
    the modules sharded one at a time (default: model.blocks; the rest is the root unit); with recompute, make
    each checkpointed module a unit, so that stage 3's recomputed forward gathers it again.
    """
    stage = 1
    units_required = False             # stage 3 gathers unit by unit; stages 1-2 can do with the root unit alone

    def __init__(self, model: nn.Module, optimizer_cls=torch.optim.AdamW, param_dtype: torch.dtype | None = None,
                 units: list[nn.Module] | None = None, group=None, **optim_kwargs):
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError(f"{type(self).__name__} needs a process group: build it inside a function run by "
                               f"frugal.dist.launch(fn, world_size)")
        if param_dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"param_dtype={param_dtype}: pick None (fp32), torch.bfloat16 or torch.float16")
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.mixed = param_dtype not in (None, torch.float32)
        self.param_dtype = param_dtype or torch.float32
        self.module = model
        params = list(dict.fromkeys(model.parameters()))      # a tied weight once
        n_total = sum(p.numel() for p in params)
        if n_total < self.world_size:
            raise ValueError(f"the model has {n_total} parameters but world_size={self.world_size}: every rank "
                             f"must own at least one; use fewer ranks or a larger model")
        device = params[0].device
        self.units = _find_units(model, units, required=self.units_required)
        # unit 0 is the root (what no unit owns); unit i+1 is self.units[i]
        owned: list[list[nn.Parameter]] = []
        seen: set[int] = set()
        for u in self.units:
            ps = [p for p in dict.fromkeys(u.parameters()) if id(p) not in seen]
            seen.update(id(p) for p in ps)
            owned.append(ps)
        self.unit_params = [[p for p in params if id(p) not in seen]] + owned
        # every (module, attribute name) each parameter is reachable by, tied weights included
        where = {id(p): [] for p in params}
        for m in model.modules():
            for name, p in m._parameters.items():
                if p is not None:
                    where[id(p)].append((m, name))
        self._where = [[where[id(p)] for p in ps] for ps in self.unit_params]
        self.layouts = [FlatLayout([p.numel() for p in ps], [p.shape for p in ps], self.world_size)
                        for ps in self.unit_params]
        self.comm = CommCounter(self.world_size)
        self.collectives = Collectives(self.comm, group, device)
        self.weights: list[torch.Tensor] = []            # param_dtype weights this rank holds, one per unit
        self.master: list[nn.Parameter] = [                # fp32 master shards: the optimizer's parameters
            self._shard_unit(u, lay.flatten([p.detach() for p in ps], torch.float32, device))
            for u, (ps, lay) in enumerate(zip(self.unit_params, self.layouts))]
        self.grad_shard: list[torch.Tensor | None] = [None] * len(self.layouts)
        self.optimizer = optimizer_cls(self.master, **optim_kwargs)
        self._inflight: list = []                        # (unit, finish) of reduce-scatters under way
        self._reduced = False
        self._install_hooks()

    def _shard_unit(self, u: int, full: torch.Tensor) -> nn.Parameter:
        """Keep unit u whole in one flat param_dtype buffer (the model's parameters become views of it); return
        this rank's fp32 master slice (in fp32, a view of the flat weights: no copy)."""
        lay = self.layouts[u]
        flat = full.to(self.param_dtype)
        self.weights.append(flat)
        for p, v in zip(self.unit_params[u], lay.views(flat)):
            p.data = v                                     # the model's weights now live in the flat buffer
        lo, hi = self.rank * lay.shard_size, (self.rank + 1) * lay.shard_size
        return nn.Parameter(flat[lo:hi] if not self.mixed else full[lo:hi].clone())

    def _install_hooks(self) -> None:
        """Stage 1 needs none: its gradients are reduced once backward is over."""

    def forward(self, *args, **kwargs):
        self._reduced = False
        return self.module(*args, **kwargs)

    # ------------------------------------------------------------------ gradients into shards
    def _reduce_unit(self, u: int) -> None:
        """Start this unit's reduce-scatter and let the rest run meanwhile; the previous unit's is finished
        first, so at most one unit's full gradient waits on the network at a time."""
        ps = self.unit_params[u]
        flat = self.layouts[u].flatten([p.grad for p in ps], self.param_dtype, self.master[u].device)
        for p in ps:
            p.grad = None                                  # keep only the shard's gradients
        self._finish_reductions()
        self._inflight.append((u, self.collectives.reduce_scatter_start(flat.div_(self.world_size))))  # as DDP

    def _finish_reductions(self) -> None:
        for u, finish in self._inflight:
            g = finish()
            self.grad_shard[u] = g if self.grad_shard[u] is None else self.grad_shard[u] + g
        self._inflight = []

    def _units_to_reduce(self) -> list[int]:
        return list(range(len(self.layouts)))             # stage 1: every unit, once backward is over

    def reduce_gradients(self) -> None:
        """Make sure every unit's gradient is reduce-scattered into this rank's shard."""
        if self._reduced:
            return
        for u in self._units_to_reduce():
            self._reduce_unit(u)
        self._finish_reductions()
        self._reduced = True

    def _shard_grads(self) -> list[torch.Tensor | None]:
        self.reduce_gradients()
        return self.grad_shard

    # ------------------------------------------------------------------ optimizer
    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale gradients so their global L2 norm is at most max_norm: each rank sums squares of its
        shard, one all-reduce adds them (padding is zero and adds nothing). Returns the norm before clipping."""
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not 0 < max_norm < float("inf"):
            raise ValueError(f"clip_grad_norm_(max_norm={max_norm!r}): must be a positive finite norm, e.g. 1.0 "
                             f"(to train unclipped, do not call it)")
        grads = [g for g in self._shard_grads() if g is not None]
        sq = torch.stack([g.float().pow(2).sum() for g in grads]).sum()
        dist.all_reduce(sq, group=self.group)
        norm = sq.sqrt()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.to(g.dtype))
        return norm

    def _publish(self, u: int, master: torch.Tensor) -> None:
        """Hand unit u's updated master shard to the compute weights: every rank's whole unit (all-gather)."""
        self.weights[u].copy_(self.collectives.all_gather(master.to(self.param_dtype)))

    @torch.no_grad()
    def step(self) -> None:
        """Adam on this rank's shard only, then publish the updated weights (stages 1-2: all-gather them)."""
        for m, g in zip(self.master, self._shard_grads()):
            m.grad = None if g is None else g.to(torch.float32)
        self.optimizer.step()
        for u, m in enumerate(self.master):
            m.grad = None
            self._publish(u, m)
        self.comm.steps += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._finish_reductions()                          # nothing left in flight to land in a cleared shard
        for ps in self.unit_params:
            for p in ps:
                p.grad = None
        self.grad_shard = [None] * len(self.layouts)
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
            self._publish(u, m)
        self.optimizer.load_state_dict(state["optimizer"])

    @torch.no_grad()
    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter, whole and in fp32 (all-gathered from the master shards): for checks and saving."""
        out, names = {}, {id(m): name for name, m in self.module.named_modules()}
        for u, (m, lay) in enumerate(zip(self.master, self.layouts)):
            full = torch.empty(lay.padded, dtype=torch.float32, device=m.device)
            all_gather_into(full, m.detach().contiguous(), self.group)
            for w, v in zip(self._where[u], lay.views(full)):
                for mod, attr in w:
                    out[f"{names[id(mod)]}.{attr}" if names[id(mod)] else attr] = v.clone()
        return out

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

        weights = size(self.weights)
        grads = size([p.grad for ps in self.unit_params for p in ps] + list(self.grad_shard)
                     + [w.grad for w in self.weights])    # stage 3's gradients sit on its weight shards
        opt_state = [t for st in self.optimizer.state.values() for t in st.values()
                     if torch.is_tensor(t) and t.dim() > 0]     # not Adam's step count
        optimizer = size(list(self.master) + opt_state)
        return {"weights": weights, "gradients": grads, "optimizer": optimizer}


# ----------------------------------------------------------------------------- stage 2: + shard the gradients

class ZeroStage2(ZeroStage1):
    """Stage 1 + gradients sharded as backward makes them: once every gradient of a unit exists, the unit is
    reduce-scattered (while the rest of backward runs) and its full gradients are freed, so a rank holds
    its gradient shards and at most a unit or two of full gradients, never the whole model's."""
    stage = 2

    def _install_hooks(self) -> None:
        self._pending = [len(ps) for ps in self.unit_params]   # gradients each unit still waits for
        for u, ps in enumerate(self.unit_params):
            grad_hooks(self, ps, "_grad_ready", u)

    def _grad_ready(self, u: int, param=None) -> None:
        self._pending[u] -= 1
        if self._pending[u] == 0:
            self._reduce_unit(u)

    def _reduce_unit(self, u: int) -> None:
        super()._reduce_unit(u)
        self._pending[u] = len(self.unit_params[u])        # ready for the next backward (or micro-batch)

    def _units_to_reduce(self) -> list[int]:
        """After backward, only a unit whose hooks did not all fire (a parameter got no gradient) is left."""
        return [u for u, ps in enumerate(self.unit_params) if any(p.grad is not None for p in ps)]


# ----------------------------------------------------------------------------- stage 3: + shard the weights

class _GatherUnit(torch.autograd.Function):
    """All-gather a unit's shard into its full flat buffer; the backward is the adjoint, a reduce-scatter."""

    @staticmethod
    def forward(ctx, shard, zero, unit):
        ctx.zero, ctx.unit = zero, unit
        return zero.collectives.all_gather(shard)

    @staticmethod
    def backward(ctx, grad_full):
        grad_shard = ctx.zero.collectives.reduce_scatter(grad_full)
        ctx.zero._regathered.pop(ctx.unit, None)          # this unit's backward is done: free its weights
        return grad_shard, None, None


class ZeroStage3(ZeroStage2):
    """Stage 2 + the weights sharded: a rank keeps only its slice of each unit, all-gathers the unit just before
    its forward, frees it after, and all-gathers it again when backward first needs it. Gradients still end
    up sharded as in stage 2, with no hooks: the gather's backward is a reduce-scatter onto the shard."""
    stage = 3
    units_required = True

    def _shard_unit(self, u: int, full: torch.Tensor) -> nn.Parameter:
        """Keep only this rank's slice: the fp32 master and, with param_dtype 16-bit, a copy to compute with.
        The model's parameters are removed, filled with gathered views just before use."""
        lay = self.layouts[u]
        lo, hi = self.rank * lay.shard_size, (self.rank + 1) * lay.shard_size
        master = nn.Parameter(full[lo:hi].clone())
        self.weights.append(master if not self.mixed else master.detach().to(self.param_dtype).requires_grad_(True))
        for m, name in [mn for w in self._where[u] for mn in w]:
            del m._parameters[name]
            setattr(m, name, None)
        for p in self.unit_params[u]:
            p.data = torch.empty(0, dtype=p.dtype, device=full.device)   # free the whole weights
        return master

    def _install_hooks(self) -> None:
        """Gather each unit before its forward, release it after (instead of stage 2's gradient hooks).
        Held weakly, as grad_hooks does: see frugal.dist."""
        self._regathered: dict[int, torch.Tensor] = {}   # units gathered again for backward
        self._live: dict[int, int] = {}                  # storage address -> unit, during forward
        self._hooks = []
        gather, release = weak_method(self._gather), weak_method(self._release)
        for i, m in enumerate(self.units):
            self._hooks.append(m.register_forward_pre_hook(lambda m, a, u=i + 1: gather(u)))
            self._hooks.append(m.register_forward_hook(lambda m, a, o, u=i + 1: release(u)))
        weakref.finalize(self, remove_handles, self._hooks)

    def _gather(self, u: int) -> None:
        """All-gather unit u and point its modules' weights at views of the full buffer (returns None: a
        forward pre-hook that returned something would replace the module's inputs)."""
        full = _GatherUnit.apply(self.weights[u], self, u)
        self._live[full.untyped_storage().data_ptr()] = u        # forgotten at _release: the address is reused
        for w, v in zip(self._where[u], self.layouts[u].views(full)):
            for m, name in w:
                setattr(m, name, v)

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
                self._regathered[u] = self.collectives.all_gather(self.weights[u])
        return self._regathered[u].as_strided(shape, stride, offset)

    def forward(self, *args, **kwargs):
        self._live.clear()
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            self._gather(0)                                # the root unit stays gathered for the whole forward
            try:
                return self.module(*args, **kwargs)
            finally:
                self._release(0)
                self._live.clear()

    def reduce_gradients(self) -> None:
        """Nothing to do: each unit's gradient was reduce-scattered by its gather's backward."""

    def _shard_grads(self) -> list[torch.Tensor | None]:
        return [w.grad for w in self.weights]

    def _publish(self, u: int, master: torch.Tensor) -> None:
        if self.mixed:                                     # fp32: the shard is the master itself
            self.weights[u].copy_(master)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for w in self.weights:
            w.grad = None


STAGE_CLASSES = {1: ZeroStage1, 2: ZeroStage2, 3: ZeroStage3}


def ZeroDataParallel(model: nn.Module, stage: int, **kwargs) -> ZeroStage1:  # noqa: N802 - named like what it returns
    """ZeroStage1, ZeroStage2 or ZeroStage3(model, **kwargs), picked by number (TrainConfig's 'zero1'..'zero3')."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: ZeRO has stages 1 (optimizer states), 2 (+ gradients) and "
                         f"3 (+ weights); plain data parallel (stage 0) is torch DDP or frugal.data_parallel")
    return STAGE_CLASSES[stage](model, **kwargs)
