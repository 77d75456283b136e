"""What happened: step time, peak memory, the bytes saved for backward, FLOPs and MFU.

`measure_*` observes; its twin in estimate.py (`estimate_*`) predicts. Lessons show both side by side.
Measurements that take training steps (measure_precision, measure_recompute) live in frugal.measure_training, above this.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    median_s: float          # median over repeats: the number to report
    times_s: list[float]     # every repeat, in order
    warmup: int              # untimed calls before the first repeat
    device: str

    @property
    def min_s(self) -> float:
        return min(self.times_s)


def measure_time(fn: Callable[[], object], device: torch.device | str = "cpu",
                 warmup: int = 3, repeats: int = 10, inner: int = 1) -> Timing:
    """Time fn(): warm up, then `repeats` timed calls; CUDA events on a GPU, perf_counter on CPU.

    inner > 1 times that many calls back to back per repeat and reports the time per call: the steady state of
    a training loop, where Python enqueues the next step while the GPU still runs this one. With inner = 1 the
    GPU starts each call idle and waits for the first kernels; that launch gap shows once a step gets short.
    """
    if warmup < 0 or repeats < 1 or inner < 1:
        raise ValueError(f"warmup={warmup}, repeats={repeats}, inner={inner}: need warmup >= 0, repeats >= 1 "
                         f"and inner >= 1")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) / inner)
    return Timing(statistics.median(times), times, warmup, str(device))


def measure_peak_memory(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Peak CUDA memory allocated while fn() runs, in bytes; None on CPU (use saved bytes there)."""
    device = torch.device(device)
    if device.type != "cuda":
        fn()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)


@dataclass
class SavedTensor:
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int              # bytes of the whole storage it lives in (what memory actually holds)
    storage: int             # storage address: tensors sharing it are counted once


@dataclass
class SavedTensors:
    """Tensors autograd saved for backward, as recorded by `count_saved_tensors`."""

    tensors: list[SavedTensor] = field(default_factory=list)
    skipped_params: int = 0  # saved tensors that were parameters (weights are not activations)

    @property
    def nbytes(self) -> int:
        """Bytes of distinct storages saved: views of one tensor are counted once."""
        seen: dict[int, int] = {}
        for t in self.tensors:
            seen[t.storage] = max(seen.get(t.storage, 0), t.nbytes)
        return sum(seen.values())


@contextmanager
def count_saved_tensors(exclude: list[torch.Tensor] | tuple = ()):
    """Record every tensor autograd saves for backward inside the block (any device).

    Uses torch.autograd.graph.saved_tensors_hooks. Tensors that share storage with one in
    `exclude` (pass model.parameters() to leave out weights) are not counted.
    """
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    record = SavedTensors()

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in excluded:
            record.skipped_params += 1
        else:
            record.tensors.append(SavedTensor(tuple(t.shape), t.dtype, storage.nbytes(), ptr))
        # detached: returning t itself, when t is the output of the node saving it, makes node -> t -> grad_fn
        # -> node, a cycle through C++ that not even gc.collect() frees when no backward runs (PyTorch's
        # saved-tensor-hooks docs); the leaked graph would keep every activation of the forward alive
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield record


def measure_activation_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes saved for backward by one forward of model(x, y), parameters excluded."""
    with torch.enable_grad(), count_saved_tensors(exclude=list(model.parameters())) as saved:
        _, loss = model(x, y)      # enable_grad: under no_grad autograd would save nothing
    del loss
    return saved.nbytes


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12·L·d·T (PaLM, Chowdhery et al. 2022, appendix B).

    6N counts the forward and backward matmuls of N weights (here N counts the tied embedding once,
    as the output projection, and drops positions); 12·L·d·T the attention scores and values.
    """
    for name, v in (("n_params", n_params), ("n_layer", n_layer), ("n_embd", n_embd), ("seq_len", seq_len)):
        if not v > 0:
            raise ValueError(f"{name}={v}: must be positive")
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


def model_flops_per_token(model, seq_len: int) -> float:
    """flops_per_token for a TinyGPT: N = all parameters but the position table."""
    cfg = model.cfg
    n = model.num_params() - model.wpe.weight.numel()
    return flops_per_token(n, cfg.n_layer, cfg.n_embd, seq_len)


def mfu(tokens_per_s: float, flops_per_tok: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak FLOP/s."""
    if not peak_flops > 0:
        raise ValueError(f"peak_flops={peak_flops}: must be positive (a catalog peak, or measure_cpu_peak_flops())")
    if not (tokens_per_s >= 0 and flops_per_tok > 0):
        raise ValueError(f"tokens_per_s={tokens_per_s}, flops_per_tok={flops_per_tok}: "
                         f"need tokens_per_s >= 0 and flops_per_tok > 0")
    return tokens_per_s * flops_per_tok / peak_flops


def measure_cpu_peak_flops(seconds: float = 0.5, n: int = 512, dtype=torch.float32) -> float:
    """This CPU's matmul FLOP/s, measured (the CPU has no catalog peak): the fastest of repeated n×n matmuls,
    since a peak is the best the cores reach (a median would sink whenever another process shares them)."""
    if not (seconds > 0 and n > 0):
        raise ValueError(f"seconds={seconds}, n={n}: both must be positive")
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times)


# ----------------------------------------------------------------------------- lesson 02: activation checkpointing

def measure_saved_bytes_by_module(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Bytes saved for backward by one forward of model(x, y), by the innermost module running when saved
    ('' = the model's own forward: the loss, and checkpointed blocks' inputs). Shared storages count once."""
    names = {m: n for n, m in model.named_modules() if m is not model}
    stack: list[str] = [""]
    owner: dict[int, str] = {}
    with count_saved_tensors(exclude=list(model.parameters())) as saved:
        seen = [0]                                       # records already attributed

        def note_new():                                  # what was saved since the last call belongs to stack[-1]
            for t in saved.tensors[seen[0]:]:
                owner.setdefault(t.storage, stack[-1])
            seen[0] = len(saved.tensors)

        def enter(m, args):
            note_new()
            stack.append(names[m])

        def leave(m, args, out):
            note_new()
            stack.pop()

        handles = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        try:
            _, loss = model(x, y)
            note_new()
        finally:
            for h in handles:
                h.remove()
    del loss
    sizes: dict[int, int] = {}
    for t in saved.tensors:
        sizes[t.storage] = max(sizes.get(t.storage, 0), t.nbytes)
    out: dict[str, int] = {}
    for ptr, nbytes in sizes.items():
        out[owner[ptr]] = out.get(owner[ptr], 0) + nbytes
    return out


def saved_bytes_by_kind(by_module: dict[str, int]) -> dict[str, int]:
    """Group measure_saved_bytes_by_module's result into estimate_activation_bytes' kinds of tensor."""
    out: dict[str, int] = {}
    for name, nbytes in by_module.items():
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) > 2:
            kind = {"ln_1": "layernorm inputs", "ln_2": "layernorm inputs", "attn": "attention", "mlp": "mlp"}[parts[2]]
        elif name == "":
            kind = "loss and checkpointed inputs"
        else:
            kind = "embedding + head"
        out[kind] = out.get(kind, 0) + nbytes
    return out
