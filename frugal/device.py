"""What hardware is here: the only module that probes it (CUDA, real bf16, Triton, which GPU).

Everything else asks this module, so a lesson behaves the same on a laptop CPU, a Colab T4 and an H100.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
from dataclasses import dataclass

import torch

# GPU names as torch reports them, mapped to the keys of estimate.GPU_CATALOG (first match wins).
# Whole words only, so an 'L40S' is not taken for an 'L4', nor a 'GH200' for an 'H200'.
_CATALOG_PATTERNS = [
    (r"\bH200\b", "H200"),
    (r"\bH100\b", "H100"),
    (r"\bA100\b.*\b80\s?GB\b", "A100-80GB"),
    (r"\bA100\b", "A100-40GB"),
    (r"\bL4\b", "L4"),
    (r"\bT4\b", "T4"),
]


def pick_device(prefer: str | None = None) -> torch.device:
    """The device lessons run on: `prefer` if given, else CUDA when present, else CPU."""
    if prefer is not None:
        if prefer in ("gpu", "GPU"):
            raise ValueError(f"device {prefer!r}: PyTorch calls a GPU 'cuda'; use 'cuda' (or 'cuda:1'), or 'cpu'")
        try:
            dev = torch.device(prefer)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {prefer!r} is not a device name: use 'cpu', 'cuda' or 'cuda:N'") from e
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device {prefer!r}: frugal runs on 'cpu' and 'cuda' (NVIDIA GPUs); "
                             f"{dev.type} is not supported, use 'cpu'")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} asked for, but no CUDA GPU is visible: use 'cpu' or pick_device()")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {prefer!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible: "
                             f"use an index below {torch.cuda.device_count()}")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def has_cuda() -> bool:
    """True when a CUDA GPU is visible."""
    return torch.cuda.is_available()


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_name(index: int = 0) -> str | None:
    return torch.cuda.get_device_name(index) if torch.cuda.is_available() else None


def catalog_name(name: str | None = None) -> str | None:
    """Map a GPU name ('NVIDIA H100 80GB HBM3', 'Tesla T4') to its estimate.GPU_CATALOG key, or None."""
    name = gpu_name() if name is None else name
    if not name:
        return None
    for pattern, key in _CATALOG_PATTERNS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return key
    return None


def bf16_is_native(device: torch.device | str | None = None) -> bool:
    """True where bf16 matmuls run on real bf16 hardware: CUDA compute capability 8.0+ (Ampere on).

    A T4 (7.5) accepts bf16 tensors but emulates the math, slowly; fp16 plus a loss scaler is its path.
    On CPU, autocast to bf16 works and is exact in format, so lessons may use it, but it is not faster.
    """
    device = pick_device() if device is None else torch.device(device)
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def has_fp8_matmul(device: torch.device | str) -> bool:
    """True on an NVIDIA GPU with fp8 tensor cores (compute capability 8.9+: Ada, Hopper and later), where
    torch._scaled_mm runs; AMD (ROCm) builds report cuda too and are left out."""
    device = torch.device(device)
    return (device.type == "cuda" and torch.cuda.is_available() and torch.version.hip is None
            and hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(device) >= (8, 9))


@functools.cache
def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_needs_interpreter() -> bool:
    """Without a GPU, Triton kernels run through its interpreter (TRITON_INTERPRET=1) on NumPy."""
    return not torch.cuda.is_available()


def enable_triton_interpreter() -> bool:
    """Switch Triton to its interpreter when there is no GPU; call before kernels are defined.

    Returns True when the interpreter is on. Triton reads the flag when a kernel is decorated,
    which is why frugal.kernels calls this before defining any kernel.
    """
    if triton_needs_interpreter():
        os.environ["TRITON_INTERPRET"] = "1"
        return True
    return triton_interpreting()


def triton_interpreting() -> bool:
    """Triton runs kernels through its interpreter (TRITON_INTERPRET=1), not compiled for a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def device_slug(device: torch.device | str | None = None) -> str:
    """A file-name-safe name of this machine's accelerator: 'cpu', 'h100', 'h200-x2', 't4'."""
    device = pick_device() if device is None else torch.device(device)
    if device.type != "cuda":
        return "cpu"
    key = catalog_name() or (gpu_name() or "gpu").split()[-1]
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-") or "gpu"
    return slug if gpu_count() == 1 else f"{slug}-x{gpu_count()}"


@dataclass(frozen=True)
class DeviceInfo:
    device: str          # 'cpu' or 'cuda'
    name: str            # human name: the GPU's, or the CPU's
    catalog: str | None  # key in estimate.GPU_CATALOG, None for a CPU or an unknown GPU
    gpus: int            # visible CUDA devices
    bf16_native: bool    # real bf16 math (see bf16_is_native)
    triton: bool         # triton importable
    triton_interpreter: bool  # kernels would run through the interpreter
    torch_version: str


def describe(device: torch.device | str | None = None) -> DeviceInfo:
    """Everything frugal knows about the hardware, in one record (printed by `python -m frugal info`)."""
    device = pick_device() if device is None else torch.device(device)
    is_cuda = device.type == "cuda"
    return DeviceInfo(
        device=device.type,
        name=gpu_name() if is_cuda else (platform.processor() or platform.machine() or "cpu"),
        catalog=catalog_name() if is_cuda else None,
        gpus=gpu_count(),
        bf16_native=bf16_is_native(device),
        triton=has_triton(),
        triton_interpreter=triton_needs_interpreter(),
        torch_version=torch.__version__,
    )


def default_model_size(device: torch.device | str | None = None) -> str:
    """The model preset a lesson trains by default: 'tiny' on CPU, 'gpt2-small' on a GPU."""
    device = pick_device() if device is None else torch.device(device)
    return "gpt2-small" if device.type == "cuda" else "tiny"
