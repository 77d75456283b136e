"""Triton kernels: a vector add at the memory roofline, then fused kernels that save passes and memory.

Importing this package switches Triton to its interpreter when there is no GPU (it must happen before
any kernel is decorated), so every kernel also runs, slowly, on a CPU. Without Triton it fails with the fix.
"""
import os
import sys

from frugal.device import enable_triton_interpreter, has_triton

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


if enable_triton_interpreter() and "triton" in sys.modules:
    _interpret_already_imported_triton()


def check_reachable(*tensors) -> None:
    """Where there is a GPU, Triton compiles the kernels for it and a CPU tensor cannot reach them: say how to fix
    that, instead of Triton's "Pointer argument cannot be accessed" from inside the launch."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    if any(t is not None and t.device.type == "cpu" for t in tensors):
        raise ValueError("frugal's Triton kernels run on the GPU on this machine (Triton compiles them for it), but "
                         "a tensor is on the CPU: move the model and batch to 'cuda', or set TRITON_INTERPRET=1 "
                         "before importing frugal to run every kernel on the CPU through Triton's interpreter")
