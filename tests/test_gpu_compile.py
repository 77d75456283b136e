"""Kernels that only a GPU runs through Triton's compiler, compiled here for a Hopper target.

On a CPU every kernel runs in Triton's interpreter, which never type-checks a kernel as the compiler does
(a name that is a constant in one branch and a tensor in the other compiles in neither). Triton compiles for
a target without a GPU present, so this catches such kernels on CI; it skips where Triton has no ptxas.
"""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton")
PTXAS = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"

# Compiled in a child process: this one has frugal.kernels decorated for the interpreter already.
SCRIPT = textwrap.dedent("""
    import itertools, sys
    import frugal.device
    frugal.device.triton_needs_interpreter = lambda: False      # decorate the kernels for the compiler
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from frugal.kernels import fp8_cast

    def compile_all(kernel, signature, constexprs, arch):
        src = ASTSource(kernel, signature, constexprs=constexprs)
        triton.compile(src, target=GPUTarget("cuda", arch, 32))

    failures = []
    arch = int(sys.argv[1])
    cast_sig = {"x_ptr": "*bf16", "scale_ptr": "*fp32", "q_ptr": "*fp8e4nv", "qt_ptr": "*fp8e4nv", "n_rows": "i32",
                "n_cols": "i32", "fp8_max": "fp32", "hist_ptr": "*fp32", "state_ptr": "*i32"}
    flags = ("WRITE_Q", "WRITE_QT", "WIDE_TRANSPOSE", "ROLE", "GELU", "HIST_LEN", "HIST_BLOCK", "BLOCK_M",
             "BLOCK_N")
    cast_sig.update({k: "constexpr" for k in flags})
    for q, qt, wide, gelu, hist, x, fp8 in itertools.product((0, 1), (0, 1), (0, 1), (0, 1), (0, 16),
                                                             ("*bf16", "*fp32"), ("*fp8e4nv", "*fp8e5")):
        if not (q or qt) or (wide and not qt):
            continue
        sig = dict(cast_sig, x_ptr=x, q_ptr=fp8, qt_ptr=fp8)
        consts = {"WRITE_Q": q, "WRITE_QT": qt, "WIDE_TRANSPOSE": wide, "ROLE": 0, "GELU": gelu, "HIST_LEN": hist,
                  "HIST_BLOCK": max(hist, 1), "BLOCK_M": 64, "BLOCK_N": 64}
        try:
            compile_all(fp8_cast.fp8_cast_kernel, sig, consts, arch)
        except Exception as e:
            failures.append(f"fp8_cast_kernel {consts} x={x} {fp8}: {e}")
    scale_sig = {"x_ptr": "*bf16", "n": "i32", "hist_ptr": "*fp32", "state_ptr": "*i32", "meta_ptr": "*fp32",
                 "fp8_max": "fp32", "ROLE": "constexpr", "GELU": "constexpr", "HIST_LEN": "constexpr",
                 "HIST_BLOCK": "constexpr", "BLOCK": "constexpr"}
    for gelu, hist, x in itertools.product((0, 1), (0, 16), ("*bf16", "*fp32")):
        consts = {"ROLE": 2, "GELU": gelu, "HIST_LEN": hist, "HIST_BLOCK": max(hist, 1), "BLOCK": 4096}
        try:
            compile_all(fp8_cast.fp8_scale_kernel, dict(scale_sig, x_ptr=x), consts, arch)
        except Exception as e:
            failures.append(f"fp8_scale_kernel {consts} x={x}: {e}")
    print("\\n\\n".join(failures))
    sys.exit(1 if failures else 0)
""")


@pytest.mark.skipif(not PTXAS.exists(), reason=f"Triton's CUDA backend has no ptxas at {PTXAS}: nothing to compile with")
@pytest.mark.parametrize("arch", [90], ids=["sm90 (H100/H200)"])
def test_fp8_kernels_compile_for_the_gpu(arch):
    """Every constexpr branch of fp8_cast_kernel and fp8_scale_kernel compiles, for each input and fp8 type, with
    and without a delayed-scaling history and the GELU inside (fp8 needs sm89+)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(arch)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, f"compile failures for sm{arch}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
