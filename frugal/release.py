"""Where frugal comes from: the one place that names its repository, the git ref Colab installs and the version.

pyproject.toml reads VERSION; `python -m frugal.release` writes every notebook's install cell and the README's
Colab badges from these three lines (a fork or a release edits them here, then runs it).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPOSITORY = "https://github.com/frugal-workbook/frugal"   # a fork: its own GitHub URL
REF = "main"                                                # a release: its tag, e.g. "v0.1.0"
VERSION = "0.1.0"                                           # the distribution frugal-workbook's version
DISTRIBUTION = "frugal-workbook"                            # the pip name (PyPI's 'frugal' is another project)


def install_cell() -> str:
    """The source of every lesson's install cell (the second cell, under the title)."""
    return f'''# Installs frugal on Colab, and does nothing elsewhere: run this cell first there.
import importlib
import subprocess
import sys

REPOSITORY, REF = "{REPOSITORY}", "{REF}"   # frugal/release.py
if "google.colab" in sys.modules:
    # --no-deps: Colab's own torch, matplotlib and ipywidgets 7.7 stay (Colab has the rest too)
    SOURCE = f"{DISTRIBUTION} @ git+{{REPOSITORY}}@{{REF}}"
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", SOURCE])
    importlib.invalidate_caches()'''


def badge_url(notebook: str) -> str:
    """Colab's address of a lesson in this repository at REF."""
    path = REPOSITORY.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{REF}/notebooks/{notebook}"


def write(root: Path) -> list[str]:
    """Rewrite the install cells and the README's badges under root; return the files that changed."""
    changed = []
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        cell = next((c for c in nb["cells"] if c.get("id") == "colab-install"), None)
        if cell is None:
            raise ValueError(f"{path.name} has no cell with id 'colab-install': copy the one of 00_gpu_economics")
        lines = install_cell().splitlines(keepends=True)
        if cell["source"] != lines:
            cell["source"] = lines
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(str(path))
    readme = root / "README.md"
    text = readme.read_text()
    new = re.sub(r"https://colab\.research\.google\.com/github/[^)\s]+/notebooks/([0-9][0-9]_\w+\.ipynb)",
                 lambda m: badge_url(m.group(1)), text)
    if new != text:
        readme.write_text(new)
        changed.append(str(readme))
    return changed


if __name__ == "__main__":
    print("\n".join(write(Path(sys.argv[1] if len(sys.argv) > 1 else "."))) or "already up to date")
