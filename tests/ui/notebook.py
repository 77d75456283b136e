"""One notebook in JupyterLab, driven through the page as a person would: the Run menu, sliders, dropdowns, buttons."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .lab import Lab

# Per code cell of the rendered notebook: its prompt, errors shown inside its widgets, widget views, images.
# (A cell's own error outputs are read from the saved notebook: the page renders them as stderr, like any
# traceback a lesson prints on purpose. Inside a dashboard's Output, any traceback is an error.)
WIDGET_ERRORS_JS = """o => (o.textContent || '').includes('Traceback (most recent call last)')
      || (o.textContent || '').includes('Error displaying widget')"""
CELLS_JS = """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell.jp-CodeCell')].map(cell => {
  const outs = [...cell.querySelectorAll('.jp-OutputArea-output')];
  const inWidgets = [...cell.querySelectorAll('.jupyter-widgets .jp-OutputArea-output')];
  return {
    prompt: (cell.querySelector('.jp-InputPrompt') || {}).textContent || '',
    stderr: outs.filter(o => o.dataset.mimeType === 'application/vnd.jupyter.stderr').map(o => o.textContent).join('').slice(-3000),
    widget_errors: [...inWidgets.filter(""" + WIDGET_ERRORS_JS + """),
                    ...outs.filter(o => /Error displaying widget/.test(o.textContent || ''))].map(o => o.textContent.slice(-3000)),
    widgets: cell.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
    buttons: cell.querySelectorAll('.jupyter-widgets button').length,
    loading: outs.filter(o => /Loading widget/.test(o.textContent || '')).length,
    images: [...cell.querySelectorAll('.jp-OutputArea-output img')].filter(i => i.complete && i.naturalWidth > 0).length,
    widget_images: [...cell.querySelectorAll('.jupyter-widgets img')].filter(i => i.complete && i.naturalWidth > 0).length,
  };
})"""

# What a dashboard shows about work in progress: its progress bar's fill and status, and its controls.
BUSY_JS = """d => {
  const bar = d.querySelector('.widget-hprogress .progress-bar, .widget-progress .progress-bar');
  const line = bar ? bar.closest('.widget-hbox') : null;
  return {
    progress: bar ? parseFloat(bar.style.width) : null,
    status: line ? line.textContent.trim() : '',
    controls: [...d.querySelectorAll('button, select')].map(e => ({
      text: e.tagName === 'SELECT' ? (e.value || '') : e.textContent.trim(), disabled: e.disabled,
      button: e.tagName === 'BUTTON', clipped: e.tagName === 'BUTTON' && e.scrollWidth > e.clientWidth + 1})),
  };
}"""

# The top-level widget view of every cell output that holds an Output widget (where a dashboard draws its
# plots): the notebook's dashboards, whether or not their plot is there.
DASHBOARDS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output > .jupyter-widgets:has(.widget-output)"
WIDGET_CALL = re.compile(r"^(?!\s*#).*\bwidgets\.\w+\(", re.M)          # a cell that builds a dashboard
PLOT_DISPLAY = re.compile(r"^\s*(display\(\s*)?plots\.(?!human_bytes)\w+\(", re.M)  # a cell that shows a figure


def code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def expected(source: str) -> dict:
    """What a cell must show in the browser, read from its source: a widget with a plot, or a plot."""
    return {"dashboard": bool(WIDGET_CALL.search(source)), "plot": bool(PLOT_DISPLAY.search(source))}


@dataclass
class Op:
    """One thing a person does to a dashboard: `kind` is key (press `value` on a slider), drag (move a slider's
    handle by `value` pixels), pick (choose option `value` of a dropdown) or click (a button named `label`)."""
    kind: str
    label: str
    value: str | int | None = None


class NotebookPage:
    def __init__(self, page, lab: Lab, name: str):
        self.page, self.lab, self.name = page, lab, name
        self.console_errors: list[str] = []
        page.on("pageerror", lambda e: self.console_errors.append(str(e)))

    # ------------------------------------------------------------------ open and run
    def open(self, timeout_s: float = 120) -> None:
        self.page.goto(self.lab.notebook_url(self.name), timeout=timeout_s * 1000)
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=timeout_s * 1000)
        self._wait_kernel_idle(timeout_s)

    def _session(self) -> dict | None:
        for s in self.lab.api("/api/sessions"):
            if s["path"].endswith(self.name):
                return s
        return None

    def _wait_kernel_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s = self._session()
            if s and s["kernel"]["execution_state"] == "idle" and s["kernel"]["connections"] >= 1 and \
                    self.page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name}: the kernel did not become idle within {timeout_s:.0f} s")

    def sources(self) -> list[str]:
        return code_cells(self.lab.root / "notebooks" / self.name)

    def shutdown(self) -> None:
        """Stop this notebook's kernel (its session), so the next notebook gets the memory back."""
        s = self._session()
        if s is not None:
            self.lab.api(f"/api/sessions/{s['id']}", method="DELETE", timeout=30)

    def cells(self) -> list[dict]:
        return self.page.evaluate(CELLS_JS)

    def run_all(self, timeout_s: float = 300) -> None:
        """Run > Run All Cells, then wait until no cell is queued or running (all ran, or one failed)."""
        for attempt in range(3):                      # a click right after the kernel starts can be lost: retry
            self.page.get_by_role("menuitem", name="Run", exact=True).click()
            self.page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                    re.search(r"\[(\*|\d+)\]", c["prompt"]) for c in self.cells()):
                time.sleep(0.5)
            if any(re.search(r"\[(\*|\d+)\]", c["prompt"]) for c in self.cells()):
                break
        else:
            raise RuntimeError(f"{self.name}: Run All Cells started nothing (3 tries)")
        deadline, quiet = time.monotonic() + timeout_s, 0
        while quiet < 2:                              # twice in a row: nothing queued, the kernel idle
            running = [i for i, c in enumerate(self.cells()) if "*" in c["prompt"]]
            quiet = quiet + 1 if not running and self._session()["kernel"]["execution_state"] == "idle" else 0
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: code cells {running} still running after {timeout_s:.0f} s")
            time.sleep(0.5)
        self.wait_widgets()

    def saved_errors(self, timeout_s: float = 60) -> dict[int, str]:
        """Save the notebook (Ctrl+S, as a person would) and return its error outputs by code cell index,
        read from the file JupyterLab wrote: an error output there is an exception, not printed text."""
        self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Control+s")
        self.page.wait_for_selector(".lm-TabBar-tab.jp-mod-current:not(.jp-mod-dirty)", timeout=timeout_s * 1000)
        model = self.lab.api(f"/api/contents/notebooks/{self.name}?content=1")
        code = [c for c in model["content"]["cells"] if c["cell_type"] == "code"]
        ansi = re.compile(r"\x1b\[[0-9;]*m")
        return {i: ansi.sub("", "\n".join(o.get("traceback") or [f"{o.get('ename')}: {o.get('evalue')}"]))[-3000:]
                for i, c in enumerate(code) for o in c["outputs"] if o["output_type"] == "error"}

    def wait_widgets(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while any(c["loading"] for c in self.cells()) and time.monotonic() < deadline:
            time.sleep(0.5)

    # ------------------------------------------------------------------ dashboards
    def dashboards(self):
        return self.page.locator(DASHBOARDS)

    def images(self, dashboard) -> list[str]:
        return dashboard.locator("img").evaluate_all(
            "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.src)")

    def _control(self, dashboard, op: Op):
        if op.kind == "click":
            return dashboard.locator("button").filter(has_text=re.compile(rf"^\s*{re.escape(op.label)}\s*$")).first
        label = self.page.locator("label.widget-label").filter(has_text=re.compile(rf"^\s*{re.escape(op.label)}\s*$"))
        return dashboard.locator(".widget-inline-hbox").filter(has=label).first

    def _state(self, control, op: Op) -> str:
        if op.kind in ("key", "drag"):
            return control.locator(".noUi-handle").first.get_attribute("aria-valuenow") or ""
        if op.kind == "pick":
            return control.locator("select").input_value()
        return ""

    def operate(self, index: int, op: Op, timeout_s: float = 180) -> dict:
        """Do `op` on dashboard `index` and wait until its plot is redrawn; returns what changed."""
        dash = self.dashboards().nth(index)
        dash.scroll_into_view_if_needed()
        control = self._control(dash, op)
        control.scroll_into_view_if_needed()
        before_imgs, before_state = self.images(dash), self._state(control, op)
        if op.kind == "key":
            control.locator(".noUi-handle").first.press(str(op.value))
        elif op.kind == "drag":
            box = control.locator(".noUi-handle").first.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            self.page.mouse.move(x, y)
            self.page.mouse.down()
            self.page.mouse.move(x + int(op.value), y, steps=8)
            self.page.mouse.up()
        elif op.kind == "pick":
            control.locator("select").select_option(str(op.value))
        elif op.kind == "click":
            control.click()
        else:
            raise ValueError(f"unknown operation {op.kind!r}: use key, drag, pick or click")
        after_state = self._state(control, op)
        errors_js = f"os => os.filter({WIDGET_ERRORS_JS}).map(o => o.textContent.slice(-3000))"
        deadline = time.monotonic() + timeout_s
        while True:                                   # redrawn (new images, kernel idle, page settled) or failed
            imgs = self.images(dash)
            idle = self._session()["kernel"]["execution_state"] == "idle"
            errors = dash.locator(".jp-OutputArea-output").evaluate_all(errors_js)
            if idle and (errors or (imgs and imgs != before_imgs)):
                time.sleep(0.5)
                if self.images(dash) == imgs:
                    break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        errors = dash.locator(".jp-OutputArea-output").evaluate_all(errors_js)
        return {"state": (before_state, after_state), "changed": bool(imgs) and imgs != before_imgs,
                "n_images": (len(before_imgs), len(imgs)), "errors": errors}

    def watch_busy(self, index: int, op: Op, timeout_s: float = 300, every_s: float = 0.1) -> list[dict]:
        """Do `op` on dashboard `index` and sample what the page shows every `every_s` seconds until the work
        ends: each sample has the progress bar's fill (%), its status text, and every button and dropdown of
        the dashboard (text, disabled, clipped)."""
        dash = self.dashboards().nth(index)
        dash.scroll_into_view_if_needed()
        # some controls are greyed out on purpose (an fp16 scaler under bf16): busy is every control disabled,
        # done is each control back as it was before the change
        resting = [c["disabled"] for c in dash.evaluate(BUSY_JS)["controls"]]
        control = self._control(dash, op)
        if op.kind == "click":
            control.click()
        elif op.kind == "pick":
            control.locator("select").select_option(str(op.value))
        else:
            raise ValueError(f"watch_busy does {op.kind!r}? use click or pick (a run the dashboard starts)")
        samples, busy_seen, deadline = [], False, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s = dash.evaluate(BUSY_JS)
            samples.append(s)
            flags = [c["disabled"] for c in s["controls"]]
            busy_seen = busy_seen or (bool(flags) and all(flags))
            if busy_seen and flags == resting and self._session()["kernel"]["execution_state"] == "idle":
                break
            if not busy_seen and len(samples) * every_s > 20:   # the change never started a run
                break
            time.sleep(every_s)
        return samples

    # ------------------------------------------------------------------ evidence
    def screenshot(self, path: Path) -> None:
        """The viewport at the first dashboard (or wherever the notebook stopped)."""
        try:
            if self.dashboards().count():
                self.dashboards().first.scroll_into_view_if_needed(timeout=5000)
            self.page.screenshot(path=str(path), timeout=30_000)
        except Exception as e:                        # evidence is best effort; never hide the real failure
            path.with_suffix(".txt").write_text(f"no screenshot: {e}")
