"""What ``p_error`` means, measured: how often an encrypted table lookup returns a wrong entry, and which one.

A PBS computes a table lookup on a noisy ciphertext. The noise is bounded only in probability:
concrete picks the cryptographic parameters so that one PBS returns a wrong entry with
probability at most ``p_error`` (and any PBS of one run at most ``global_p_error``). Lower
probabilities need larger parameters, which cost time and key size.

concrete's simulation draws these errors too. This module compiles one lookup with a chosen
``p_error``, simulates it on many inputs at once, and sorts the results: right, the row just
above or below the right one (the noise pushed the input across a boundary), or a value that is
in no row of the table (the input crossed the table's first or last row, where TFHE's padding
bit turns the result negative).

The table is a permutation of the ``bits``-bit integers, ``(5 i + 3) mod 2**bits``: every row
holds a different value, so a result says which row was read.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from concrete import fhe

from .checks import check_integer
from .fhe import configuration

#: The label of a result that is in no row of the table.
OUTSIDE = "outside the table"


def lookup_table(bits: int) -> np.ndarray:
    """The table of :func:`measure_lookup_errors`: row ``i`` holds ``(5 i + 3) mod 2**bits``, a permutation."""
    size = 2 ** check_integer(bits, "bits", 2, 8)
    return (5 * np.arange(size) + 3) % size


@dataclass(frozen=True)
class LookupErrors:
    """Lookups of one compiled table, simulated with their errors, sorted by where they landed.

    Attributes:
        p_error: the compiler's probability that one PBS of the circuit returns a wrong entry (at most the
            requested one: it can find parameters that do better).
        complexity: the compiler's cost estimate of the circuit: lower probabilities need larger parameters.
        lookups: how many lookups were simulated.
        landed: the results by where they landed: ``0`` the right row, ``-1`` / ``+1`` the row below / above
            (any other offset likewise), :data:`OUTSIDE` a value in no row.
    """

    p_error: float
    complexity: float
    lookups: int
    landed: dict[int | str, int]

    @property
    def wrong(self) -> int:
        """How many lookups returned a wrong value."""
        return self.lookups - self.landed.get(0, 0)

    @property
    def rate(self) -> float:
        """The share of wrong lookups."""
        return self.wrong / self.lookups

    def expected_range(self, z: float = 4.0) -> tuple[int, int]:
        """The counts of wrong lookups that ``p_error`` makes likely: ``n p +- z sqrt(n p (1 - p))``.

        The count of wrong lookups is binomial, ``n = lookups`` trials of probability ``p = p_error``; the
        normal approximation with ``z = 4`` leaves out about 6 counts in 100,000.
        """
        mean = self.lookups * self.p_error
        spread = z * math.sqrt(self.lookups * self.p_error * (1 - self.p_error))
        return max(0, math.floor(mean - spread)), math.ceil(mean + spread)

    @property
    def as_expected(self) -> bool:
        """Whether the count of wrong lookups lies in :meth:`expected_range`."""
        low, high = self.expected_range()
        return low <= self.wrong <= high


def compile_lookup(p_error: float, bits: int = 4, lookups: int = 100_000) -> fhe.Circuit:
    """One lookup in :func:`lookup_table` on a vector of ``lookups`` encrypted ``bits``-bit integers, compiled
    so that each PBS is wrong with probability at most ``p_error`` (the course's configuration otherwise).

    Raises:
        ValueError: ``p_error`` is not a probability strictly between 0 and 1, or ``bits`` or ``lookups``
            is out of range.
    """
    if isinstance(p_error, bool) or not isinstance(p_error, int | float) or not 0 < p_error < 1:
        raise ValueError(f"p_error must be a probability strictly between 0 and 1, got {p_error!r}")
    check_integer(lookups, "lookups", 1, 10_000_000)
    table = fhe.LookupTable(lookup_table(bits).tolist())

    def look_up(x):
        return table[x]

    inputset = [np.arange(lookups) % 2**bits, (np.arange(lookups) + 1) % 2**bits]
    compiler = fhe.Compiler(look_up, {"x": "encrypted"})
    return compiler.compile(inputset, configuration=configuration(p_error=p_error, global_p_error=None))


def measure_lookup_errors(p_error: float, bits: int = 4, lookups: int = 100_000, seed: int = 0) -> LookupErrors:
    """Simulate ``lookups`` lookups of :func:`lookup_table` on random rows (seeded), compiled with ``p_error``,
    and sort their results (:class:`LookupErrors`).

    concrete draws the simulated errors from its own random source, which takes no seed: the counts
    differ from one call to the next, as a run on ciphertexts would.
    """
    circuit = compile_lookup(p_error, bits, lookups)
    table = lookup_table(bits)
    row_of = {int(value): row for row, value in enumerate(table)}
    rows = np.random.default_rng(seed).integers(0, 2**bits, size=lookups)
    results = np.asarray(circuit.simulate(rows))
    landed: Counter[int | str] = Counter()
    for right, got in zip(rows.tolist(), results.tolist(), strict=True):
        read = row_of.get(got)
        landed[OUTSIDE if read is None else read - right] += 1
    return LookupErrors(
        p_error=float(circuit.p_error), complexity=float(circuit.complexity), lookups=lookups, landed=dict(landed)
    )
