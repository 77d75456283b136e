"""frugal: train AI models on the GPUs you can afford, every technique built from scratch."""
from frugal.model import GPTConfig, TinyGPT, preset

__all__ = ["GPTConfig", "TinyGPT", "preset"]
__version__ = "0.1.0"
