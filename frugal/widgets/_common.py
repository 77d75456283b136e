"""What every dashboard shares: controls above an Output that redraws, a log-scale slider, and a progress
line that disables the controls while slow work runs.

Built on interactive_output with the inline backend, so the dashboards work on ipywidgets 7.7 (Colab) and 8.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

import ipywidgets as W

from frugal.units import human_count, human_time


class Progress:
    """A bar and a status line: while work runs the controls are disabled (a button says what it is doing)
    and the bar advances with each step() the work reports; afterwards it says how long it took."""

    def __init__(self, controls: list):
        self.controls = list(controls)
        self.bar = W.IntProgress(value=0, min=0, max=1, description="idle", style={"description_width": "initial"})
        self.status = W.Label(value="")
        self.widget = W.HBox([self.bar, self.status])

    @contextmanager
    def running(self, what: str, total: int):
        """Disable the controls and count `total` steps of `what`; restore them even if the work raises."""
        # the bar empties before any control shows busy, so the page never shows a busy dashboard with the
        # last run's full bar (widget messages reach the browser in the order they are set)
        self.bar.value = 0
        self.bar.max, self.bar.bar_style = max(int(total), 1), "info"
        self.bar.description, self.status.value = what, f"0 of {total}"
        saved = [(c, c.disabled, c.description) for c in self.controls]
        for c in self.controls:
            c.disabled = True
            if isinstance(c, W.Button):                  # its first word fits the button: "training…"
                c.description = f"{what.split()[0]}…"
        t0 = time.perf_counter()
        try:
            yield self
            self.bar.value, self.bar.bar_style = self.bar.max, "success"
            self.status.value = f"done in {human_time(time.perf_counter() - t0)}"
        except BaseException:
            self.bar.bar_style, self.status.value = "danger", "failed: see the message below"
            raise
        finally:
            for c, disabled, description in saved:
                c.disabled, c.description = disabled, description

    def step(self, note: str = "") -> None:
        """One unit of the work is done (a rank joined, a run finished): advance the bar."""
        self.bar.value = min(self.bar.value + 1, self.bar.max)
        self.status.value = f"{self.bar.value} of {self.bar.max}" + (f": {note}" if note else "")

    def on_report(self, rank: int, message) -> None:
        """dist.launch's on_report: every rank's 'joined', report() and 'done' moves the bar one step
        (('step', k) from a training rank: it ended step k)."""
        if isinstance(message, tuple) and len(message) == 2 and message[0] == "step":
            self.step(f"rank {rank} ended step {message[1]}")
        else:
            self.step(f"rank {rank} {message if isinstance(message, str) else 'finished ' + str(message)}")


def _dashboard(controls: dict, draw, columns: int = 2, progress: Progress | None = None) -> W.Widget:
    """Controls above an Output that re-runs draw(**values) whenever one changes (and a progress line, if given)."""
    out = W.interactive_output(draw, controls)
    items = list(controls.values())
    rows = [W.HBox(items[i:i + columns]) for i in range(0, len(items), columns)]
    return W.VBox([*rows, *([progress.widget] if progress else []), out])


def _enabled_when(controls: dict, names: tuple[str, ...], on: str, test) -> None:
    """Grey out controls[name] for each name unless test(controls[on].value), following every change of
    controls[on]: a control that would change nothing (an fp16 scaler under bf16) shows it cannot."""
    def follow(_=None):
        for name in names:
            controls[name].disabled = not test(controls[on].value)

    controls[on].observe(follow, names="value")
    follow()


def _one_two_five(lo: float, hi: float) -> list[float]:
    """1, 2, 5 times each power of ten from lo to hi (both kept): the steps a person reads a log scale by."""
    out, k = [], math.floor(math.log10(lo))
    while 10.0 ** k <= hi:
        out += [float(f"{m}e{k}") for m in (1, 2, 5) if lo <= m * 10.0 ** k <= hi]
        k += 1
    return sorted(set(out) | {lo, hi})


def _powers_of_two_slider(description: str, value: int, largest: int) -> W.SelectionSlider:
    """A count (GPUs, ranks) on 1, 2, 4 ... largest, and `value`: 8 is one step from 4, not 0.2% of a 1..4096 travel."""
    options = sorted({2 ** k for k in range(largest.bit_length())} | {int(value)})
    return W.SelectionSlider(options=options, value=int(value), description=description, continuous_update=False)


def _log_slider(description: str, value: float, lo: float, hi: float, label=human_count) -> W.SelectionSlider:
    """A slider over lo..hi in 1-2-5 steps (and `value`), each shown as label(v): '7 billion', not '7.00e+9'."""
    values = sorted(set(_one_two_five(lo, hi)) | {float(value)})
    return W.SelectionSlider(options=[(label(v), v) for v in values], value=float(value), description=description,
                             continuous_update=False, style={"description_width": "initial"})
