"""frugal.kernels.vector_add against torch.add, on CPU through Triton's interpreter (on a GPU when present)."""
import pytest
import torch

pytest.importorskip("triton", reason="frugal.kernels needs `pip install triton` (Linux)")
from frugal.kernels.vector_add import (CONFIGS, vector_add, vector_add_bytes, vector_add_config,  # noqa: E402
                                       vector_add_reference)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n", [0, 1, 1023, 1025, 3 * 1024 + 7])
def test_equals_torch_add_for_sizes_off_the_block(n):
    x, y = torch.randn(n, device=DEVICE), torch.randn(n, device=DEVICE)
    # exact: one float add per element, same rounding as torch.add
    assert torch.equal(vector_add(x, y), vector_add_reference(x, y))


@pytest.mark.parametrize("block,warps,programs", [(c[0], c[1], None if c[2] is None else 2) for c in CONFIGS])
def test_every_benchmark_config_is_exact(block, warps, programs):
    x, y = torch.randn(5000, device=DEVICE), torch.randn(5000, device=DEVICE)
    assert torch.equal(vector_add(x, y, block, warps, programs), x + y)


def test_the_rule_gives_each_thread_two_16_byte_loads_per_input():
    assert vector_add_config(2 ** 28, 4) == (1024, 4)     # 4 warps x 32 threads x 8 floats
    assert vector_add_config(2 ** 28, 2) == (2048, 4)     # bf16: 8 per 16 bytes
    assert vector_add_config(2 ** 28, 8) == (512, 4)
    assert vector_add_config(100, 4) == (128, 4) and vector_add_config(0, 4) == (1, 4)


# float16 for the 2-byte case: Triton's interpreter adds bfloat16 wrongly (NumPy has no bfloat16)
@pytest.mark.parametrize("n,dtype", [(1, torch.float32), (1000, torch.float32), (5 * 1024 + 3, torch.float32),
                                     (3000, torch.float16)])
def test_the_rule_is_what_vector_add_uses_by_default_and_is_exact(n, dtype):
    x, y = torch.randn(n, device=DEVICE).to(dtype), torch.randn(n, device=DEVICE).to(dtype)
    block, warps = vector_add_config(n, x.element_size())
    assert torch.equal(vector_add(x, y), x + y)
    assert torch.equal(vector_add(x, y, block, warps), vector_add(x, y))


def test_graph_timing_needs_cuda():
    from frugal.kernels.roofline import measure_graph_time
    with pytest.raises(ValueError, match="CUDA"):
        measure_graph_time(lambda: None, "cpu")


def test_persistent_grid_of_one_program_covers_everything():
    x, y = torch.randn(4097, device=DEVICE), torch.randn(4097, device=DEVICE)
    assert torch.equal(vector_add(x, y, block_size=256, programs=1), x + y)


def test_keeps_shape_and_works_in_half_precision():
    x, y = torch.randn(3, 5, 7, device=DEVICE).half(), torch.randn(3, 5, 7, device=DEVICE).half()
    out = vector_add(x, y, block_size=64)
    assert out.shape == (3, 5, 7) and out.dtype == torch.float16
    assert torch.equal(out, x + y)


def test_bytes_moved_is_two_reads_and_a_write():
    assert vector_add_bytes(1000, 4) == 12000


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="broadcast"):
        vector_add(torch.randn(4), torch.randn(5))


def test_dtype_mismatch_is_refused():
    with pytest.raises(TypeError, match="cast"):
        vector_add(torch.randn(4), torch.randn(4, dtype=torch.float64))


def test_non_contiguous_is_refused():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="contiguous"):
        vector_add(x.t(), x.t().clone())


def test_block_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        vector_add(torch.randn(4), torch.randn(4), block_size=1000)


def test_device_mismatch_is_refused():
    y = torch.randn(4, device="meta")
    with pytest.raises(ValueError, match="device"):
        vector_add(torch.randn(4), y)


def test_not_a_tensor_is_refused():
    with pytest.raises(TypeError):
        vector_add(torch.randn(4), [1.0, 2.0, 3.0, 4.0])


@pytest.mark.gpu
def test_large_add_on_gpu_is_exact():
    x, y = torch.randn(2 ** 24 + 3, device="cuda"), torch.randn(2 ** 24 + 3, device="cuda")
    assert torch.equal(vector_add(x, y, 4096, 8), x + y)


def test_a_cpu_tensor_where_triton_compiles_for_the_gpu_gets_the_fix(monkeypatch):
    from frugal.kernels import check_reachable
    monkeypatch.setenv("TRITON_INTERPRET", "0")          # as on a machine with a GPU: kernels compiled for it
    with pytest.raises(ValueError, match="move the model and batch to 'cuda', or set TRITON_INTERPRET=1"):
        check_reachable(torch.ones(2))
    check_reachable(None, torch.ones(2, device="meta"))  # nothing on the CPU: fine
    monkeypatch.setenv("TRITON_INTERPRET", "1")          # the interpreter runs CPU tensors
    check_reachable(torch.ones(2))


@pytest.mark.gpu
def test_vector_add_of_cpu_tensors_on_a_gpu_machine_names_the_fix():
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        vector_add(torch.ones(4), torch.ones(4))


def test_an_interpreter_that_cannot_run_with_this_numpy_is_named_with_the_fix():
    import numpy
    from frugal.kernels import interpreter_problem
    assert interpreter_problem("3.7.0") is None and interpreter_problem("3.9.1") is None
    try:                                   # Triton 3.6's interpreter calls int() on one-element arrays
        int(numpy.zeros(1))
        numpy_refuses = False
    except TypeError:
        numpy_refuses = True
    problem = interpreter_problem("3.6.0")
    assert (problem is not None) == numpy_refuses
    if problem:
        assert "pip install 'triton>=3.7'" in problem
