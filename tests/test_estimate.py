import pytest

from frugal import estimate as E
from frugal.model import preset

LLAMA2_70B = dict(n_params=70e9, n_tokens=2e12)
LLAMA2_70B_GPU_HOURS = 1_720_320     # Touvron et al. 2023, Llama 2 paper, table 2 (A100-80GB)


# ----------------------------------------------------------------------------- published figures

def test_llama2_70b_needs_about_8_4e23_flops():
    assert E.training_flops(**LLAMA2_70B) == pytest.approx(8.4e23, rel=1e-9)


def test_llama2_70b_gpu_hours_imply_about_44_percent_mfu():
    """8.4e23 / (1,720,320 h · 3600 s · 312 TFLOPS bf16) = 0.435: the 'about 44%' quoted for that run, to a point."""
    mfu = E.implied_mfu(**LLAMA2_70B, gpu_hours=LLAMA2_70B_GPU_HOURS, gpu="A100-80GB", dtype="bf16")
    assert mfu == pytest.approx(0.44, abs=0.01)
    assert E.get_gpu("A100-80GB").peak_flops("bf16") == 312e12


def test_cost_at_the_implied_mfu_gives_back_the_reported_gpu_hours():
    mfu = E.implied_mfu(**LLAMA2_70B, gpu_hours=LLAMA2_70B_GPU_HOURS, gpu="A100-80GB")
    cost = E.estimate_cost(E.Plan(**LLAMA2_70B, gpu="A100-80GB", n_gpus=2048, mfu=mfu))
    assert cost.gpu_hours == pytest.approx(LLAMA2_70B_GPU_HOURS, rel=1e-9)
    assert cost.days == pytest.approx(LLAMA2_70B_GPU_HOURS / 2048 / 24)
    assert cost.dollars == pytest.approx(LLAMA2_70B_GPU_HOURS * E.get_gpu("A100-80GB").price_per_hour)


@pytest.mark.parametrize("stage,gb", [(0, 120), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_7_5b_on_64_gpus(stage, gb):
    """ZeRO paper (Rajbhandari et al. 2020), figure 1: Ψ = 7.5B, K = 12, Nd = 64, mixed-precision Adam."""
    mem = E.estimate_state_memory(7.5e9, "mixed", "adam", zero_stage=stage, world_size=64)
    assert mem.total / E.GB == pytest.approx(gb, abs=0.05)


def test_korthikanti_per_layer_formula():
    """Korthikanti et al. 2022, sec. 4.1 and table 2: sbh(34 + 5as/h), 34·sbh, 2·sbh."""
    s, b, h, a = 2048, 1, 12288, 96          # GPT-3 175B's layer, one sequence
    assert E.korthikanti_activation_bytes_per_layer(s, b, h, a) == s * b * h * (34 + 5 * a * s / h)
    assert E.korthikanti_activation_bytes_per_layer(s, b, h, a, "selective") == 34 * s * b * h
    assert E.korthikanti_activation_bytes_per_layer(s, b, h, a, "full") == 2 * s * b * h


# ----------------------------------------------------------------------------- time, money, memory

def test_price_override_and_dollars_per_token():
    plan = E.Plan(1e9, 20e9, "H100", 8, 0.4)
    base = E.estimate_cost(plan)
    cheap = E.estimate_cost(E.Plan(1e9, 20e9, "H100", 8, 0.4, price_per_hour=1.0))
    assert cheap.gpu_hours == base.gpu_hours
    assert cheap.dollars == pytest.approx(base.gpu_hours * 1.0)
    assert E.dollars_per_token(1000, "H100") == pytest.approx(E.get_gpu("H100").price_per_hour / 3.6e6)


def test_estimate_seconds_is_flops_over_delivered_flops():
    assert E.estimate_seconds(1e6, 1e6, 1e12, 0.5) == pytest.approx(6e12 / 5e11)


def test_catalog_entries_are_complete():
    for name, gpu in E.GPU_CATALOG.items():
        assert gpu.name == name and gpu.memory_gb > 0 and gpu.bandwidth_gbs > 0 and gpu.price_per_hour > 0
        assert gpu.price_source and gpu.price_date and gpu.peak_tflops["fp32"] > 0
    assert "bf16" not in E.GPU_CATALOG["T4"].peak_tflops      # a T4 emulates bf16: no native peak


def test_fits_uses_states_plus_activations():
    assert not E.fits(7.5e9, "H100")                          # 120 GB of states
    assert E.fits(7.5e9, "H100", zero_stage=3, world_size=64)
    assert not E.fits(7.5e9, "H100", activation_bytes=79e9, zero_stage=3, world_size=64)


def test_model_shape_recovers_llama2_7b():
    n_layer, n_embd, n_head = E.model_shape(6.7e9)           # Llama 2 7B: 32 layers, d = 4096, 32 heads
    assert abs(n_layer - 32) <= 2 and abs(n_embd - 4096) <= 256 and n_embd == 128 * n_head
    assert 12 * n_layer * n_embd ** 2 == pytest.approx(6.7e9, rel=0.15)


def test_training_memory_is_states_plus_layers_of_activations():
    mem = E.estimate_training_memory(7e9, 4096, 1, zero_stage=3, world_size=8)
    states = E.estimate_state_memory(7e9, zero_stage=3, world_size=8)
    L, h, a = E.model_shape(7e9)
    assert (mem.weights, mem.gradients, mem.optimizer) == (states.weights, states.gradients, states.optimizer)
    assert mem.activations == L * E.korthikanti_activation_bytes_per_layer(4096, 1, h, a)
    fp32 = E.estimate_training_memory(7e9, 4096, 1, precision="fp32")
    assert fp32.activations == 2 * mem.activations
    full = E.estimate_training_memory(7e9, 4096, 1, recompute="full")
    assert full.activations < mem.activations / 50


def test_tinygpt_activation_estimate_is_linear_in_batch():
    cfg = preset("tiny")
    one, four = (sum(E.estimate_activation_bytes(cfg, b, 32).values()) for b in (1, 4))
    assert four == 4 * one


# ----------------------------------------------------------------------------- bad input

def test_unknown_gpu_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        E.get_gpu("RTX 9090")
    assert all(name in str(err.value) for name in E.GPU_CATALOG)
    with pytest.raises(ValueError, match="H100"):
        E.estimate_cost(E.Plan(1e9, 1e9, gpu="V100"))


def test_missing_dtype_names_the_ones_there():
    with pytest.raises(ValueError, match="fp16"):
        E.get_gpu("T4").peak_flops("bf16")


@pytest.mark.parametrize("kwargs", [dict(n_params=0, n_tokens=1e9), dict(n_params=1e9, n_tokens=-1),
                                    dict(n_params=float("nan"), n_tokens=1e9)])
def test_non_positive_sizes_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be positive"):
        E.training_flops(**kwargs)


@pytest.mark.parametrize("mfu", [0, -0.1, 1.01, 40])
def test_mfu_outside_zero_one_is_refused(mfu):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        E.estimate_cost(E.Plan(1e9, 1e9, mfu=mfu))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        E.estimate_seconds(1e9, 1e9, 1e12, mfu)


def test_mfu_of_exactly_one_is_allowed():
    assert E.estimate_cost(E.Plan(1e9, 1e9, mfu=1.0)).gpu_hours > 0


def test_bad_plan_sizes_are_refused():
    with pytest.raises(ValueError, match="n_gpus"):
        E.estimate_cost(E.Plan(1e9, 1e9, n_gpus=0))
    with pytest.raises(TypeError, match="whole number"):
        E.estimate_cost(E.Plan(1e9, 1e9, n_gpus=1.5))
    with pytest.raises(ValueError, match="price_per_hour"):
        E.estimate_cost(E.Plan(1e9, 1e9, price_per_hour=0))
    with pytest.raises(ValueError, match="world_size"):
        E.estimate_state_memory(1e9, world_size=0)
    with pytest.raises(ValueError, match="zero_stage"):
        E.estimate_state_memory(1e9, zero_stage=4)
    with pytest.raises(ValueError, match="optimizer"):
        E.estimate_state_memory(1e9, optimizer="lion")
    with pytest.raises(ValueError, match="recompute"):
        E.korthikanti_activation_bytes_per_layer(1, 1, 1, 1, recompute="some")


def test_sequence_longer_than_the_model_allows_is_refused_with_the_fix():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="seq <= 64"):
        E.estimate_activation_bytes(cfg, 1, 65)
    with pytest.raises(ValueError, match="batch"):
        E.estimate_activation_bytes(cfg, 0, 16)
