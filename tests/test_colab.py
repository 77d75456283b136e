"""Colab's first minutes, emulated: a Python that has torch and ipywidgets 7.7.1 but not frugal, and a
`google.colab` module. The lesson's install cell installs a wheel built from this checkout (its git URL
swapped for the wheel, the only change), then the lesson's first cells run on what it installed."""
import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from test_ipywidgets7 import PINS, TARGET

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "notebooks" / "00_gpu_economics.ipynb"

pytestmark = pytest.mark.slow


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> dict:
    """A wheel of this checkout, and a 'Colab' Python: its own empty site-packages first (where pip installs),
    then this venv's packages (torch, pip, IPython...) but not frugal, ipywidgets 7.7.1 and google.colab first."""
    tmp = tmp_path_factory.mktemp("colab")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(ROOT)])
    wheel = next(tmp.glob("frugal_workbook-*.whl"))
    if not (TARGET / "ipywidgets-7.7.1.dist-info").is_dir():
        TARGET.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(TARGET), *PINS])
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "colab_has.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")   # a plain path: no editable frugal
    fake = tmp / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text('"""What Colab imports; the install cell looks for it."""\n')
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{fake}:{TARGET}", "MPLBACKEND": "Agg", "HOME": str(tmp)}
    return {"python": str(python), "wheel": wheel, "site": site, "env": env, "cwd": tmp}


def test_the_wheel_is_named_and_versioned_as_release_says(colab):
    from frugal import release

    assert colab["wheel"].name.startswith(f"frugal_workbook-{release.VERSION}-")


def test_colabs_first_cell_installs_the_wheel_then_the_lesson_runs(colab):
    cells = json.loads(LESSON.read_text())["cells"]
    install = "".join(cells[1]["source"])
    line = next(s for s in install.splitlines() if s.strip().startswith("SOURCE = "))
    install = install.replace(line, f"    SOURCE = {str(colab['wheel'])!r}   # this checkout, built here")
    first = ["".join(c["source"]) for c in cells[2:14] if c["cell_type"] == "code"]   # imports, 6ND and its exercise, MFU, prices
    script = textwrap.dedent("""
        import sys
        import google.colab  # noqa: F401 - Colab's kernel has imported it before the first cell
        try:
            import frugal
            raise SystemExit(f"frugal is importable before the install cell: {frugal.__file__}")
        except ImportError:
            pass
    """) + install + textwrap.dedent("""

        import frugal, ipywidgets, torch
        print("frugal", frugal.__version__, frugal.__file__)
        print("ipywidgets", ipywidgets.__version__)
    """) + "\n\n".join(first) + textwrap.dedent("""

        box = widgets.cost_calculator(n_params=7e9, n_tokens=2e12, gpu="H100", n_gpus=64)
        print("dashboard", type(box).__name__, len(box.children))
    """)
    done = _run([colab["python"], "-c", script], cwd=colab["cwd"], env=colab["env"])
    out = done.stdout
    from frugal import release

    frugal_line = next(line for line in out.splitlines() if line.startswith("frugal "))
    assert frugal_line.split()[1] == release.VERSION
    assert Path(frugal_line.split()[2]).is_relative_to(colab["site"])          # the installed wheel, not ROOT
    assert "ipywidgets 7.7.1" in out
    assert "Llama 2 70B on 2T tokens: 8.40e+23 FLOPs" in out                 # the lesson's first cells ran
    assert "dashboard VBox" in out
