"""frugal.kernels.roofline: bandwidth arithmetic and the eager byte counter."""
import pytest
import torch

pytest.importorskip("triton", reason="frugal.kernels needs `pip install triton` (Linux)")
from frugal.kernels.roofline import count_bytes_moved, gbps, measure_copy_bandwidth  # noqa: E402


def test_gbps():
    assert gbps(3e9, 1.0) == 3.0
    with pytest.raises(ValueError, match="positive"):
        gbps(1, 0)


def test_counts_reads_and_writes_of_each_op():
    x, y = torch.randn(100), torch.randn(100)
    with count_bytes_moved() as rec:
        z = x + y           # read 800, write 400
        z.view(10, 10)      # a view moves nothing
        torch.empty(1000)   # an allocation moves nothing
    assert rec.launches == 1 and rec.total == 1200


def test_broadcast_input_counts_its_storage_once():
    x, b = torch.randn(10, 100), torch.randn(100)
    with count_bytes_moved() as rec:
        x + b
    assert rec.total == 4000 + 400 + 4000


def test_counts_backward_too():
    x = torch.randn(100, requires_grad=True)
    with count_bytes_moved() as rec:
        (x * 2).sum().backward()
    assert rec.launches >= 3 and rec.total > 1200


def test_copy_bandwidth_is_positive():
    assert measure_copy_bandwidth(10_000, "cpu", repeats=3) > 0
