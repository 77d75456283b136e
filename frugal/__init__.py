"""frugal: train AI models on the GPUs you can afford, every technique built from scratch."""
from frugal.model import GPTConfig, TinyGPT, preset
from frugal.release import VERSION as __version__

__all__ = ["GPTConfig", "TinyGPT", "preset"]
