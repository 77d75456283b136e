"""Every notebook in a real JupyterLab in headless Chromium: Run All, then look at what a learner sees, and move
the dashboards' controls as a learner would."""
from __future__ import annotations

import json
import re

import pytest

from .notebook import BUSY_JS, NotebookPage, Op, expected

# What a person does to each dashboard (notebook -> [(dashboard index, Op)]). A dashboard listed nowhere
# gets its first slider nudged one step with the arrow key; every dashboard is operated at least once.
OPS = {
    "00_gpu_economics.ipynb": [
        (0, Op("pick", "sequence", "8192")),         # cost calculator: a longer sequence, taller activation bars
        (0, Op("key", "GPUs", "ArrowRight")),        # 64 -> 128 GPUs: the ZeRO shards shrink
        (0, Op("pick", "GPU", "T4")),                # another GPU: its bar and its memory line turn red
        (1, Op("drag", "batch", 60)),                # activation meter: drag the batch up on the live TinyGPT
    ],
    "01_mixed_precision.ipynb": [
        (0, Op("pick", "format", "bf16")),           # format explorer: the same |x| in bf16
        (1, Op("pick", "precision", "bf16")),        # precision dashboard: trains the live TinyGPT in bf16
    ],
    "02_activation_checkpointing.ipynb": [
        (0, Op("drag", "checkpointed blocks", 80)),  # checkpoint more blocks of the live model, count again
        (1, Op("pick", "activations", "fp32")),      # largest batch: fp32 activations halve it
    ],
    "03_data_parallel.ipynb": [
        (0, Op("pick", "flavour", "naive")),         # data-parallel trainer: 2 gloo ranks, naive all-reduce
    ],
    "04_sharding.ipynb": [
        (0, Op("pick", "precision", "fp32")),        # sharding explorer: fp32 Adam instead of mixed precision
        (0, Op("pick", "stage", "DP")),              # stage 3 -> DP: the highlighted plan moves in both plots
        (1, Op("click", "train and count")),         # live sharding: train on gloo ranks, count the bytes
    ],
    "05_model_parallel.ipynb": [
        (0, Op("pick", "schedule", "1f1b")),         # pipeline explorer: the measured 1F1B run
        (1, Op("key", "dp", "ArrowRight")),          # layout explorer: dp 1 -> 2
    ],
    "06_triton_kernels.ipynb": [
        (0, Op("key", "BLOCK_SIZE", "ArrowLeft")),   # vector add: half the block, twice the programs
        (1, Op("pick", "n_embd", "1024")),           # fused cross-entropy: a wider model
    ],
    "07_frugal_recipe.ipynb": [
        (0, Op("pick", "recompute", "none")),        # recipe dashboard: train again without recomputation
    ],
}


def _where(cells, i):
    return f"code cell {i} (prompt {cells[i]['prompt'].strip()})"


def test_notebook_runs_clean_and_shows_its_widgets_and_plots(notebook):
    cells = notebook.cells()
    sources = notebook.sources()
    assert len(cells) == len(sources), f"{len(cells)} code cells rendered, {len(sources)} in the file"
    errors = [f"{_where(cells, i)}:\n{e}" for i, e in notebook.saved_errors().items()]
    errors += [f"{_where(cells, i)}, in a widget:\n{e}" for i, c in enumerate(cells) for e in c["widget_errors"]]
    assert not errors, "error output in the browser:\n" + "\n".join(errors)
    not_run = [i for i, c in enumerate(cells) if not re.search(r"\[\d+\]", c["prompt"])]
    assert not not_run, f"code cells {not_run} did not run"
    for i, (cell, source) in enumerate(zip(cells, sources)):
        want = expected(source)
        if want["dashboard"]:
            assert cell["widgets"] and not cell["loading"], f"{_where(cells, i)}: its widget did not render"
            assert cell["widget_images"] or cell["buttons"], f"{_where(cells, i)}: its dashboard shows no plot"
        if want["plot"]:
            assert cell["images"], f"{_where(cells, i)}: its plot is missing"
    assert sum(c["images"] for c in cells), "the notebook shows no plot at all"
    assert notebook.dashboards().count() >= sum(expected(s)["dashboard"] for s in sources)
    assert not notebook.console_errors, f"JavaScript errors on the page: {notebook.console_errors}"


def _plan(notebook: NotebookPage) -> list[tuple[int, Op]]:
    plan = list(OPS.get(notebook.name, []))
    for i in range(notebook.dashboards().count()):
        if not any(j == i for j, _ in plan):
            labels = notebook.dashboards().nth(i).locator(".widget-slider label.widget-label").all_inner_texts()
            assert labels, f"dashboard {i} has no slider: say in OPS how a person operates it"
            plan.append((i, Op("key", labels[0].strip(), "ArrowRight")))
    return plan


def test_dashboards_redraw_when_a_person_moves_their_controls(notebook, timings):
    if not notebook.dashboards().count():
        pytest.skip(f"{notebook.name} has no dashboard")
    done = []
    for index, op in _plan(notebook):
        result = notebook.operate(index, op)
        done.append({"dashboard": index, "op": vars(op), **result})
        assert not result["errors"], f"dashboard {index} after {op}: error output\n{result['errors']}"
        if op.kind != "click":
            assert result["state"][0] != result["state"][1], f"dashboard {index}: {op} did not move the control"
        assert result["changed"], f"dashboard {index}: {op} did not redraw the plot ({result})"
    timings.setdefault(notebook.name, {})["operations"] = json.loads(json.dumps(done, default=str))


# The dashboards that train when a control moves: (dashboard index, the control). Busy feedback is checked on
# screen: the controls disabled while the run goes, a button saying what it does without being clipped, the
# bar filling as the work reports (steps, ranks) and the controls back afterwards.
RETRAIN = {
    "03_data_parallel.ipynb": (0, Op("pick", "flavour")),
    "04_sharding.ipynb": (1, Op("click", "train and count")),
    "07_frugal_recipe.ipynb": (0, Op("pick", "recompute")),
}


def test_a_retrain_shows_it_is_busy_and_its_bar_fills_with_the_work(notebook, artifacts):
    if notebook.name not in RETRAIN:
        pytest.skip(f"{notebook.name} has no dashboard that retrains")
    index, op = RETRAIN[notebook.name]
    if op.kind == "pick":                             # another option than the one shown, whatever ran before
        select = notebook._control(notebook.dashboards().nth(index), op).locator("select")
        options = select.locator("option").evaluate_all("os => os.map(o => o.value)")
        op = Op("pick", op.label, next(o for o in options if o != select.input_value()))
    before = notebook.dashboards().nth(index).evaluate(BUSY_JS)
    samples = notebook.watch_busy(index, op)
    busy = [s for s in samples if s["controls"] and all(c["disabled"] for c in s["controls"])]
    assert busy, f"{notebook.name}: the controls were never disabled while it trained ({samples[-3:]})"
    for s in busy:
        for c in s["controls"]:
            assert not c["clipped"], f"a busy button's text is clipped: {c['text']!r}"
            assert not c["button"] or c["text"].endswith("…"), f"a busy button says {c['text']!r}"
    fills = [s["progress"] for s in busy]
    assert fills == sorted(fills), f"the bar went back while it trained: {fills}"
    assert any(0 < f < 100 for f in fills), f"the bar never stood between empty and full: {fills}"
    assert any(" of " in s["status"] for s in busy), f"no 'k of n' status while busy: {busy[-1]['status']}"
    end = samples[-1]
    assert [c["disabled"] for c in end["controls"]] == [c["disabled"] for c in before["controls"]] and \
        end["progress"] == 100, end                                        # every control back as it was
    assert "done in" in end["status"], end["status"]
    assert [c["text"] for c in end["controls"] if c["button"]] == \
        [c["text"] for c in before["controls"] if c["button"]]             # the button's own name is back
    (artifacts / f"{notebook.name[:2]}_busy.json").write_text(json.dumps(samples[::max(1, len(samples) // 40)]))
