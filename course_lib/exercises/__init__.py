"""The course's exercises: one module per notebook (``nb01``, ...), with checks and reference solutions.

Every exercise has a *feedback* function, which judges an answer and returns a
:class:`Feedback` (easy to test), and a *check* function, which prints that
feedback in the notebook. An answer left at ``None`` is "not attempted yet",
never wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
