"""What every exercise shares: the CheckResult a check returns, the Exercise record, and how a candidate is run.

A checker is a function of the candidate that returns a short note on success and raises `Mismatch` (what
differs, on which input, expected vs got, a hint) on the first thing that is wrong. `run_check` turns that
into a CheckResult, so a learner's unfinished or broken function never raises out of `check`.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable

try:                                        # the notebook display; frugal works without IPython
    from IPython import get_ipython
    from IPython.display import HTML, display
except ImportError:                         # pragma: no cover - IPython ships with Jupyter
    get_ipython = None

NOT_DONE = "not done yet"


class Text(str):
    """A string that a notebook shows as Markdown (hints, sources) instead of a quoted repr."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        return str(self)


class Code(Text):
    """Python source that a notebook shows as a code block; str() of it is the code, ready to paste."""

    def _repr_markdown_(self) -> str:
        return f"```python\n{self}```"


class NotDone(Exception):
    """The candidate raised NotImplementedError: it is still the stub."""


class Skip(Exception):
    """The check cannot run here (e.g. no Triton); the message says what to install."""


class Mismatch(Exception):
    """What differs between the candidate and the reference, on the first input where they part."""

    def __init__(self, what: str, input: str | None = None, expected: str | None = None,
                 got: str | None = None, hint: str | None = None):
        super().__init__(what)
        self.what, self.input, self.expected, self.got, self.hint = what, input, expected, got, hint


def attempt(fn: Callable, *args, input: str | None = None, **kwargs):
    """fn(*args, **kwargs); NotImplementedError becomes NotDone, any other exception a Mismatch naming it."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotDone() from None
    except Exception as e:  # noqa: BLE001 - the learner's exception is reported, never raised
        if isinstance(e.__cause__, NotImplementedError):    # Triton's interpreter wraps the stub's raise
            raise NotDone() from None
        raise Mismatch(f"it raised {type(e).__name__}: {e}", input=input,
                       hint="run it on this input in a cell of its own to see the traceback") from None


def expect(ok: bool, what: str, **detail) -> None:
    """Raise Mismatch(what, **detail) unless ok."""
    if not ok:
        raise Mismatch(what, **detail)


@dataclass
class CheckResult:
    """What check(name, candidate) found: passed or not, and a message that says what differs."""
    name: str
    passed: bool
    message: str
    input: str | None = None         # the input where the candidate first differs
    expected: str | None = None
    got: str | None = None
    hint: str | None = None
    not_done: bool = False           # the candidate is still the stub (raises NotImplementedError)
    skipped: bool = False            # the check could not run on this machine (passed stays False)
    _shown: bool = False             # already displayed in this notebook cell

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#9a6700" if self.not_done or self.skipped else "#cf222e"
        lines = self.message.splitlines()
        head = f'<b style="color:{colour}">{html.escape(lines[0])}</b>'
        rows = "".join(f"<tr><td style='text-align:left'><pre style='margin:0'>{html.escape(line)}</pre></td></tr>"
                       for line in lines[1:])
        return head + (f"<table>{rows}</table>" if rows else "")

    def _ipython_display_(self) -> None:
        """Shown once: check() displays it, and a cell ending in check(...) does not show it again."""
        if not self._shown:
            self._shown = True
            display(HTML(self._repr_html_()))


def _message(name: str, m: Mismatch) -> str:
    lines = [f"✗ {name}: {m.what}"]
    for label, value in (("input", m.input), ("expected", m.expected), ("got", m.got), ("hint", m.hint)):
        if value is not None:
            lines.append(f"  {label + ':':9} {value}")
    return "\n".join(lines)


def run_check(name: str, checker: Callable, candidate: Callable) -> CheckResult:
    """Run checker(candidate) and report, never raising for what the candidate does."""
    try:
        note = checker(candidate)
    except NotDone:
        return CheckResult(name, False, f"… {name}: {NOT_DONE}: it raises NotImplementedError. Write its body, run "
                                        f"the cell, then check again (exercises.hint({name!r}) helps).", not_done=True)
    except Skip as e:
        return CheckResult(name, False, f"– {name}: skipped: {e}", skipped=True)
    except Mismatch as m:
        return CheckResult(name, False, _message(name, m), m.input, m.expected, m.got, m.hint)
    except Exception as e:  # noqa: BLE001 - a result of the wrong kind breaks the comparison: say so
        m = Mismatch(f"its result could not be checked ({type(e).__name__}: {e})",
                     hint="compare what it returns with the signature in the exercise")
        return CheckResult(name, False, _message(name, m), hint=m.hint)
    return CheckResult(name, True, f"✓ {name}: passed" + (f" ({note})" if note else ""))


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a result displays itself as HTML)."""
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


@dataclass(frozen=True)
class Exercise:
    """One thing the learner writes: its lesson, signature, checker, reference solution and three hints."""
    name: str
    lesson: str                      # the notebook, e.g. '00_gpu_economics'
    signature: str                   # what the learner writes, e.g. 'training_flops(n_params, n_tokens) -> float'
    checker: Callable                # checker(candidate) -> note; raises Mismatch / NotDone
    solution: Callable | str         # the reference, same signature as the candidate; 'module:name' = import it
                                     # when asked (a Triton kernel: importing Triton is left to the lesson)
    hints: tuple[str, str, str]      # level 1 (a nudge) to 3 (nearly the code)
    needs: str = "import torch"      # the imports a notebook cell needs above the solution's source


def fmt(x) -> str:
    """A number short enough for a message: 6.0e+21, 16, 0.5."""
    if isinstance(x, float):
        return f"{x:.6g}"
    return repr(x)
