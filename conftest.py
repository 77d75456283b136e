"""pytest setup shared by tests/ and the notebooks run under nbval."""
import pytest
import torch

NBVAL_OUTPUT_WAIT_S = 120  # nbval waits 5 s for a cell's output messages; lessons train, so allow more


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none (run it on the device or a Colab GPU)")
    for item in items:
        if hasattr(item, "output_timeout"):          # an nbval notebook cell
            item.output_timeout = NBVAL_OUTPUT_WAIT_S
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
