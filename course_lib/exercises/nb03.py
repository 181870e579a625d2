"""Exercises of notebook 03 (the head compiled to FHE): their checks and reference solutions.

1. :func:`check_pbs_count`: how many programmable bootstraps the encrypted part makes.
2. :func:`check_ciphertext_bytes`: how many bytes one encrypted integer weighs.
3. :func:`check_any_wrong_run`: the chance that at least one of many encrypted runs went wrong, from ``global_p_error``.
4. :func:`check_fast_pbs_count`: the same count as exercise 1, for the fast head of section 4.

:func:`solution` shows an exercise's worked solution, when the learner asks for it.
"""

from __future__ import annotations

import math

import numpy as np

from ..fhe import CircuitSummary
from . import Feedback, Solution, correct, judge_formula, not_attempted, show_solution, within_one_percent, wrong

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
    if within_one_percent(answer, expected):
        return correct(
            f"{expected / 1e3:,.1f} kB for a {summary.n_bits}-bit number: an LWE ciphertext is a vector of "
            "64-bit integers, thousands of them, whatever the few bits it hides."
        )
    if within_one_percent(answer, expected * 3):
        return wrong("the circuit has three inputs, q, k and v: divide by all their integers.")
    if within_one_percent(answer, summary.input_bytes):
        return wrong("that is the whole input; divide by the number of integers in it (3 arrays of length x head_dim).")
    return wrong(f"{answer:,.0f} bytes is not it: start from `summary.input_bytes` and count the input integers.")


def check_ciphertext_bytes(answer: object, summary: CircuitSummary, head_dim: int) -> None:
    """Print the feedback on exercise 2."""
    print(feedback_ciphertext_bytes(answer, summary, head_dim))


# ---------------------------------------------------------------------- exercise 3
#: Exercise 3's workshop: learners, and tokens each generates (one run of the head per token).
EX3_LEARNERS, EX3_TOKENS = 30, 20


def solution_any_wrong_run(global_p_error: float, runs: int) -> float:
    """The probability that at least one of ``runs`` independent runs has a wrong PBS, when each has one with
    probability at most ``global_p_error``: ``1 - (1 - p) ** runs`` (an upper bound, as ``p`` is)."""
    return -math.expm1(runs * math.log1p(-global_p_error))


def feedback_any_wrong_run(answer: object, global_p_error: float, runs: int) -> Feedback:
    """Judge ``answer``: the probability that any of ``runs`` runs went wrong (within 1%)."""
    if answer is None:
        return not_attempted("set `p_any_wrong` to a probability, a number from 0 to 1.")
    if isinstance(answer, bool) or not isinstance(answer, int | float | np.integer | np.floating):
        return wrong(f"give a probability, a number from 0 to 1, got {type(answer).__name__}.")
    if not 0 <= answer <= 1:
        return wrong(f"{answer:g} is not a probability: it must lie between 0 and 1.")
    expected = solution_any_wrong_run(global_p_error, runs)

    if within_one_percent(answer, expected):
        union = runs * global_p_error
        return correct(
            f"{expected:.3g}: about one workshop in {1 / expected:,.0f} sees a wrong value somewhere. While "
            f"runs x p is small, 1 - (1 - p)^runs is close to runs x p ({union:.3g}), the union bound; p is itself a "
            "bound, so this is the most it can be."
        )
    if within_one_percent(answer, global_p_error):
        return wrong("that is one run; the workshop makes many, each with its own chance to go wrong.")
    for part, count in (("one learner's", EX3_TOKENS), ("one token's", EX3_LEARNERS)):
        if count != runs and within_one_percent(answer, solution_any_wrong_run(global_p_error, count)):
            return wrong(f"that counts {part} runs only: count every run of the workshop.")
    if within_one_percent(answer, 1 - global_p_error) or within_one_percent(answer, (1 - global_p_error) ** runs):
        return wrong("that is the chance that everything went right; the question asks for the opposite.")
    return wrong(
        f"{answer:.3g} is not it: each run goes right with probability 1 - p, independently; what is the chance "
        "that all of them go right, and what is left?"
    )


def check_any_wrong_run(answer: object, global_p_error: float, runs: int) -> None:
    """Print the feedback on exercise 3."""
    print(feedback_any_wrong_run(answer, global_p_error, runs))


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


# ---------------------------------------------------------------------- worked solutions
def _check_pbs_count_and_compare(compiled: dict[tuple[int, int], int] | None = None) -> None:
    check_pbs_count(solution_pbs_count, compiled)
    print(f"GPT-2's head shape (head_dim 64) at 6 tokens: {solution_pbs_count(6, 64):,} PBS")


def _check_ciphertext_bytes_and_show(summary: CircuitSummary, head_dim: int) -> None:
    answer = solution_ciphertext_bytes(summary, head_dim)
    check_ciphertext_bytes(answer, summary, head_dim)
    print(f"{answer:,.0f} bytes = {answer / 8:,.0f} 64-bit integers for {summary.n_bits} bits of message")


def _check_any_wrong_run(global_p_error: float) -> None:
    runs = EX3_LEARNERS * EX3_TOKENS
    check_any_wrong_run(solution_any_wrong_run(global_p_error, runs), global_p_error, runs)


def _check_fast_pbs_count_and_compare(compiled: dict[tuple[int, int], int] | None = None) -> None:
    check_fast_pbs_count(solution_fast_pbs_count, compiled)
    for tokens in (4, 6, 16):
        fast, published = solution_fast_pbs_count(tokens, 64), solution_pbs_count(tokens, 64)
        print(
            f"GPT-2's head shape (head_dim 64) at {tokens:>2} tokens: fast {fast:>7,} PBS, "
            f"published construction {published:>7,}"
        )


SOLUTIONS: dict[int, Solution] = {
    1: Solution(
        r"""**Exercise 1.** Scores: $2T^2d$ for the products and $T^2$ for their requantization. Softmax: $T(T-1)$
for the row max chains, $T^2$ for exp, $T$ for the reciprocals of the row sums, $2T^2$ for the products
exp × (1/sum), $T^2$ for probs. Mix: $2T^2d$ for the products, $Td$ for the output. In all $4T^2d + 6T^2 + Td$.
At GPT-2's head shape and 6 tokens this is fewer than the post's 11,622: the post's count includes the projections
of $q$, $k$, $v$, which this circuit leaves to the client.""",
        solution_pbs_count,
        _check_pbs_count_and_compare,
    ),
    2: Solution(
        r"""**Exercise 2.** Divide the input's size by the number of integers in it, $3 \cdot T \cdot d$. Each
4-bit number travels as an LWE ciphertext: a vector of thousands of 64-bit integers. That blow-up, thousands of
times the plaintext, is why FHE traffic is counted in megabytes.""",
        solution_ciphertext_bytes,
        _check_ciphertext_bytes_and_show,
    ),
    3: Solution(
        r"""**Exercise 3.** Each run goes right with probability at least $1 - p$, independently of the others, so
all $n$ runs go right with probability at least $(1 - p)^n$, and at least one goes wrong with probability at most
$1 - (1 - p)^n \approx n p$ while $n p$ is small. A service answering millions of requests needs a smaller $p$,
bought with larger parameters (section 6 measured the price of a larger one), or an output that tolerates an
occasional wrong lookup, as a next-token choice mostly does.""",
        solution_any_wrong_run,
        _check_any_wrong_run,
    ),
    4: Solution(
        r"""**Exercise 4.** With $P = T(T+1)/2$ pairs. Scores: $Td$ squares of $q$, $Td$ of $k$, $Pd$ lookups
$(q+k)^2$. Softmax: $T(T-1)/2$ for the max chains (row $i$ has $i$ steps), $P$ exps, $T$ logs, $P$ exps. Mix: $P$
squares of probabilities, $Td$ squares of $v$, $Pd$ lookups $(p+v)^2$. In all $2Pd + 3Td + 3P + T + T(T-1)/2$,
against $4T^2d + 6T^2 + Td$: for long sequences $2Pd \approx T^2 d$, a quarter of the published count.""",
        solution_fast_pbs_count,
        _check_fast_pbs_count_and_compare,
    ),
}


def solution(number: int, *data: object) -> None:
    """Show the worked solution of exercise ``number`` of notebook 03, and its check passing: exercise 1 takes
    optionally the compiler's counts (as its check does), exercise 2 ``(summary, head_dim)``, exercise 3 the
    circuit's ``global_p_error``, exercise 4 optionally the compiler's counts."""
    show_solution(SOLUTIONS, number, *data)
