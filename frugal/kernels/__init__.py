"""Triton kernels: a vector add at the memory roofline, then fused kernels that save passes and memory.

Importing this package switches Triton to its interpreter when there is no GPU (it must happen before
any kernel is decorated), so every kernel also runs, slowly, on a CPU. Without Triton it fails with the fix.
"""
import functools
import importlib.metadata
import sys

from frugal.device import enable_triton_interpreter, has_triton, triton_interpreting

if not has_triton():
    raise ImportError(
        "frugal.kernels needs Triton: `pip install triton` (Linux, with or without a GPU; "
        "on macOS or Windows use Colab or a Linux machine). The other lessons work without it."
    )


def _interpret_already_imported_triton() -> None:
    """If triton was imported before the interpreter flag was set, its library functions (tl.sum, tl.cdiv...)
    were built for the compiler and refuse to run in the interpreter; rebuild them as interpreted."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    for name, module in list(sys.modules.items()):
        if name.startswith("triton.language") and module is not None:
            for attr, value in list(vars(module).items()):
                if isinstance(value, JITFunction):
                    setattr(module, attr, InterpretedFunction(value.fn))


def interpreter_problem(triton_version: str) -> str | None:
    """Why Triton's interpreter cannot run here, or None. Before Triton 3.7 it reads a one-element array with
    int(), which recent NumPy refuses ("only 0-dimensional arrays can be converted to Python scalars")."""
    import numpy
    if tuple(int(p) for p in triton_version.split(".")[:2]) >= (3, 7):
        return None
    try:
        int(numpy.zeros(1))
        return None
    except TypeError:
        return (f"Triton {triton_version}'s interpreter, which runs frugal's kernels on a CPU, fails with NumPy "
                f"{numpy.__version__}: `pip install 'triton>=3.7'` (or an older NumPy)")


if enable_triton_interpreter():
    _problem = interpreter_problem(importlib.metadata.version("triton"))
    if _problem:
        raise ImportError(_problem)
    if "triton" in sys.modules:
        _interpret_already_imported_triton()


def check_reachable(*tensors) -> None:
    """Where there is a GPU, Triton compiles the kernels for it and a CPU tensor cannot reach them: say how to fix
    that, instead of Triton's "Pointer argument cannot be accessed" from inside the launch."""
    if triton_interpreting():
        return
    if any(t is not None and t.device.type == "cpu" for t in tensors):
        raise ValueError("frugal's Triton kernels run on the GPU on this machine (Triton compiles them for it), but "
                         "a tensor is on the CPU: move the model and batch to 'cuda', or set TRITON_INTERPRET=1 "
                         "before importing frugal to run every kernel on the CPU through Triton's interpreter")


@functools.lru_cache(maxsize=16)    # the properties call costs microseconds on every step; the count never changes
def sm_count(device) -> int:
    """Streaming multiprocessors of a GPU, for persistent grids (a few programs per SM); 2 off a GPU (the
    interpreter), so a grid there still has several programs."""
    import torch
    device = torch.device(device)
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
