"""What the learner writes in each lesson, and the checks that compare it with PyTorch's own version.

    from frugal import exercises
    exercises.names()                          # every exercise, in lesson order
    exercises.check("training_flops", training_flops)   # a CheckResult; in a notebook it shows itself
    exercises.hint("training_flops", level=2)  # 1 to 3, each more concrete
    exercises.solution("training_flops")       # the reference; exercises.source(name) shows its code

A check never raises for what the candidate does (a stub reports "not done yet"); only misuse raises.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Callable

from frugal.exercises._core import CheckResult, Code, Exercise, Text, in_notebook, run_check

__all__ = ["CheckResult", "names", "lesson_of", "check", "hint", "solution", "source", "signature"]

# One module per lesson group, in lesson order. They are imported on first use, not with the package: a rank that
# frugal.dist.launch spawns for the ring check imports frugal.exercises.parallel alone, and starts that much sooner.
MODULES = ("economics", "precision", "fp8", "recompute", "parallel", "sharding", "kernels", "recipe")


@functools.cache
def _registry() -> dict[str, Exercise]:
    modules = [importlib.import_module(f"frugal.exercises.{m}") for m in MODULES]
    return {ex.name: ex for module in modules for ex in module.EXERCISES}


def names() -> list[str]:
    """Every exercise's name, in lesson order."""
    return list(_registry())


def _get(name: str) -> Exercise:
    if name not in _registry():
        raise ValueError(f"no exercise named {name!r}: pick one of {', '.join(_registry())}")
    return _registry()[name]


def lesson_of(name: str) -> str:
    """The notebook an exercise belongs to, e.g. '00_gpu_economics'."""
    return _get(name).lesson


def signature(name: str) -> str:
    """What the learner writes, e.g. 'training_flops(n_params, n_tokens) -> float'."""
    return _get(name).signature


def check(name: str, candidate: Callable) -> CheckResult:
    """Compare candidate with the reference on awkward inputs; in a notebook the result also shows itself."""
    exercise = _get(name)
    if not callable(candidate):
        raise TypeError(f"check({name!r}, candidate): candidate must be your function, got "
                        f"{type(candidate).__name__}; pass the function itself, e.g. check({name!r}, {name})")
    result = run_check(name, exercise.checker, candidate)
    if in_notebook():
        result._ipython_display_()
    return result


def hint(name: str, level: int = 1) -> Text:
    """A hint for an exercise: level 1 a nudge, 2 the method, 3 nearly the code."""
    hints = _get(name).hints
    if level not in (1, 2, 3):
        raise ValueError(f"level={level!r}: pick 1 (a nudge), 2 (the method) or 3 (nearly the code)")
    return Text(f"**{name}, hint {level} of 3:** {hints[level - 1]}")


def solution(name: str) -> Callable:
    """The reference solution: a function with the candidate's signature (for a Triton kernel, the kernel)."""
    ref = _get(name).solution
    if isinstance(ref, str):                      # imported only when asked (Triton is optional)
        module, attr = ref.split(":")
        ref = getattr(importlib.import_module(module), attr)
    return ref


def source(name: str) -> Code:
    """The reference solution's source, with the imports a notebook cell needs above it: ready to paste."""
    ref = solution(name)
    code = inspect.getsource(getattr(ref, "fn", ref))     # a Triton kernel keeps its Python function in .fn
    needs = _get(name).needs
    return Code(f"{needs}\n\n\n{code}" if needs else code)
