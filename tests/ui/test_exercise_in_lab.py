"""A learner's exercise in a real JupyterLab: lesson 01's round_to_bf16 stub reports "not done yet"; with the
solution typed into its cell and the cell and its check run (Shift+Enter, as a person would), the pass line shows.
Then a prediction: a guess typed into its box is put beside the measurement by the cell that measures."""
from __future__ import annotations

import re
import time

from frugal import exercises

from .notebook import NotebookPage

NAME = "01_mixed_precision.ipynb"
CODE_CELLS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell.jp-CodeCell"


def _cell(page, text: str):
    """The code cell whose source holds text."""
    cell = page.locator(CODE_CELLS).filter(has=page.locator(".jp-InputArea", has_text=text))
    assert cell.count() == 1, f"{cell.count()} code cells hold {text!r}"
    return cell.first


def _run(nb: NotebookPage, cell, timeout_s: float = 120) -> None:
    """Click into the cell's editor and press Shift+Enter; wait until the kernel is idle again."""
    cell.scroll_into_view_if_needed()
    cell.locator(".cm-content").click()
    nb.page.keyboard.press("Shift+Enter")
    deadline = time.monotonic() + timeout_s
    time.sleep(0.5)
    while not re.search(r"\[\d+\]", cell.locator(".jp-InputPrompt").first.inner_text()) or \
            nb._session()["kernel"]["execution_state"] != "idle":
        assert time.monotonic() < deadline, f"the cell did not finish within {timeout_s:.0f} s"
        time.sleep(0.5)


def _shown(cell) -> str:
    return "\n".join(cell.locator(".jp-OutputArea-output").all_inner_texts())


def test_typing_the_solution_into_the_exercise_cell_passes_its_check(lab, browser, artifacts):
    page = browser.new_page()
    nb = NotebookPage(page, lab, NAME)
    try:
        nb.open()
        _run(nb, _cell(page, "from frugal import device, estimate, exercises"))   # the lesson's imports
        stub, check = _cell(page, "def round_to_bf16(x):"), _cell(page, 'exercises.check("round_to_bf16"')
        _run(nb, stub)
        _run(nb, check)
        assert "round_to_bf16: not done yet" in _shown(check), _shown(check)

        stub.locator(".cm-content").click()
        page.keyboard.press("Control+a")                     # the stub's text, replaced by what the learner types
        page.keyboard.insert_text(str(exercises.source("round_to_bf16")))
        assert "raise NotImplementedError" not in stub.locator(".cm-content").inner_text()
        _run(nb, stub)
        _run(nb, check)
        shown = _shown(check)
        assert "✓ round_to_bf16: passed" in shown and "✗" not in shown and "not done" not in shown, shown
        check.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "01_exercise_round_to_bf16.png"))

        _run(nb, _cell(page, "for f in table.values():"))   # the formats the measuring cell plots
        ask = _cell(page, "underflow_guess = predict.ask(")  # a prediction: type a guess, then measure
        _run(nb, ask)
        box = ask.locator(".jupyter-widgets input[type='text']")
        box.fill("0.5")
        box.press("Tab")                                     # the value reaches the kernel before the next cell
        measure = _cell(page, "underflow_guess.reveal(")
        _run(nb, measure)
        shown = _shown(measure)
        assert re.search(r"your guess 0\.5, counted [\d.e+-]+: off by a factor", shown), shown
        assert "Traceback" not in shown and measure.locator(".jp-OutputArea-output img").count(), shown
        measure.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "01_prediction_revealed.png"))
    finally:
        try:
            nb.shutdown()
        finally:
            page.close()
