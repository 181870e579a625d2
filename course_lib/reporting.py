"""Tables of a quantized computation: what each step holds, and which table lookups it makes.

Two questions come back in every notebook from 02 on:

- *what does each step of the head hold?* :func:`step_rows` turns the named
  intermediate values of :meth:`course_lib.attention.QuantizedHead.steps` into rows
  (shape, scale, zero point, integer range, bits, error), and :func:`steps_dataframe`
  into a pandas DataFrame to display;
- *which table lookups does it make?* Under :func:`recording_lookups`, every
  :meth:`~course_lib.dual_array.DualArray.apply` (the table lookups: requantizations,
  ``exp``, ``1/x``) is recorded with its number of elements and the bits of its input,
  which set the number and the price of the programmable bootstraps (PBS) in FHE;

(How much the head matters at all, the floor any quantized head should beat, is
:func:`course_lib.evaluation.head_removed_agreement`.)

>>> rows = step_rows(head.steps(x))                    # doctest: +SKIP
>>> with recording_lookups() as lookups:               # doctest: +SKIP
...     head.run(x)
>>> sum(lookup.elements for lookup in lookups)         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .dual_array import DualArray

if TYPE_CHECKING:  # pandas is only needed to build a DataFrame
    import pandas as pd

#: Column names of :func:`steps_dataframe`, in order.
STEP_COLUMNS: tuple[str, ...] = (
    "step",
    "shape",
    "scale",
    "zero point",
    "integers",
    "bits",
    "max error",
    "max |float|",
    "relative error",
)


@dataclass(frozen=True)
class StepRow:
    """One intermediate value of a quantized computation, summarised.

    Attributes:
        name: the step's name (as recorded by the computation).
        shape: the array's shape.
        scale, zero_point: what the integers mean: ``real ~ scale * (int - zero_point)``.
        int_min, int_max: the smallest and largest integer actually held.
        bits: bits needed for those integers (a sign bit included when negative),
            see :meth:`~course_lib.dual_array.DualArray.bit_width`.
        max_error: largest ``|dequantized integers - floats|``.
        max_abs_float: largest ``|float|`` of the step (the size errors are compared with).
    """

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    int_min: int
    int_max: int
    bits: int
    max_error: float
    max_abs_float: float

    @property
    def relative_error(self) -> float:
        """``max_error / max_abs_float``: the error in proportion to the values (0 if they are all 0)."""
        return self.max_error / self.max_abs_float if self.max_abs_float > 0 else 0.0


def step_row(name: str, value: DualArray) -> StepRow:
    """Summarise one DualArray in dual mode (floats and NumPy integers side by side)."""
    if value.mode != "dual" or not isinstance(value.int, np.ndarray):
        raise ValueError(
            f"step {name!r} is in {value.mode} mode: a step row needs floats and NumPy integers side by side "
            "(run the computation in dual mode, e.g. QuantizedHead.steps(x))"
        )
    low, high = value.int_range()
    return StepRow(
        name=name,
        shape=tuple(int(n) for n in value.shape),
        scale=float(value.scale),
        zero_point=int(value.zero_point),
        int_min=low,
        int_max=high,
        bits=value.bit_width(),
        max_error=value.error(),
        max_abs_float=float(np.max(np.abs(value.float))),
    )


def step_rows(steps: Sequence[tuple[str, DualArray]]) -> list[StepRow]:
    """One :class:`StepRow` per ``(name, DualArray)``, in order (e.g. from ``QuantizedHead.steps(x)``)."""
    if not steps:
        raise ValueError("step_rows needs at least one (name, DualArray) step, got none")
    return [step_row(name, value) for name, value in steps]


def steps_dataframe(steps: Sequence[tuple[str, DualArray]]) -> pd.DataFrame:
    """The steps as a pandas DataFrame with the columns :data:`STEP_COLUMNS`, one row per step.

    ``integers`` is the range actually held, ``"low..high"``; the floats are rounded
    to 4 significant digits so that the table reads (and prints) the same everywhere.
    """
    import pandas as pd

    records = [
        (
            row.name,
            "x".join(str(n) for n in row.shape),
            float(f"{row.scale:.4g}"),
            row.zero_point,
            f"{row.int_min}..{row.int_max}",
            row.bits,
            float(f"{row.max_error:.4g}"),
            float(f"{row.max_abs_float:.4g}"),
            float(f"{row.relative_error:.3g}"),
        )
        for row in step_rows(steps)
    ]
    return pd.DataFrame.from_records(records, columns=list(STEP_COLUMNS))


# ---------------------------------------------------------------------- table lookups


@dataclass(frozen=True)
class Lookup:
    """One call of :meth:`DualArray.apply` with NumPy integers: ``elements`` table lookups at once.

    Attributes:
        quantizer: the name of the output quantizer (which step of the head it is).
        shape: the shape of the looked-up array.
        elements: how many values go through the table (one PBS each in FHE).
        input_bits: bits of the input integers after ``round_lsbs``: the table has ``2**input_bits`` entries.
        output_bits: the output quantizer's bits.
    """

    quantizer: str
    shape: tuple[int, ...]
    elements: int
    input_bits: int
    output_bits: int


@contextmanager
def recording_lookups() -> Iterator[list[Lookup]]:
    """Record every table lookup made with NumPy integers inside the ``with`` block.

    Yields a list that fills with one :class:`Lookup` per :meth:`DualArray.apply` call
    (requantize, exp and reciprocal included). Calibration runs (floats only) and
    concrete tracers are not recorded. Not thread-safe: it wraps ``DualArray.apply``
    for the duration of the block, and restores it even if the block raises.
    """
    lookups: list[Lookup] = []
    original = DualArray.apply

    def recorded(self: DualArray, fn, quantizer, *, round_lsbs: int = 0, exact: bool = True) -> DualArray:
        result = original(self, fn, quantizer, round_lsbs=round_lsbs, exact=exact)
        if not self.calibrating and isinstance(self.int, np.ndarray):
            lookups.append(
                Lookup(
                    quantizer=quantizer.name,
                    shape=tuple(int(n) for n in self.shape),
                    elements=int(np.size(self.int)),
                    input_bits=max(1, self.bit_width() - int(round_lsbs)),
                    output_bits=quantizer.params.n_bits,
                )
            )
        return result

    recorded.__doc__ = original.__doc__
    DualArray.apply = recorded  # type: ignore[method-assign]
    try:
        yield lookups
    finally:
        DualArray.apply = original  # type: ignore[method-assign]


def lookups_dataframe(lookups: Sequence[Lookup]) -> pd.DataFrame:
    """The lookups as a DataFrame: quantizer, shape, elements, input bits, table entries, output bits."""
    import pandas as pd

    records = [
        (
            lookup.quantizer,
            "x".join(str(n) for n in lookup.shape),
            lookup.elements,
            lookup.input_bits,
            2**lookup.input_bits,
            lookup.output_bits,
        )
        for lookup in lookups
    ]
    columns = ["lookup (output quantizer)", "shape", "elements", "input bits", "table entries", "output bits"]
    return pd.DataFrame.from_records(records, columns=columns)
