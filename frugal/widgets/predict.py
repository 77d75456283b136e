"""A place to answer a prediction before the cell that measures it, and the guess shown beside the measurement.

    guess = predict.ask("Llama 2 70B on 2T tokens: how many FLOPs?", unit="FLOPs")   # a box to type into
    ...                                                                            # the cell that measures
    guess.reveal(llama_flops)   # your guess 1e+24 FLOPs, measured 8.4e+23 FLOPs: off by a factor 1.19 (too high)

A pick-one question: ask(q, choices=["yes", "no"]) then reveal("no"). With choices as {label: number},
reveal(number) names the label nearest the measured number. Built on Text and RadioButtons: ipywidgets 7.7 and 8.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

import ipywidgets as W

try:                                        # the notebook display; a Guess works without IPython
    from IPython import get_ipython
    from IPython.display import HTML, display
except ImportError:                         # pragma: no cover - IPython ships with Jupyter
    get_ipython = None

_NUMBER = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)(?:(?:\^|\*\*)([-+]?\d+(?:\.\d+)?))?(%?)$")


def _in_notebook() -> bool:
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def _fmt(x: float) -> str:
    """4, 0.203, 8.4e+23: short enough for one line."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e6 else f"{x:.3g}"


def parse_number(text: str, unit: str = "") -> float:
    """'8.4e23', '10^24', '2**20', '1,000', '25%' (= 0.25), optionally followed by the unit, as a float."""
    s = text.strip().lower()
    if unit and s.endswith(unit.lower()):
        s = s[:-len(unit)]
    s = s.replace(",", "").replace("_", "").replace(" ", "")
    m = _NUMBER.match(s)
    if not m:
        raise ValueError(f"could not read {text!r} as a number: type digits such as 8.4e23, 10^24, 0.25 or 25%")
    base, power, percent = m.groups()
    value = float(base) ** float(power) if power else float(base)
    return value / 100 if percent else value


@dataclass
class Reveal:
    """A guess beside what was measured: the message, and the factor (a number) or right/wrong (a choice)."""
    question: str
    guess: float | str | None        # None: nothing entered (or nothing readable)
    measured: float | str
    message: str
    factor: float | None = None      # max(guess/measured, measured/guess) for a number; None otherwise
    correct: bool | None = None      # for a choice; None for a number
    _shown: bool = False

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        colour = "#57606a" if self.guess is None else "#1a7f37" if self.correct or (
            self.factor is not None and self.factor < 1.25) else "#9a6700"
        return f'<b style="color:{colour}">{html.escape(self.message)}</b>'

    def _ipython_display_(self) -> None:
        """Shown once: reveal() displays it, and a cell ending in reveal(...) does not show it again."""
        if not self._shown:
            self._shown = True
            display(HTML(self._repr_html_()))


class Guess:
    """The learner's answer to one question: a text box for a number, radio buttons for a choice."""

    def __init__(self, question: str, unit: str = "", choices=None):
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question={question!r}: pass the question as a non-empty string")
        if not isinstance(unit, str):
            raise TypeError(f"unit={unit!r}: pass a string such as 'FLOPs' or '' for a plain number")
        if choices is not None:
            if isinstance(choices, dict):
                bad = [k for k, v in choices.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
                if bad:
                    raise TypeError(f"choices={choices!r}: with a dict every value must be a number "
                                    f"(the one its label stands for), not {bad[0]!r}'s")
            elif isinstance(choices, (str, bytes)) or not all(isinstance(c, str) for c in choices):
                raise TypeError(f"choices={choices!r}: pass a list of labels, e.g. ['yes', 'no'], "
                                f"or a dict of label -> number")
            if len(choices) < 2 or len(set(choices)) != len(choices):
                raise ValueError(f"choices={list(choices)!r}: give at least two different labels")
        self.question, self.unit = question, unit
        self.choices = dict(choices) if isinstance(choices, dict) else list(choices) if choices else None
        if self.choices is None:
            self.box = W.Text(value="", placeholder="a number: 4, 0.3, 25%, 1e24" if not unit else f"a number of {unit}",
                              layout=W.Layout(width="16em"))
        else:
            self.box = W.RadioButtons(options=list(self.choices), index=None)
        answer = [self.box] + ([W.Label(unit)] if unit and self.choices is None else [])
        self.widget = W.VBox([W.HTML(f"<b>Your prediction:</b> {html.escape(question)}"), W.HBox(answer)])

    def __repr__(self) -> str:
        return f"Guess({self.question!r}, entered={self.text!r})"

    @property
    def text(self) -> str:
        """What is in the box now ('' when nothing is entered or chosen)."""
        value = self.box.value
        return "" if value is None else str(value)

    @property
    def value(self) -> float | str | None:
        """The guess: a float, a choice's label, or None when nothing is entered. Unreadable text raises ValueError."""
        if not self.text.strip():
            return None
        return self.text if self.choices is not None else parse_number(self.text, self.unit)

    @value.setter
    def value(self, answer) -> None:
        """Answer without the widget (a script, a test): guess.value = 1e24, or a choice's label."""
        if self.choices is not None and answer not in self.choices:
            raise ValueError(f"{answer!r} is not one of the choices {list(self.choices)}")
        self.box.value = answer if self.choices is not None else str(answer)

    def reveal(self, measured, label: str = "measured") -> Reveal:
        """Put the guess beside measured; for a choice, measured is the right label (or a number, for dict choices).

        label names where the number comes from ('counted', 'the estimator'): only a measurement is 'measured'."""
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"label={label!r}: say where the number comes from, e.g. 'measured' or 'the estimator'")
        if self.choices is None:
            result = self._reveal_number(_check_number(measured, "measured"), label)
        else:
            result = self._reveal_choice(measured, label)
        if _in_notebook():
            result._ipython_display_()
        return result

    def _reveal_number(self, measured: float, label: str) -> Reveal:
        unit = f" {self.unit}" if self.unit else ""
        seen = f"{label} {_fmt(measured)}{unit}"
        try:
            guess = self.value
        except ValueError as e:
            return Reveal(self.question, None, measured, f"{e}; {seen}")
        if guess is None:
            return Reveal(self.question, None, measured, f"no guess entered (type one in the box above and run this "
                                                         f"cell again); {seen}")
        head = f"your guess {_fmt(guess)}{unit}, {seen}: "
        if guess == measured:
            return Reveal(self.question, guess, measured, head + "exactly right", factor=1.0)
        if guess <= 0 or measured <= 0:        # no ratio between numbers of different sign or zero
            return Reveal(self.question, guess, measured, head + f"off by {_fmt(abs(guess - measured))}")
        factor = max(guess / measured, measured / guess)
        side = "too high" if guess > measured else "too low"
        if factor < 1.05:
            return Reveal(self.question, guess, measured, head + f"within 5% ({side})", factor=factor)
        decades = f", {math.log10(factor):.1f} powers of ten" if factor >= 10 else ""
        return Reveal(self.question, guess, measured, head + f"off by a factor {factor:.3g} ({side}{decades})",
                      factor=factor)

    def _reveal_choice(self, measured, label: str) -> Reveal:
        if isinstance(self.choices, dict):
            number = _check_number(measured, "measured")
            right = min(self.choices, key=lambda label: _distance(self.choices[label], number))
            seen = f"{label} {_fmt(number)} ({right})"
        else:
            if measured not in self.choices:
                raise ValueError(f"measured={measured!r}: pass the right answer, one of {self.choices}")
            right, seen = measured, f"the answer {measured!r}"
        guess = self.value
        if guess is None:
            return Reveal(self.question, None, measured, f"no answer chosen (pick one above and run this cell "
                                                         f"again); {seen}")
        correct = guess == right
        return Reveal(self.question, guess, measured, f"your answer {guess!r}, {seen}: "
                                                      f"{'right' if correct else 'wrong'}", correct=correct)


def _check_number(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) and not hasattr(x, "__float__"):
        raise TypeError(f"{name}={x!r}: pass the measured number (a float, or a 0-d tensor's .item())")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name}={x}: the measurement is not finite, so there is nothing to compare the guess with")
    return x


def _distance(a: float, b: float) -> float:
    """How far two numbers are apart: as a ratio when both are positive, else as a difference."""
    return abs(math.log(a / b)) if a > 0 and b > 0 else abs(a - b)


def ask(question: str, unit: str = "", choices=None) -> Guess:
    """Show a box for the learner's guess (radio buttons for choices) and return the Guess; reveal it later."""
    guess = Guess(question, unit, choices)
    if _in_notebook():
        display(guess.widget)
    return guess
