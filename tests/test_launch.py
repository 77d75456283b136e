"""frugal.kernels.launch: the kept binary is the one kernel[grid] would pick, and gives its results bit for bit."""
import pytest
import torch

pytest.importorskip("triton", reason="frugal.kernels needs `pip install triton` (Linux)")
import frugal.kernels.launch as L  # noqa: E402
from frugal.kernels.fused_add_rmsnorm import add_rmsnorm  # noqa: E402
from frugal.kernels.vector_add import benchmark_launch, vector_add, vector_add_kernel  # noqa: E402

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="the kept launch runs only on a GPU; "
                         "Triton's interpreter (this CPU) always takes kernel[grid]")


def test_the_key_separates_what_triton_compiles_separately():
    base = torch.zeros(64)
    assert L.arg_key(base) != L.arg_key(base[1:])                  # 4 bytes in: not 16-byte aligned
    assert L.arg_key(base) == L.arg_key(base[4:])                  # 16 bytes in: aligned again
    assert L.arg_key(base) != L.arg_key(base.double())             # the pointer's dtype
    assert L.arg_key(32) == L.arg_key(4096) != L.arg_key(33)       # divisible by 16 or not
    assert L.arg_key(1) != L.arg_key(17)                           # 1 is its own case
    assert L.arg_key(2 ** 31 + 16) != L.arg_key(16)                # int64 against int32
    assert L.arg_key(2 ** 63 + 16) != L.arg_key(2 ** 31 + 16)      # uint64 against int64
    assert L.arg_key(1.5) == L.arg_key(1e-6) and L.arg_key(None) == ("n",)


def test_an_empty_hook_chain_is_no_hook():
    class Chain:
        def __init__(self, calls):
            self.calls = calls
    assert not L._hooked(None) and not L._hooked(Chain([]))
    assert L._hooked(Chain([print])) and L._hooked(print)


def test_an_argument_it_cannot_key_says_how_to_pass_it():
    with pytest.raises(TypeError, match="pass it as a constexpr keyword"):
        L.arg_key("fp32")


def test_the_interpreter_and_other_triton_versions_take_the_plain_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not L._fast_path_possible()
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(L.importlib.metadata, "version", lambda name: "3.7.0")
    assert not L._fast_path_possible()
    monkeypatch.setattr(L.importlib.metadata, "version", lambda name: "3.6.0")
    assert L._fast_path_possible()


@GPU
def test_kept_launches_equal_plain_launches_bit_for_bit(monkeypatch):
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(4096 + 1, device="cuda", generator=g)
    x, r = (torch.randn(300, 768, device="cuda", generator=g, requires_grad=True) for _ in range(2))
    w = torch.randn(768, device="cuda", generator=g, requires_grad=True)
    gy = torch.randn(300, 768, device="cuda", generator=g)

    def run():
        y, h = add_rmsnorm(x, r, w)
        return [vector_add(a[1:], a[1:]), vector_add(a[:-1], a[:-1]),     # misaligned, then aligned views
                *torch.autograd.grad((y * gy).sum() + h.sum(), (x, r, w))]
    monkeypatch.setattr(L, "FAST", False)
    plain = run()
    monkeypatch.setattr(L, "FAST", True)
    first, kept = run(), run()          # the first compiles and keeps; the second calls the kept binaries
    assert L._KEPT[id(vector_add_kernel)][2], "nothing was kept: the fast path did not run"
    for p, f, k in zip(plain, first, kept):
        assert torch.equal(p, f) and torch.equal(p, k)


@GPU
def test_the_launch_benchmark_times_each_way_on_the_host():
    rows = benchmark_launch("cuda", calls=20, repeats=2)
    assert len(rows) == 4 and all(r["host µs"] > 0 for r in rows)


def test_the_launch_benchmark_says_it_needs_a_gpu():
    with pytest.raises(ValueError, match="needs a GPU"):
        benchmark_launch("cpu")
