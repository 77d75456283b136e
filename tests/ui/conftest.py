"""Fixtures for the browser tests: one JupyterLab server and one headless Chromium per session, one page per
notebook. Every fixture has a finalizer, so the server, its kernels and the browser go away also on failure."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from .lab import CHROMIUM, CHROMIUM_ARGS, ROOT, Lab
from .notebook import NotebookPage

ARTIFACTS = ROOT / "test-artifacts" / "ui"
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def pytest_collection_modifyitems(config, items):
    """Browser tests need Debian's chromium and Playwright for Python (`make test` installs both)."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("playwright for Python (pip install -e '.[ui]')")
    if missing:
        skip = pytest.mark.skip(reason="browser tests need " + " and ".join(missing))
        for item in items:
            if "tests/ui/" in str(item.fspath).replace("\\", "/"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def lab(artifacts):
    server = Lab()
    yield server
    left = server.stop(save_log_to=artifacts / "server.log")
    assert not left, f"processes of the JupyterLab server outlived it and were killed: {left}"


@pytest.fixture(scope="session")
def browser(artifacts):
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="frugal-chromium-")   # a fresh user-data-dir for every session
    pw = sync_playwright().start()
    try:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
        context.set_default_timeout(30_000)
    except BaseException:
        pw.stop()
        shutil.rmtree(profile, ignore_errors=True)
        raise
    yield context
    try:
        context.close()
    finally:
        pw.stop()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def timings(artifacts):
    record = {}
    yield record
    (artifacts / "timings.json").write_text(json.dumps(record, indent=1))


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=[n.removesuffix(".ipynb") for n in NOTEBOOKS])
def notebook(request, lab, browser, artifacts, timings):
    """The notebook opened in JupyterLab with all its cells run through the Run menu."""
    name = request.param
    page = browser.new_page()
    nb = NotebookPage(page, lab, name)
    start = time.monotonic()
    try:
        nb.open()
        nb.run_all()
        timings[name] = {"run_all_s": round(time.monotonic() - start, 1)}
        yield nb
    finally:
        try:                                           # after its tests: the dashboards as they were left
            nb.screenshot(artifacts / f"{name.removesuffix('.ipynb')}.png")
        finally:
            try:
                nb.shutdown()                          # free the kernel's memory before the next notebook
            finally:
                page.close()
        timings.setdefault(name, {})["total_s"] = round(time.monotonic() - start, 1)
