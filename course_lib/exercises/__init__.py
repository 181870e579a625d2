"""The course's exercises: one module per notebook (``nb01``, ...), with checks and reference solutions.

Every exercise has a *feedback* function, which judges an answer and returns a
:class:`Feedback` (easy to test), and a *check* function, which prints that
feedback in the notebook. An answer left at ``None`` is "not attempted yet",
never wrong.

The worked solutions are not in the notebooks: each notebook's module has a ``solution(number, ...)``
function that shows one (its reasoning, the reference code, and the check passing on it) only when
the learner runs it (:class:`Solution`, :func:`show_solution`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Status = Literal["not attempted", "wrong", "correct"]


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer.

    Attributes:
        status: "not attempted" (the answer is still None), "wrong" or "correct".
        message: what the learner reads: what is wrong and a hint, or "Correct!".
    """

    status: Status
    message: str

    @property
    def correct(self) -> bool:
        """True for a right answer."""
        return self.status == "correct"

    def __str__(self) -> str:
        return self.message


def not_attempted(what: str) -> Feedback:
    """Feedback for an answer left at None; ``what`` says what to write."""
    return Feedback("not attempted", f"Not attempted yet: {what}")


def wrong(explanation: str) -> Feedback:
    """Feedback for a wrong answer, with an explanation of what is wrong."""
    return Feedback("wrong", f"Not quite: {explanation}")


def correct(comment: str = "") -> Feedback:
    """Feedback for a right answer, optionally followed by a comment."""
    return Feedback("correct", "Correct!" + (f" {comment}" if comment else ""))


def within_one_percent(answer: float, value: float) -> bool:
    """Whether a numeric ``answer`` lies within 1 % of ``value``: how the checks accept estimates and spot slips."""
    return abs(answer - value) <= 0.01 * abs(value)


def judge_formula(
    answer: object,
    call: str,
    what: str,
    reference: Callable[..., int],
    cases: Sequence[tuple[int, ...]],
    compiled: Mapping[tuple[int, ...], int] | None = None,
    slips: Callable[[int, int, tuple[int, ...]], str | None] = lambda got, expected, case: None,
    hint: str = "",
    praise: str = "",
    counted_by: str = "the compiler counts",
) -> Feedback:
    """Judge a learner's formula ``answer``, a function such as ``pbs(T, head_dim)`` (``call``) returning
    ``what``, against the ``reference`` function, case by case.

    First the reference itself is checked against the compiler's counts in ``compiled`` (a mapping from
    arguments to count): a disagreement is the course's bug, not the learner's, and raises
    ``RuntimeError``. Then, for each of ``cases`` in turn, the answer must return a whole number equal to
    the reference. At the first case where it differs, ``slips(got, expected, case)`` may name a usual
    slip; otherwise the message gives both counts (the reference's introduced by ``counted_by``), followed by
    ``hint``. An exception raised by the
    answer is feedback, never a crash.
    """
    name = call.split("(")[0]
    if answer is None:
        return not_attempted(f"define `{call}` returning {what}.")
    if not callable(answer):
        return wrong(f"`{name}` must be a function of ({call.split('(', 1)[1]}, got {type(answer).__name__}.")
    for case, count in (compiled or {}).items():
        if reference(*case) != count:
            raise RuntimeError(f"the reference formula disagrees with the compiler at {case}")
    for case in cases:
        try:
            got = answer(*case)
        except Exception as error:  # the learner's error is feedback, not a crash
            return wrong(f"{name}{case} raised {type(error).__name__}: {error}")
        is_number = isinstance(got, int | np.integer | float | np.floating) and not isinstance(got, bool)
        if not is_number or not np.isfinite(got) or got != round(got):
            return wrong(f"{name}{case} returned {got!r}: give a whole number.")
        expected = reference(*case)
        if int(got) == expected:
            continue
        slip = slips(int(got), expected, case)
        if slip is not None:
            return wrong(slip)
        return wrong(f"{name}{case} = {int(got):,}, {counted_by} {expected:,}." + (f" {hint}" if hint else ""))
    return correct(praise)


@dataclass(frozen=True)
class Solution:
    """The worked solution of one exercise, shown on request by :func:`show_solution`.

    Attributes:
        explanation: the reasoning, in Markdown.
        reference: the reference solution (a function); its source code is shown.
        check: runs the exercise's check on the reference solution, with the arguments the notebook passes
            to ``solution(number, ...)`` (the data the exercise is about), and prints its feedback.
    """

    explanation: str
    reference: Callable[..., object]
    check: Callable[..., None]


def show_solution(solutions: Mapping[int, Solution], number: object, *data: object) -> None:
    """Show exercise ``number``'s solution among ``solutions``: its explanation (rendered as Markdown in a
    notebook, printed elsewhere), the reference code, and its check's feedback on ``data``.

    Raises:
        ValueError: ``number`` is not one of the exercises.
    """
    if isinstance(number, bool) or number not in solutions:
        raise ValueError(f"there is no exercise {number!r} here: the exercises are {sorted(solutions)}")
    from IPython import get_ipython
    from IPython.display import Markdown, display

    solution = solutions[number]
    if get_ipython() is not None:
        display(Markdown(solution.explanation))
    else:
        print(solution.explanation)
    print(inspect.getsource(solution.reference))
    solution.check(*data)
