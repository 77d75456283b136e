"""The browser checks can fail: the harness itself, on a notebook made to fail."""
import re

from .notebook import NotebookPage, Op

DASHBOARD = '''import ipywidgets as W
import matplotlib.pyplot as plt
from IPython.display import display

def draw(v):
    if v > 1:
        raise ValueError("the canary's dashboard fails when moved")
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, v])
    display(fig)
    plt.close(fig)

v = W.IntSlider(value=1, min=0, max=3, description="v", continuous_update=False)
W.VBox([v, W.interactive_output(draw, {"v": v})])'''


PRINTED_TRACEBACK = '''import sys
print("Traceback (most recent call last):\\n  a lesson may print one on purpose, and that is no error", file=sys.stderr)'''


def test_harness_sees_a_failing_cell_and_a_failing_dashboard(lab, browser):
    """A notebook whose fourth cell raises shows that error and never runs the fifth, while a traceback printed
    on purpose is no error; a dashboard whose
    draw raises when its slider moves shows the error and no redrawn plot."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(DASHBOARD), nbformat.v4.new_code_cell(PRINTED_TRACEBACK),
                nbformat.v4.new_code_cell("print('first')"), nbformat.v4.new_code_cell("1 / 0"),
                nbformat.v4.new_code_cell("print('never')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, lab.root / "notebooks" / "zz_canary.ipynb")
    page = browser.new_page()
    canary = NotebookPage(page, lab, "zz_canary.ipynb")
    try:
        canary.open()
        canary.run_all(timeout_s=120)
        cells, errors = canary.cells(), canary.saved_errors()
        assert cells[0]["widget_images"] and not cells[0]["widget_errors"] and set(errors) == {3}
        assert "ZeroDivisionError" in errors[3] and "Traceback" in cells[1]["stderr"]
        assert not re.search(r"\[\d+\]", cells[4]["prompt"])
        result = canary.operate(0, Op("key", "v", "ArrowRight"), timeout_s=60)
        assert result["state"] == ("1.0", "2.0") and not result["changed"]
        assert "the canary's dashboard fails when moved" in "".join(result["errors"])
    finally:
        canary.shutdown()
        page.close()
