"""Exercises of notebook 03 (the head compiled to FHE): their checks and reference solutions.

1. :func:`check_pbs_count`: how many programmable bootstraps the encrypted part makes.
2. :func:`check_ciphertext_bytes`: how many bytes one encrypted integer weighs.
3. :func:`check_costliest_step`: which step of the head pays for most of the PBS.
4. :func:`check_fast_pbs_count`: the same count as exercise 1, for the fast head of section 4.
"""

from __future__ import annotations

import numpy as np

from ..fhe import CircuitSummary
from . import Feedback, correct, judge_formula, not_attempted, wrong

# ---------------------------------------------------------------------- exercise 1
#: (tokens T, head dimension d) pairs on which an answer to exercise 1 is checked.
EX1_CASES: tuple[tuple[int, int], ...] = ((2, 4), (4, 32), (3, 8), (6, 32), (8, 64), (16, 64))


def solution_pbs_count(T: int, head_dim: int) -> int:  # noqa: N803 (T as in the notebook)
    """PBS of :meth:`QuantizedHead.attend` on ``T`` tokens of dimension ``head_dim``.

    Every product of two encrypted numbers is two lookups (two squares); every other
    lookup is one PBS per element.
    """
    scores = 2 * T * T * head_dim + T * T  # q @ k.T products, then the scores lookup
    row_max = T * (T - 1)  # a chain of T - 1 pairwise maxima per row
    softmax = T * T + T + 2 * T * T + T * T  # exp, 1 / row sum, exp * (1/sum) products, probs lookup
    mix = 2 * T * T * head_dim + T * head_dim  # probs @ v products, then the output lookup
    return scores + row_max + softmax + mix


def feedback_pbs_count(answer: object, compiled: dict[tuple[int, int], int] | None = None) -> Feedback:
    """Judge ``answer``: a function ``(T, head_dim) -> PBS count`` of the encrypted part.

    ``compiled`` maps some ``(T, head_dim)`` to the compiler's own count; the reference
    formula is checked against them too.
    """

    def slips(got: int, expected: int, case: tuple[int, ...]) -> str | None:
        tokens, head_dim = case
        if got == expected - _product_pbs(tokens, head_dim) // 2:
            return "a product of two ciphertexts is two lookups, (a+b)^2/4 and (a-b)^2/4: count both squares."
        if got == expected - tokens * (tokens - 1):
            return "the row maximum is not free: each of the T - 1 steps of a row's max chain is one lookup."
        return None

    return judge_formula(
        answer,
        "pbs(T, head_dim)",
        "the PBS count of the encrypted part",
        solution_pbs_count,
        EX1_CASES,
        compiled,
        slips,
        hint="Go through the steps: two matmuls of encrypted operands, the row max, the softmax's lookups and "
        "product, two requantizations.",
        praise="4 T^2 d + 6 T^2 + T d: the two encrypted matmuls dominate, and they grow as T^2.",
    )


def _product_pbs(T: int, head_dim: int) -> int:  # noqa: N803
    """PBS spent on products (two per product): the two matmuls and the softmax's elementwise product."""
    return 2 * (2 * T * T * head_dim + T * T)


def check_pbs_count(answer: object, compiled: dict[tuple[int, int], int] | None = None) -> None:
    """Print the feedback on exercise 1."""
    print(feedback_pbs_count(answer, compiled))


# ---------------------------------------------------------------------- exercise 2
def solution_ciphertext_bytes(summary: CircuitSummary, head_dim: int) -> float:
    """Bytes of one encrypted integer: the input ciphertexts' size over the number of input integers."""
    return summary.input_bytes / (3 * summary.length * head_dim)


def feedback_ciphertext_bytes(answer: object, summary: CircuitSummary, head_dim: int) -> Feedback:
    """Judge ``answer``: the bytes of one encrypted input integer (within 1%)."""
    if answer is None:
        return not_attempted("set `bytes_per_integer` to the size of one encrypted integer, in bytes.")
    if isinstance(answer, bool) or not isinstance(answer, int | float | np.integer | np.floating):
        return wrong(f"give a number of bytes, got {type(answer).__name__}.")
    expected = solution_ciphertext_bytes(summary, head_dim)
    if abs(answer - expected) <= 0.01 * expected:
        return correct(
            f"{expected / 1e3:,.1f} kB for a {summary.n_bits}-bit number: an LWE ciphertext is a vector of "
            "64-bit integers, thousands of them, whatever the few bits it hides."
        )
    if abs(answer - expected * 3) <= 0.01 * expected * 3:
        return wrong("the circuit has three inputs, q, k and v: divide by all their integers.")
    if abs(answer - summary.input_bytes) <= 0.01 * summary.input_bytes:
        return wrong("that is the whole input; divide by the number of integers in it (3 arrays of length x head_dim).")
    return wrong(f"{answer:,.0f} bytes is not it: start from `summary.input_bytes` and count the input integers.")


def check_ciphertext_bytes(answer: object, summary: CircuitSummary, head_dim: int) -> None:
    """Print the feedback on exercise 2."""
    print(feedback_ciphertext_bytes(answer, summary, head_dim))


# ---------------------------------------------------------------------- exercise 3
def solution_costliest_step(summary: CircuitSummary) -> str:
    """The step with the most PBS in ``summary.pbs_per_step``."""
    return max(summary.pbs_per_step, key=summary.pbs_per_step.get)


def feedback_costliest_step(answer: object, summary: CircuitSummary) -> Feedback:
    """Judge ``answer``: the name of the step (a key of ``pbs_per_step``) with the most PBS."""
    if answer is None:
        return not_attempted("set `costliest` to a step name, one of " + ", ".join(map(repr, summary.pbs_per_step)))
    if not isinstance(answer, str) or answer not in summary.pbs_per_step:
        return wrong(f"{answer!r} is not a step; the steps are " + ", ".join(map(repr, summary.pbs_per_step)) + ".")
    expected = solution_costliest_step(summary)
    if answer == expected:
        share = summary.pbs_per_step[expected] / summary.pbs_count
        return correct(
            f"{share:.0%} of the PBS: its products of two ciphertexts, one or two lookups for every pair of "
            "tokens and every one of the head_dim dimensions."
        )
    return wrong(
        f"{answer!r} makes {summary.pbs_per_step[answer]:,} PBS; look for the step with the most "
        "(the softmax has many lookups, but each on one value per score, not per score and dimension)."
    )


def check_costliest_step(answer: object, summary: CircuitSummary) -> None:
    """Print the feedback on exercise 3."""
    print(feedback_costliest_step(answer, summary))


# ---------------------------------------------------------------------- exercise 4
def solution_fast_pbs_count(T: int, head_dim: int) -> int:  # noqa: N803 (T as in the notebook)
    """PBS of :meth:`FastHead.attend <course_lib.fast_attention.FastHead.attend>` on ``T`` tokens.

    Only the ``P = T (T + 1) / 2`` causal pairs are computed, and a product costs one
    lookup once both operands' squares are known (one lookup per element, once).
    """
    pairs = T * (T + 1) // 2
    scores = pairs * head_dim + 2 * T * head_dim  # (q + k)^2 per pair and dimension; q^2 and k^2 once
    softmax = T * (T - 1) // 2 + pairs + T + pairs  # row max chains, exp, log of each row sum, final exp
    mix = pairs * head_dim + pairs + T * head_dim  # (p + v)^2 per pair and dimension; p^2 and v^2 once
    return scores + softmax + mix


def feedback_fast_pbs_count(answer: object, compiled: dict[tuple[int, int], int] | None = None) -> Feedback:
    """Judge ``answer``: a function ``(T, head_dim) -> PBS count`` of the fast head's encrypted part."""

    def slips(got: int, expected: int, case: tuple[int, ...]) -> str | None:
        tokens, head_dim = case
        pairs = tokens * (tokens + 1) // 2
        if got == expected + 2 * (tokens * tokens - pairs) * head_dim:
            return "the fast head never computes the masked pairs j > i: count T (T + 1) / 2 pairs, not T^2."
        if got == expected - 2 * tokens * head_dim - pairs:
            return "the squares of q, k, v and of the probabilities are lookups too, one per element."
        return None

    return judge_formula(
        answer,
        "fast_pbs(T, head_dim)",
        "the PBS count of the fast head",
        solution_fast_pbs_count,
        EX1_CASES,
        compiled,
        slips,
        hint="Go through FastHead.attend: squares once, one lookup per product of a causal pair, the softmax's "
        "lookups.",
        praise="2 P d + 3 T d from the products, a few P and T from the softmax: for long sequences a quarter of "
        "4 T^2 d.",
    )


def check_fast_pbs_count(answer: object, compiled: dict[tuple[int, int], int] | None = None) -> None:
    """Print the feedback on exercise 4."""
    print(feedback_fast_pbs_count(answer, compiled))
