"""Running a lesson leaves git status clean: the nbstrip clean filter, and `make lab` that configures it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from frugal import nbstrip

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _as_if_run(nb: dict) -> dict:
    """What Jupyter saves after Run All: outputs, counts, timings, widget state, the kernel it ran on."""
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            cell["execution_count"] = i
            cell["outputs"] = [{"name": "stdout", "output_type": "stream", "text": ["ran\n"]}]
            cell["metadata"]["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb["metadata"]["kernelspec"] = {"display_name": ".venv", "language": "python", "name": "venv"}
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.2", "mimetype": "text/x-python"}
    return nb


def test_every_committed_notebook_is_already_what_the_filter_writes():
    for path in NOTEBOOKS:
        assert nbstrip.dumps(nbstrip.strip(json.loads(path.read_text()))) == path.read_text(), path.name


def test_strip_undoes_a_run_and_keeps_the_lesson():
    committed = json.loads(NOTEBOOKS[0].read_text())
    committed["cells"][2]["metadata"]["tags"] = ["keep-me"]         # tags are the lesson's, not the run's
    ran = _as_if_run(json.loads(json.dumps(committed)))
    assert nbstrip.strip(ran) == committed


def test_strip_refuses_what_is_not_a_notebook():
    with pytest.raises(ValueError, match="not a notebook"):
        nbstrip.strip({"source": "x"})


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _repo_with_a_lesson(tmp_path: Path) -> tuple[Path, Path]:
    """A repository set up as `make lab` sets one up: .gitattributes names the filter, git config runs it."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    for name in (".gitattributes", ".gitignore"):                 # the checkout's own rules
        shutil.copy(ROOT / name, repo / name)
    lesson = repo / "notebooks" / NOTEBOOKS[0].name
    shutil.copy(NOTEBOOKS[0], lesson)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "lab@example.invalid")
    _git(repo, "config", "user.name", "lab")
    _git(repo, "config", "filter.nbstrip.clean", f'"{sys.executable}" "{ROOT / "frugal" / "nbstrip.py"}"')
    _git(repo, "config", "filter.nbstrip.smudge", "cat")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "lesson")
    return repo, lesson


def test_a_lesson_run_and_saved_in_jupyterlab_leaves_git_status_clean(tmp_path):
    """Jupyter's own contents manager with make lab's pre-save hook, saving a notebook that has run."""
    from jupyter_server.services.contents.filemanager import FileContentsManager

    repo, lesson = _repo_with_a_lesson(tmp_path)
    cm = FileContentsManager(root_dir=str(repo), pre_save_hook="frugal.nbstrip.pre_save_hook")
    path = f"notebooks/{lesson.name}"
    model = cm.get(path)
    _as_if_run(model["content"])
    cm.save(model, path)
    assert _git(repo, "status", "--porcelain") == ""
    model = cm.get(path)
    model["content"]["cells"][0]["source"] += "\nA sentence the learner added."
    cm.save(model, path)
    assert _git(repo, "status", "--porcelain").split() == ["M", path]      # a real edit still shows


def test_the_filter_keeps_another_editors_outputs_out_of_commits(tmp_path):
    repo, lesson = _repo_with_a_lesson(tmp_path)
    lesson.write_text(json.dumps(_as_if_run(json.loads(lesson.read_text())), indent=2))   # outputs saved
    assert _git(repo, "diff", "--stat") == ""                                  # nothing to see, nothing to commit
    _git(repo, "add", ".")
    assert _git(repo, "status", "--porcelain") == ""


def _make_lab_commands(env: dict | None = None, user: str | None = None) -> str:
    cmd = ["make", "-n", "lab", "STAMP=Makefile"]                    # -n: print the commands, run nothing
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, env=env).stdout
    return out.replace("\\\n", " ")                                   # one line per command


def test_make_lab_binds_to_loopback_keeps_the_token_and_sets_the_filter():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = _make_lab_commands()
    lab = next(line for line in out.splitlines() if "jupyter lab" in line)
    assert "--ServerApp.ip=127.0.0.1" in lab and "token" not in lab.lower()    # Jupyter's own token stays on
    assert ("--allow-root" in lab) == (os.geteuid() == 0)
    assert "--ContentsManager.pre_save_hook=frugal.nbstrip.pre_save_hook" in lab   # saved lessons stay stripped
    assert "git config filter.nbstrip.clean" in out and "frugal/nbstrip.py" in out


def test_make_lab_as_a_user_does_not_ask_for_root():
    if os.geteuid() != 0 or shutil.which("runuser") is None or shutil.which("make") is None:
        pytest.skip("needs root and runuser to run make as another user")
    if subprocess.run(["runuser", "-u", "nobody", "--", "test", "-r", str(ROOT / "Makefile")]).returncode:
        pytest.skip("the user nobody cannot read this checkout")
    lab = next(line for line in _make_lab_commands(user="nobody").splitlines() if "jupyter lab" in line)
    assert "--ServerApp.ip=127.0.0.1" in lab and "--allow-root" not in lab
