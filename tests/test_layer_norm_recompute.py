"""frugal.kernels.layer_norm_recompute: LayerNorm's output rebuilt from forward's mean and 1/std."""
import pytest
import torch

pytest.importorskip("triton", reason="frugal.kernels needs `pip install triton` (Linux)")
from frugal.kernels.layer_norm_recompute import layer_norm_from_stats  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# On a GPU the kernel evaluates PyTorch's own CUDA formula, w·(rstd·(x − mean)) + b as one fused multiply-add:
# bit-identical. The CPU runs it in Triton's interpreter (NumPy, no fused multiply-add) against PyTorch's CPU
# kernel, which writes the same expression as x·rstd + (−mean·rstd): a few fp32 ulps apart, one bf16 ulp at most.
FP32_TOL = dict(rtol=0, atol=0) if DEVICE == "cuda" else dict(rtol=1e-5, atol=1e-5)
BF16_TOL = dict(rtol=0, atol=0) if DEVICE == "cuda" else dict(rtol=2 ** -7, atol=2 ** -7)


def _inputs(*shape, bias=True):
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(*shape, generator=g) + 0.5).to(DEVICE)
    r = torch.randn(*shape, generator=g).to(DEVICE, torch.bfloat16)
    w = (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(DEVICE)
    b = (0.1 * torch.randn(shape[-1], generator=g)).to(DEVICE) if bias else None
    return x, r, w, b


@pytest.mark.parametrize("shape,bias", [((4, 8, 64), True), ((5, 33), False), ((1, 768), True)])
def test_output_and_cast_equal_layer_norm_from_its_own_statistics(shape, bias):
    x, _, w, b = _inputs(*shape, bias=bias)
    ref, mean, rstd = torch.native_layer_norm(x, shape[-1:], w, b, 1e-5)
    h, y = layer_norm_from_stats(x, mean, rstd, w, b)
    assert h is x
    torch.testing.assert_close(y, ref, **FP32_TOL)
    _, y16 = layer_norm_from_stats(x, mean, rstd, w, b, out_dtype=torch.bfloat16)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16, ref.to(torch.bfloat16), **BF16_TOL)


def test_residual_add_is_written_exactly_and_normed():
    x, r, w, b = _inputs(6, 96)
    h_ref = x + r                                        # eager's promoted add: one rounding, as the kernel's
    ref, mean, rstd = torch.native_layer_norm(h_ref, (96,), w, b, 1e-5)
    h_out = torch.empty_like(x)
    h, y = layer_norm_from_stats(x, mean, rstd, w, b, residual=r, h_out=h_out, out_dtype=torch.bfloat16)
    assert h is h_out and torch.equal(h, h_ref)
    torch.testing.assert_close(y, ref.to(torch.bfloat16), **BF16_TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_one_pass_writes_the_layer_norms_of_x_and_of_x_plus_r(bias):
    x, r, w, b = _inputs(7, 80, bias=bias)
    w1, b1 = 1 + 0.1 * w, (None if b is None else -b)   # a pre-norm block's ln_1 has weights of its own
    ref1, mean1, rstd1 = torch.native_layer_norm(x, (80,), w1, b1, 1e-5)
    ref2, mean2, rstd2 = torch.native_layer_norm(x + r, (80,), w, b, 1e-5)
    y1 = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    h, y2 = layer_norm_from_stats(x, mean2, rstd2, w, b, residual=r, out_dtype=torch.bfloat16,
                                  x_norm=(mean1, rstd1, w1, b1, y1))
    assert torch.equal(h, x + r)
    torch.testing.assert_close(y1, ref1.to(torch.bfloat16), **BF16_TOL)
    torch.testing.assert_close(y2, ref2.to(torch.bfloat16), **BF16_TOL)


def test_bad_inputs_name_the_fix():
    x, r, w, b = _inputs(4, 16)
    _, mean, rstd = torch.native_layer_norm(x, (16,), w, b, 1e-5)
    with pytest.raises(ValueError, match=r"x.float\(\).contiguous\(\)"):
        layer_norm_from_stats(x.t(), mean, rstd, w, b)
    with pytest.raises(ValueError, match="statistics"):
        layer_norm_from_stats(x, mean[:2], rstd, w, b)
    with pytest.raises(ValueError, match="residual"):
        layer_norm_from_stats(x, mean, rstd, w, b, residual=r[:2])
    with pytest.raises(ValueError, match="x_norm"):
        layer_norm_from_stats(x, mean, rstd, w, b, x_norm=(mean, rstd, w, b, x[:2]))
    with pytest.raises(ValueError, match="statistics"):
        layer_norm_from_stats(x, mean, rstd, w, b, x_norm=(mean[:1], rstd, w, b, torch.empty_like(x)))
