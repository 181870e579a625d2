"""Checks of the arguments every module takes: one place for what counts as an integer, and one message.

A ``bool`` is an ``int`` in Python, so ``True`` would pass a plain ``isinstance(value, int)`` as 1; here it
never counts as a number of tokens, bits or workers. NumPy integers count (an index from an array is one).
"""

from __future__ import annotations

import numpy as np


def is_integer(value: object) -> bool:
    """True for a Python or NumPy integer, False for anything else, a ``bool`` included."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_integer(
    value: object, name: str, low: int = 1, high: int | None = None, *, allowed: str | None = None, unit: str = ""
) -> int:
    """Return ``value`` as an ``int`` if it is an integer (:func:`is_integer`) from ``low`` to ``high``
    (unbounded above when ``high`` is None); otherwise raise a ``ValueError`` that names ``name``, what is
    allowed and the value given.

    The message says "a positive integer" (``low`` 1, no ``high``), "an integer from low to high" or "an
    integer of at least low", followed by ``unit`` in brackets if given; ``allowed`` replaces that phrase
    where the bounds are better said in words (``"an integer larger than length=4"``).
    """
    if is_integer(value) and value >= low and (high is None or value <= high):
        return int(value)
    if allowed is None:
        if high is not None:
            allowed = f"an integer from {low} to {high}"
        else:
            allowed = "a positive integer" if low == 1 else f"an integer of at least {low}"
    raise ValueError(f"{name} must be {allowed}{f' ({unit})' if unit else ''}, got {value!r}")
