import os

import pytest
import torch

from frugal import device, estimate


@pytest.mark.parametrize("name,key", [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
    ("NVIDIA A100 80GB PCIe", "A100-80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100-40GB"),
    ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"),
    # whole words only: these are other chips, and must not borrow a catalog entry's peak
    ("NVIDIA L40S", None),
    ("NVIDIA GH200 480GB", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_gpu_names_map_to_the_catalog(name, key):
    assert device.catalog_name(name) == key


def test_every_mapped_key_is_in_the_estimator_catalog():
    assert {key for _, key in device._CATALOG_PATTERNS} <= set(estimate.GPU_CATALOG)


def test_cpu_device_facts():
    assert device.pick_device("cpu") == torch.device("cpu")
    assert device.bf16_is_native("cpu") is False
    assert device.device_slug("cpu") == "cpu"
    assert device.default_model_size("cpu") == "tiny"
    info = device.describe("cpu")
    assert info.device == "cpu" and info.catalog is None and info.torch_version == torch.__version__


def test_gpu_default_size_is_gpt2_small():
    assert device.default_model_size(torch.device("cuda")) == "gpt2-small"


def test_pick_device_follows_cuda_availability():
    assert device.pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device.gpu_count() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_names_the_fix():
    with pytest.raises(ValueError, match="use 'cpu'"):
        device.pick_device("cuda")
    assert device.gpu_name() is None and device.catalog_name() is None


def test_triton_interpreter_is_needed_exactly_without_cuda(monkeypatch):
    assert device.triton_needs_interpreter() == (not torch.cuda.is_available())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # monkeypatch restores the variable afterwards
    on = device.enable_triton_interpreter()
    assert on == (not torch.cuda.is_available())
    assert (os.environ.get("TRITON_INTERPRET") == "1") == on


@pytest.mark.gpu
def test_gpu_description_matches_the_hardware():
    info = device.describe("cuda")
    assert info.gpus == torch.cuda.device_count() >= 1
    assert info.bf16_native == (torch.cuda.get_device_capability()[0] >= 8)
    with pytest.raises(ValueError, match="index below"):
        device.pick_device(f"cuda:{torch.cuda.device_count()}")
