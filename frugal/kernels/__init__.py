"""Triton kernels: a vector add at the memory roofline, then fused kernels that save passes and memory.

Importing this package switches Triton to its interpreter when there is no GPU (it must happen before
any kernel is decorated), so every kernel also runs, slowly, on a CPU. Without Triton it fails with the fix.
"""
from frugal.device import enable_triton_interpreter, has_triton

if not has_triton():
    raise ImportError(
        "frugal.kernels needs Triton: `pip install triton` (Linux, with or without a GPU; "
        "on macOS or Windows use Colab or a Linux machine). The other lessons work without it."
    )

enable_triton_interpreter()
