"""Launching a Triton kernel for less host time: keep the compiled binary, call its launcher directly.

`kernel[grid](*args)` runs Python on every call: it binds the arguments, works out which compiled version
they need, reads its settings, looks up the device and stream, then launches. `python -m frugal bench
--section kernels` times it on the host ("launch" rows; an H200 on 2026-12-03: 23.2 µs, against 16.0 µs
through `launch` and 11.1 µs for all of torch.add). For a 0.77 ms vector add from an idle GPU the saving is
~1% of the time; for the small fused kernels of a training step it is a large share.

`launch(kernel, grid, *args, **constexprs)` does the same launch with its own cache: the key is what
Triton specializes a binary on (each tensor's dtype and 16-byte alignment, each int's range and whether
it is 1 or a multiple of 16, every constexpr and option), plus the device. A key seen before calls the
kept binary's launcher; a new key goes through `kernel[grid]` once, which compiles and launches, and keeps
what it returns. Where this is not Triton 3.4-3.6 (whose launcher this calls, read from their source),
where a launch hook is set (a profiler), or in the interpreter, every call is plain `kernel[grid]`.
"""
from __future__ import annotations

import importlib.metadata

import torch

from frugal.device import triton_interpreting

_TESTED = ((3, 4), (3, 7))     # [from, to): Triton versions whose CompiledKernel.run this calls as they do


def _fast_path_possible() -> bool:
    if triton_interpreting():
        return False
    try:
        version = tuple(int(p) for p in importlib.metadata.version("triton").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return _TESTED[0] <= version < _TESTED[1]


FAST = _fast_path_possible()      # False: every launch is plain kernel[grid]


def _int_class(v: int) -> tuple:
    """Triton's specialization of an int argument: its width (i32, i64, u64), == 1, divisible by 16."""
    width = 0 if -2 ** 31 <= v < 2 ** 31 else 1 if -2 ** 63 <= v < 2 ** 63 else 2
    return width, v == 1, v % 16 == 0


def arg_key(a) -> tuple:
    """What a binary depends on in one runtime argument: never its value, except as the classes above."""
    if isinstance(a, torch.Tensor):
        return ("t", a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, bool):
        return ("b",)
    if isinstance(a, int):
        return ("i",) + _int_class(a)
    if isinstance(a, float):
        return ("f",)
    if a is None:
        return ("n",)
    raise TypeError(f"launch() passes tensors, ints, floats, bools and None to a kernel, not {type(a).__name__}: "
                    f"pass it as a constexpr keyword, or call kernel[grid](...) directly")


def _hooked(hook) -> bool:
    """A launch hook is set: None or an empty chain (Triton 3.5 and up keep a chain, empty unless a profiler adds
    to it) means none."""
    return hook is not None and (bool(hook.calls) if hasattr(hook, "calls") else True)


def _runtime():
    """triton.knobs.runtime (where the launch hooks live), imported once."""
    global _RUNTIME
    if _RUNTIME is None:
        from triton import knobs
        _RUNTIME = knobs.runtime
    return _RUNTIME


_RUNTIME = None
_KEPT: dict[int, tuple] = {}      # id(kernel) -> (kernel, its constexpr names, {key: (binary, constexpr values)})


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs), with runtime arguments positional and constexprs/options as keywords."""
    if not FAST:
        kernel[grid](*args, **kwargs)
        return
    runtime = _runtime()
    if _hooked(runtime.launch_enter_hook) or _hooked(runtime.launch_exit_hook):
        kernel[grid](*args, **kwargs)              # a profiler's hooks expect Triton's own path
        return
    kept = _KEPT.get(id(kernel))
    if kept is None or kept[0] is not kernel:
        kept = _KEPT[id(kernel)] = (kernel, list(kernel.arg_names), {})
    device = torch._C._cuda_getDevice()            # torch.cuda.current_device() without its lazy-init check
    key = (device, tuple(map(arg_key, args)), tuple(kwargs.items()))
    found = kept[2].get(key)
    if found is None:
        binary = kernel[grid](*args, **kwargs)     # compiles (or finds) the binary and launches it
        if hasattr(binary, "result"):
            binary = binary.result()
        rest = kept[1][len(args):]                  # the constexprs, in signature order
        if hasattr(binary, "packed_metadata") and hasattr(binary, "function") and all(n in kwargs for n in rest):
            kept[2][key] = (binary, [kwargs[n] for n in rest])
        return
    binary, constexprs = found
    binary.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1,
               torch._C._cuda_getCurrentRawStream(device), binary.function, binary.packed_metadata,
               None, None, None, *args, *constexprs)
