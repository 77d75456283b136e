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
