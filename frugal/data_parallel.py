"""Data parallel training, mirroring torch DDP: every rank holds the whole model, sees its shard of the
batch, and the gradients are averaged across ranks before each optimizer step.

`DataParallelNaive` all-reduces each gradient after backward; `DataParallelBucket` groups gradients into
buckets of `bucket_cap_mb` in reverse order of use and all-reduces each one asynchronously the moment its
last gradient is accumulated, so communication overlaps the rest of backward (Li et al. 2020, "PyTorch
Distributed", sec. 3.2). Both are swapped for torch DDP in one line; `no_sync()` skips the all-reduce
for gradient accumulation. Training on ranks with them is frugal.train's (TrainConfig.world_size).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.autograd import Variable
from torch.nn.parallel import DistributedDataParallel

from frugal.dist import grad_hooks

FLAVOURS = ("naive", "bucket", "ddp")   # ours, ours, and torch's DistributedDataParallel as the reference


def _require_group() -> None:
    if not dist.is_initialized():
        raise ValueError("no process group: build the data-parallel model inside a rank started by "
                         "frugal.dist.launch (or after torch.distributed.init_process_group)")


class _DataParallelBase(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"expected an nn.Module to wrap, got {type(module).__name__}")
        _require_group()
        self.module = module
        self.world_size = dist.get_world_size()
        self.require_backward_grad_sync = True        # torch DDP's name for the flag no_sync() clears
        self._callback_queued = False
        with torch.no_grad():                          # every rank starts from rank 0's weights
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients locally; the next one outside all-reduces the sum."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    def _queue_finish(self) -> None:
        """Run finish_gradient_synchronization when autograd ends this backward (as torch DDP does)."""
        if not self._callback_queued:
            self._callback_queued = True
            Variable._execution_engine.queue_callback(self._on_backward_end)

    def _on_backward_end(self) -> None:
        self._callback_queued = False
        self.finish_gradient_synchronization()

    def finish_gradient_synchronization(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class DataParallelNaive(_DataParallelBase):
    """After backward, all-reduce and average each gradient one by one: correct, but no overlap and one
    message per parameter."""

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self._params = [p for p in module.parameters() if p.requires_grad]
        grad_hooks(self, self._params, "_hook")

    def _hook(self, param: torch.Tensor) -> None:
        if self.require_backward_grad_sync:
            self._queue_finish()

    def finish_gradient_synchronization(self) -> None:
        grads = [p.grad for p in self._params if p.grad is not None]
        if self.world_size > 1:                        # gloo has no AVG: divide, then sum (/1 is a no-op)
            torch._foreach_div_(grads, self.world_size)  # one multi-tensor kernel, not one per gradient
        for g in grads:
            dist.all_reduce(g)


def assign_buckets(params: list[torch.Tensor], bucket_cap_mb: float) -> list[list[int]]:
    """Indices of params grouped into buckets of at most bucket_cap_mb MiB (one bigger param gets its own),
    in reverse order of registration, which approximates the order backward produces gradients."""
    if not bucket_cap_mb > 0:
        raise ValueError(f"bucket_cap_mb={bucket_cap_mb}: must be positive (torch DDP's default is 25)")
    cap = bucket_cap_mb * 2 ** 20
    buckets, current, size = [], [], 0
    for i in reversed(range(len(params))):
        nbytes = params[i].numel() * params[i].element_size()
        if current and size + nbytes > cap:
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


class DataParallelBucket(_DataParallelBase):
    """Gradients in buckets of bucket_cap_mb; each bucket's all-reduce starts (async) as soon as its last
    gradient is accumulated during backward, and all are waited on before backward returns.

    As torch DDP with gradient_as_bucket_view=True: each bucket is one flat buffer allocated once, and after
    a synchronised backward every .grad is a view into it, so a step costs one copy per bucket, one all-reduce
    per bucket and one wait per bucket, with no host-device synchronisation and no per-step allocation.

    `timeline` holds, for the last backward, (bucket, launched_s, done_s, bytes) relative to the end of
    forward, and `backward_end_s`: the overlap made visible. With gloo done_s is when the all-reduce
    finished; with NCCL (asynchronous on the GPU) it is when the host finished waiting for it, since asking
    the GPU earlier would stall it.
    """

    def __init__(self, module: nn.Module, bucket_cap_mb: float = 25.0):
        super().__init__(module)
        self._params = [p for p in module.parameters() if p.requires_grad]
        self.buckets = assign_buckets(self._params, bucket_cap_mb)
        self.bucket_cap_mb = bucket_cap_mb
        self._flat: list[torch.Tensor] = []          # one flat buffer per bucket, reused every step
        self._views: list[list[torch.Tensor]] = []   # _views[b][k]: param buckets[b][k]'s gradient in it
        self._grad_is_view: list[bool] = []          # False if a bucket mixes dtypes/devices: copy back instead
        for idx in self.buckets:
            ps = [self._params[i] for i in idx]
            buf = torch.zeros(sum(p.numel() for p in ps), dtype=ps[0].dtype, device=ps[0].device)
            self._flat.append(buf)
            self._views.append([v.view_as(p) for v, p in zip(buf.split([p.numel() for p in ps]), ps)])
            self._grad_is_view.append(all(p.dtype == buf.dtype and p.device == buf.device for p in ps))
        self._sizes = [len(idx) for idx in self.buckets]
        self._exact_done = self._flat[0].device.type == "cpu" if self._flat else True
        self._reset()
        for b, idx in enumerate(self.buckets):         # the bucket index is bound now: no lookup per gradient
            grad_hooks(self, [self._params[i] for i in idx], "_hook", b)
        self.timeline: list[tuple[int, float, float, int]] = []
        self.backward_end_s = 0.0
        self._t0 = time.perf_counter()

    def _reset(self) -> None:
        self._pending = list(self._sizes)              # grads still to arrive, per bucket
        self._next = 0                                 # buckets launch in index order on every rank
        self._works: list = [None] * len(self.buckets)
        self._launch_s = [0.0] * len(self.buckets)
        self._done_s = [0.0] * len(self.buckets)

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        self._t0 = time.perf_counter()                 # timeline origin: backward starts after this
        return out

    def _hook(self, b: int, param: torch.Tensor) -> None:
        if not self.require_backward_grad_sync:
            return
        self._queue_finish()
        self._pending[b] -= 1
        while self._next < len(self.buckets) and self._pending[self._next] == 0:
            self._launch(self._next)
            self._next += 1

    def _launch(self, b: int) -> None:
        """Gather bucket b's gradients into its flat buffer (one multi-tensor copy), average, all-reduce async."""
        buf, views = self._flat[b], self._views[b]
        params = [self._params[i] for i in self.buckets[b]]
        dst, src, missing = [], [], []
        for p, v in zip(params, views):
            g = p.grad
            if g is None:
                missing.append(v)
            elif g is not v:                           # after the first step the gradient already lives in buf
                dst.append(v)
                src.append(g)
        if src:
            torch._foreach_copy_(dst, src)
        if missing:
            torch._foreach_zero_(missing)
        if self._grad_is_view[b]:
            for p, v in zip(params, views):
                if p.grad is not v:
                    p.grad = v                         # autograd accumulates into the buffer from now on
        if self.world_size > 1:
            buf.div_(self.world_size)                  # gloo has no AVG: divide, then sum (/1 is a no-op)
        self._launch_s[b] = time.perf_counter() - self._t0
        self._works[b] = work = dist.all_reduce(buf, async_op=True)
        if self._exact_done:                           # gloo: the future completes when the sum has arrived
            work.get_future().then(partial(self._mark_done, b))

    def _mark_done(self, b: int, _future=None) -> None:
        self._done_s[b] = time.perf_counter() - self._t0  # called by gloo's thread when b completes

    def finish_gradient_synchronization(self) -> None:
        """Launch any bucket not yet launched, wait for each once (on a GPU: the stream waits, not the host)."""
        self.backward_end_s = time.perf_counter() - self._t0    # autograd has finished computing
        for b in range(self._next, len(self.buckets)):
            self._launch(b)
        timeline = []
        for b, work in enumerate(self._works):
            work.wait()
            done = self._done_s[b] or time.perf_counter() - self._t0
            if not self._grad_is_view[b]:
                for i, v in zip(self.buckets[b], self._views[b]):
                    p = self._params[i]
                    if p.grad is None:
                        p.grad = torch.empty_like(p)
                    p.grad.copy_(v)
            buf = self._flat[b]
            timeline.append((b, self._launch_s[b], done, buf.numel() * buf.element_size()))
        self.timeline = timeline
        self._reset()


def wrap(model: nn.Module, flavour: str, bucket_cap_mb: float = 25.0) -> nn.Module:
    """The model wrapped for data parallel training: 'naive', 'bucket' (ours) or 'ddp' (torch's)."""
    if flavour == "naive":
        return DataParallelNaive(model)
    if flavour == "bucket":
        return DataParallelBucket(model, bucket_cap_mb=bucket_cap_mb)
    if flavour == "ddp":
        _require_group()
        ids = [model_device.index] if (model_device := next(model.parameters()).device).type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=bucket_cap_mb)
    raise ValueError(f"data_parallel={flavour!r}: pick one of {FLAVOURS}")
