"""The notebooks under ipywidgets 7.7.1, the version Colab ships: dashboards built on Output and
interactive_output with the inline backend must work there as on ipywidgets 8.

ipywidgets 7.7.1 with its own widgetsnbextension 3.6 and jupyterlab_widgets 1.1 is pip-installed (--no-deps)
into build/ipywidgets-7.7.1, which goes first on PYTHONPATH: the kernel nbval starts imports it instead of
.venv's ipywidgets 8, and takes torch, IPython and ipykernel from .venv (Colab's own are older)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "build" / "ipywidgets-7.7.1"
PINS = ["ipywidgets==7.7.1", "widgetsnbextension~=3.6.0", "jupyterlab_widgets>=1.0,<2", "ipython_genutils~=0.2.0"]
NBVAL = ["--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg"]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env7() -> dict:
    """The environment of a Python that imports ipywidgets 7.7.1 and everything else from this venv."""
    if not (TARGET / "ipywidgets-7.7.1.dist-info").is_dir():
        TARGET.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               "--no-deps", "--upgrade", "--target", str(TARGET), *PINS],
                              capture_output=True, text=True, timeout=300)
        if done.returncode:
            pytest.fail(f"could not install {PINS} into {TARGET} (needs PyPI once):\n{done.stderr[-2000:]}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TARGET), str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def test_a_kernel_started_like_nbval_imports_ipywidgets_7(env7):
    """The check below is only worth something if its kernels really see 7.7.1: start one the same way."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env=env7, cwd=str(ROOT / "notebooks"))
    try:
        seen = []
        kc.execute_interactive("import ipywidgets, frugal.widgets; print(ipywidgets.__version__, ipywidgets.__file__)",
                               output_hook=lambda m: seen.append(m["content"].get("text", "")), timeout=120)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    version, path = "".join(seen).split()
    assert version == "7.7.1" and Path(path).is_relative_to(TARGET), seen


def test_no_notebook_needs_ipympl():
    """Colab has no ipympl: figures come through the inline backend."""
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            assert not re.search(r"%matplotlib\s+(widget|ipympl)|\bipympl\b", source), path.name


def test_notebooks_run_under_ipywidgets_7(env7):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NBVAL,
                           *map(str, NOTEBOOKS)], cwd=ROOT, env=env7, capture_output=True, text=True)
    assert done.returncode == 0, f"nbval under ipywidgets 7.7.1 failed:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
