"""The lessons' exercises as shipped (a stub, its check below it, in the lesson lesson_of says) and filled in:
each notebook's setup cell plus its exercise and check cells, every stub replaced by exercises.source(name),
run in a real kernel; every check must print its pass line. And each prediction is asked before it is revealed."""
import ast
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from frugal import exercises

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK = re.compile(r'exercises\.check\("(\w+)", (\w+)\)')


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _src(cell: dict) -> str:
    return "".join(cell["source"])


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _exercise_cells(cells: list[dict]) -> list[tuple[str, dict, dict]]:
    """(name, stub cell, check cell) for each exercise, the check being the code cell right after the stub."""
    found = []
    for i, cell in enumerate(cells):
        name = cell.get("metadata", {}).get("exercise")
        if name:
            check = next(c for c in cells[i + 1:] if c["cell_type"] == "code")
            found.append((name, cell, check))
    return found


def _setup_cells(cells: list[dict]) -> list[dict]:
    """The code cells between the title and the first section: the imports and settings the lesson runs on."""
    setup = []
    for cell in cells[2:]:
        if cell["cell_type"] != "code":
            break
        setup.append(cell)
    return setup


def _shown(cell) -> str:
    """Everything a cell displayed: streams, HTML and plain text."""
    parts = []
    for out in cell.outputs:
        parts.append(out.get("text", ""))
        for mime in ("text/html", "text/plain"):
            parts.append(str(out.get("data", {}).get(mime, "")))
        if out.get("output_type") == "error":
            parts.append("\n".join(out.get("traceback", [])))
    return "\n".join(parts)


def test_every_exercise_is_in_its_lesson_as_a_stub_with_its_check():
    seen = {}
    for path in NOTEBOOKS:
        cells = _cells(path)
        for name, stub, check in _exercise_cells(cells):
            assert name not in seen, f"{name} appears in {seen[name]} and {path.name}"
            seen[name] = path.stem
            assert exercises.lesson_of(name) == path.stem, f"{name} belongs in {exercises.lesson_of(name)}"
            assert _tags(stub) == ["exercise"] and _tags(check) == ["check"], (name, _tags(stub), _tags(check))
            source = _src(stub)
            assert "raise NotImplementedError  # your code here" in source, name
            fn = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == name)
            solution = exercises.solution(name)
            ref = ast.parse(exercises.source(name)) if name == "vector_add_kernel" else None
            want = ([a.arg for a in next(n for n in ast.walk(ref) if isinstance(n, ast.FunctionDef)).args.args]
                    if ref else list(solution.__code__.co_varnames[:solution.__code__.co_argcount]))
            assert [a.arg for a in fn.args.args] == want, f"{name}: the stub's parameters differ from the solution's"
            assert ast.get_docstring(fn), f"{name}: the stub says what to write in a docstring"
            assert CHECK.search(_src(check)).groups() == (name, name), (name, _src(check))
            before = cells[cells.index(stub) - 1]
            assert before["cell_type"] == "markdown" and f"Exercise: `{name}`" in _src(before), name
            assert f'exercises.hint("{name}")' in _src(before) and f'exercises.source("{name}")' in _src(before)
    assert sorted(seen) == sorted(exercises.names()), set(exercises.names()) ^ set(seen)


def test_no_cell_after_a_stub_uses_the_learners_function():
    """Skipping an exercise must not break the lesson: later cells use frugal's own version, not the stub's name."""
    for path in NOTEBOOKS:
        cells = _cells(path)
        for name, stub, check in _exercise_cells(cells):
            later = [c for c in cells[cells.index(check) + 1:] if c["cell_type"] == "code"]
            for cell in later:
                used = {n.id for n in ast.walk(ast.parse(_src(cell))) if isinstance(n, ast.Name)}
                assert name not in used, f"{path.name}: a cell after the {name} exercise calls the stub:\n{_src(cell)}"


def test_every_prediction_is_asked_in_one_cell_and_revealed_in_a_later_one():
    asked_in_all = 0
    for path in NOTEBOOKS:
        cells = [c for c in _cells(path) if c["cell_type"] == "code"]
        for i, cell in enumerate(cells):
            for var in re.findall(r"^(\w+) = predict\.ask\(", _src(cell), flags=re.M):
                asked_in_all += 1
                assert f"{var}.reveal(" not in _src(cell), f"{path.name}: {var} is answered where it is asked"
                assert any(f"{var}.reveal(" in _src(c) for c in cells[i + 1:]), f"{path.name}: {var} never revealed"
    assert asked_in_all >= 16, asked_in_all


def _filled(path: Path) -> nbformat.NotebookNode:
    """The notebook's setup cells, then each exercise with frugal's solution pasted in, then its check."""
    nb = nbformat.read(path, as_version=4)
    cells = [nbformat.v4.new_code_cell(_src(c)) for c in _setup_cells(_cells(path))]
    for name, _, check in _exercise_cells(_cells(path)):
        cells.append(nbformat.v4.new_code_cell(str(exercises.source(name)), metadata={"exercise": name}))
        cells.append(nbformat.v4.new_code_cell(_src(check), metadata={"tags": ["check"]}))
    nb.cells = cells
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_check_passes_with_the_solutions_pasted_into_the_exercise_cells(path, monkeypatch):
    if path.stem == "06_triton_kernels":
        pytest.importorskip("triton", reason="lesson 06's kernel exercise needs `pip install triton` (Linux)")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = _filled(path)
    NotebookClient(nb, kernel_name="python3", timeout=300, shutdown_kernel="immediate",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    names = [CHECK.search(_src(c)).group(1) for c in nb.cells if "check" in _tags(c)]
    assert names, path.name
    for cell in (c for c in nb.cells if "check" in _tags(c)):
        name, shown = CHECK.search(_src(cell)).group(1), _shown(cell)
        assert f"✓ {name}: passed" in shown and "✗" not in shown, f"{path.name}, {name}:\n{shown[-2000:]}"


@pytest.mark.parametrize("name", [n for n in exercises.names() if n != "ring_all_reduce"])
def test_the_shipped_stub_reports_not_done_yet(name):
    """The stub as the lesson ships it (run in a namespace like the notebook's) is 'not done yet', never a failure."""
    path = next(p for p in NOTEBOOKS if p.stem == exercises.lesson_of(name))
    stub = next(s for n, s, _ in _exercise_cells(_cells(path)) if n == name)
    namespace = {"HAVE_TRITON": True, "torch": pytest.importorskip("torch")}
    if name == "vector_add_kernel":
        pytest.importorskip("triton")
        import frugal.kernels  # noqa: F401 - Triton's interpreter on a CPU, as the lesson's setup cell does
    exec(compile(_src(stub), f"<{name} stub>", "exec"), namespace)
    result = exercises.check(name, namespace[name])
    assert result.not_done and not result.passed and "not done yet" in result.message, result.message
