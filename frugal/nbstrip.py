"""A notebook as it is committed: no outputs, no execution counts, no per-run metadata.

`make lab` starts JupyterLab with pre_save_hook below, so a saved lesson stays as committed (its outputs live
in the browser tab) and running it leaves `git status` clean; it also makes this git's clean filter
(.gitattributes names the notebooks), so another editor's outputs never reach a commit. Standard library only,
so git runs it as a plain script: `python frugal/nbstrip.py < in.ipynb > out.ipynb`, or `... FILE...` in place.
"""
from __future__ import annotations

import json
import sys

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
RUN_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled", "jupyter")   # what a run or a view adds


def strip(nb: dict) -> dict:
    """nb without what a run adds: outputs, counts, timings and view state of cells (tags stay), widget
    state, the kernel's name and version."""
    if not isinstance(nb, dict) or "cells" not in nb:
        raise ValueError("not a notebook: expected the JSON of an .ipynb file, with a 'cells' list")
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k not in RUN_METADATA}
    meta = nb.setdefault("metadata", {})
    meta.pop("widgets", None)
    meta["kernelspec"] = dict(KERNELSPEC)
    meta["language_info"] = {"name": "python"}
    return nb


def dumps(nb: dict) -> str:
    """The JSON Jupyter itself writes (one-space indent, sorted keys, UTF-8 as is), ending in a newline."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def pre_save_hook(model: dict, **_) -> None:
    """Jupyter's ContentsManager.pre_save_hook: strip a notebook before it is written (git's filter alone
    cannot: git status calls a file whose size changed modified without running the filter)."""
    if model.get("type") == "notebook":
        strip(model["content"])


def main(argv: list[str]) -> int:
    if not argv:                                   # a git filter: the notebook on stdin, stripped on stdout
        sys.stdout.write(dumps(strip(json.loads(sys.stdin.read()))))
        return 0
    for path in argv:
        with open(path, encoding="utf-8") as f:
            text = dumps(strip(json.load(f)))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
