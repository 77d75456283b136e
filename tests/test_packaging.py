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
OPTIONAL = {"datasets", "tiktoken"}   # the 'text' extra: imported inside load_tokens, whose error says to install it
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


def test_every_notebook_has_the_colab_install_cell_right_below_its_title():
    """Only on Colab: pip-install frugal-workbook from frugal/release.py's repository and ref with --no-deps, and
    nothing that would replace Colab's own torch, matplotlib or ipywidgets. Off Colab the cell runs nothing."""
    import sys

    from frugal import release

    for path in _notebook_paths():
        title, cell = json.loads(path.read_text())["cells"][:2]
        assert title["cell_type"] == "markdown" and _code(title).startswith("# "), f"{path.name}: title first"
        hint = f"{path.name}: the second cell must be the install cell: run `python -m frugal.release`"
        assert cell["cell_type"] == "code" and cell.get("id") == "colab-install", hint
        assert _code(cell) == release.install_cell(), hint
        assert _code(cell).splitlines()[0].startswith("# Installs frugal on Colab"), hint   # one line says what
        assert _run_colab_cell(_code(cell), on_colab=False) == [], f"{path.name}: the cell acts off Colab"
        calls = _run_colab_cell(_code(cell), on_colab=True)
        assert calls and calls[0][:4] == [sys.executable, "-m", "pip", "install"], hint
        assert "--no-deps" in calls[0] and \
            f"frugal-workbook @ git+{release.REPOSITORY}@{release.REF}" in calls[0], hint
        for call in calls:
            named = {re.split(r"[<>=!~\[; @]", arg)[0].lower() for arg in call[4:] if not arg.startswith("-")}
            kept = named & KEEP_COLABS_OWN
            assert not kept, f"{path.name}: {call} would replace Colab's own {kept}"


def test_the_repository_the_ref_and_the_version_live_in_frugal_release():
    """pyproject, the README's badges and every install cell say what frugal/release.py says."""
    import frugal
    from frugal import release

    project = _pyproject()["project"]
    assert project["name"] == release.DISTRIBUTION == "frugal-workbook"      # PyPI's 'frugal' is not ours
    assert "version" in project["dynamic"] and "version" not in project
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "frugal.release.VERSION"}
    assert frugal.__version__ == release.VERSION
    assert project["urls"]["Repository"] == release.REPOSITORY
    readme = (ROOT / "README.md").read_text()
    badges = re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", readme)
    assert len(badges) == len(_notebook_paths())
    for url in badges:
        assert url == release.badge_url(url.rsplit("/", 1)[1]), url
    assert "frugal/release.py" in readme and "python -m frugal.release" in readme   # how a fork or release sets it
    assert release.write(ROOT) == []                                               # nothing left to rewrite


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
        for call in _run_colab_cell(_code(cells[1]), on_colab=True)[1:]:
            installed_by_cell |= {re.split(r"[<>=!~\[; ]", a)[0].replace("-", "_") for a in call[4:] if a[0] != "-"}
    third_party = set().union(*map(_imports, sources)) - set(sys.stdlib_module_names) - {"frugal", "google"}
    missing = third_party - COLAB_SHIPS - installed_by_cell - OPTIONAL - OPTIONAL_PEERS
    assert not missing, f"imported but not on Colab: {sorted(missing)}; pip-install them in every notebook's first cell"
