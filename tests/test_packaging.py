"""The install is one source of truth: pyproject.toml and environment.yml agree; notebooks are stored stripped."""
import json
import re
from pathlib import Path

try:
    import tomllib                      # Python 3.11+
except ModuleNotFoundError:             # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _normalize(req: str) -> str:
    """'triton >= 3.0 ; platform_system == "Linux"' and "triton>=3.0; platform_system == 'Linux'" are one."""
    return re.sub(r"\s+", "", req).replace('"', "'").lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _conda_pip_requirements() -> list[str]:
    """The `pip:` list of environment.yml (a tiny reader: PyYAML is not a dependency of frugal)."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    reqs = []
    for line in lines[start + 1:]:
        if line.strip() and (len(line) - len(line.lstrip())) <= indent:
            break
        item = line.split("#")[0].strip()
        if item.startswith("- "):
            item = item[2:].strip()
            if len(item) > 1 and item[0] == item[-1] and item[0] in "'\"":   # a quoted YAML scalar
                item = item[1:-1]
            reqs.append(item)
    return reqs


def _conda_packages() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    return [line.strip()[2:].strip() for line in lines if re.match(r"^  - [^ ]", line)]


def test_environment_yml_and_pyproject_name_the_same_dependencies():
    project = _pyproject()["project"]
    declared = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared |= set(extra)
    conda = [r for r in _conda_pip_requirements() if not r.startswith("-e")]
    assert sorted(map(_normalize, conda)) == sorted(map(_normalize, declared))


def test_environment_yml_installs_the_package_itself_from_conda_forge():
    text = (ROOT / "environment.yml").read_text()
    assert "-e ." in _conda_pip_requirements()
    assert "conda-forge" in text and "nodefaults" in text
    assert "pip" in _conda_packages()
    python = next(p for p in _conda_packages() if p.startswith("python"))
    assert python.replace(" ", "") == "python" + _pyproject()["project"]["requires-python"].replace(" ", "")


def test_dependencies_have_lower_bounds_only():
    """Colab ships its own torch, matplotlib and ipywidgets 7.7: no upper pins that would reinstall them."""
    project = _pyproject()["project"]
    every = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for req in every:
        spec = req.split(";")[0]
        assert ">=" in spec and not re.search(r"<|==|~=|!=", spec), req
    assert any(_normalize(r) == "ipywidgets>=7.7" for r in project["dependencies"])
    assert set(project["optional-dependencies"]) >= {"test", "kernels", "ui"}


def test_notebooks_are_stored_stripped():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        nb = json.loads(path.read_text())
        assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", path.name
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{path.name}: a cell has outputs; strip them before committing"
                assert cell["execution_count"] is None, f"{path.name}: a cell has an execution count"
            assert "execution" not in cell.get("metadata", {}), f"{path.name}: a cell keeps execution timings"


def test_corpus_ships_inside_the_package():
    assert "corpus/*.txt" in _pyproject()["tool"]["setuptools"]["package-data"]["frugal"]


# ----------------------------------------------------------------------------- Colab readiness

# What a Colab GPU runtime already ships of the packages frugal and its lessons import (Colab's image: torch
# with triton, numpy, matplotlib, ipywidgets 7.7, tqdm, IPython). frugal is installed with --no-deps over them.
COLAB_SHIPS = {"torch", "triton", "numpy", "matplotlib", "matplotlib_inline", "ipywidgets", "IPython", "tqdm",
               "psutil", "pandas", "scipy", "cloudpickle"}
KEEP_COLABS_OWN = {"torch", "matplotlib", "ipywidgets"}
# The `peers` extra: imported only inside try/except ImportError by the benchmark, measured where installed.
OPTIONAL_PEERS = {"liger_kernel", "cut_cross_entropy"}


def _notebook_paths() -> list[Path]:
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert paths, "no notebooks found"
    return paths


def _code(cell: dict) -> str:
    return "".join(cell["source"])


def _run_colab_cell(source: str, on_colab: bool) -> list[list[str]]:
    """Execute the install cell with subprocess.check_call recorded instead of run; on_colab fakes google.colab."""
    import subprocess
    import sys
    import types
    from unittest import mock

    calls = []
    modules = {"google": types.ModuleType("google"), "google.colab": types.ModuleType("google.colab")}
    with mock.patch.dict(sys.modules, modules if on_colab else {}), \
            mock.patch.object(subprocess, "check_call", side_effect=lambda cmd, **kw: calls.append(list(cmd)) or 0), \
            mock.patch.object(subprocess, "run", side_effect=AssertionError("use subprocess.check_call")):
        if not on_colab:
            sys.modules.pop("google.colab", None)
        exec(compile(source, "<colab cell>", "exec"), {"__name__": "__main__"})
    return calls


def test_every_notebook_starts_with_the_colab_install_cell():
    """Only on Colab: pip-install frugal from [project.urls] Repository with --no-deps, and nothing that
    would replace Colab's own torch, matplotlib or ipywidgets. Off Colab the cell runs nothing."""
    import sys

    repository = _pyproject()["project"]["urls"]["Repository"]
    for path in _notebook_paths():
        first = json.loads(path.read_text())["cells"][0]
        hint = f"{path.name}: the first cell must be the Colab install cell (copy it from 00_gpu_economics.ipynb)"
        assert first["cell_type"] == "code" and '"google.colab" in sys.modules' in _code(first), hint
        assert _run_colab_cell(_code(first), on_colab=False) == [], f"{path.name}: the cell acts off Colab"
        calls = _run_colab_cell(_code(first), on_colab=True)
        assert calls and calls[0][:4] == [sys.executable, "-m", "pip", "install"], hint
        assert "--no-deps" in calls[0] and f"git+{repository}" in calls[0], \
            f"{path.name}: install git+{repository} with --no-deps (pyproject's [project.urls] Repository)"
        for call in calls:
            named = {re.split(r"[<>=!~\[; ]", arg)[0].lower() for arg in call[4:] if not arg.startswith("-")}
            assert not named & KEEP_COLABS_OWN, f"{path.name}: {call} would replace Colab's own {named & KEEP_COLABS_OWN}"


def test_every_notebook_asks_colab_for_a_gpu_runtime():
    for path in _notebook_paths():
        meta = json.loads(path.read_text())["metadata"]
        assert meta.get("accelerator") == "GPU", f"{path.name}: metadata needs \"accelerator\": \"GPU\""
        assert meta.get("colab", {}).get("gpuType") == "T4", f"{path.name}: metadata needs colab.gpuType T4"


def _imports(source: str) -> set[str]:
    import ast

    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_colab_has_every_package_frugal_and_the_lessons_import():
    """--no-deps installs frugal alone: whatever else it imports, Colab must ship (or the cell must install it)."""
    import sys

    sources = [p.read_text() for p in (ROOT / "frugal").rglob("*.py")]
    installed_by_cell = set()
    for path in _notebook_paths():
        cells = json.loads(path.read_text())["cells"]
        sources += [_code(c) for c in cells if c["cell_type"] == "code"]
        for call in _run_colab_cell(_code(cells[0]), on_colab=True)[1:]:
            installed_by_cell |= {re.split(r"[<>=!~\[; ]", a)[0].replace("-", "_") for a in call[4:] if a[0] != "-"}
    third_party = set().union(*map(_imports, sources)) - set(sys.stdlib_module_names) - {"frugal", "google"}
    missing = third_party - COLAB_SHIPS - installed_by_cell - OPTIONAL_PEERS
    assert not missing, f"imported but not on Colab: {sorted(missing)}; pip-install them in every notebook's first cell"
