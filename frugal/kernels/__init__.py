"""Triton kernels: a vector add at the memory roofline, then fused kernels that save passes and memory.

Importing this package switches Triton to its interpreter when there is no GPU (it must happen before
any kernel is decorated), so every kernel also runs, slowly, on a CPU. Without Triton it fails with the fix.
"""
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
