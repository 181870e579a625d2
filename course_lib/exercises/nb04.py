"""Exercises of notebook 04 (the full attention and encrypted generation): their checks and reference solutions.

1. :func:`check_full_attention_pbs`: the PBS count of every head of a layer together.
2. :func:`check_step_pbs`: the PBS count of one step of the whole layer (the new token, the cache on the server).
3. :func:`check_step_seconds`: the time of one generation step of GPT-2's first layer on a big machine, on paper.

:func:`solution` shows an exercise's worked solution, when the learner asks for it.
"""

from __future__ import annotations

import numpy as np

from . import Feedback, Solution, correct, judge_formula, not_attempted, show_solution, within_one_percent, wrong
from .nb03 import solution_fast_pbs_count

# ---------------------------------------------------------------------- exercise 1
#: (tokens, heads, head dimension) on which an answer to exercise 1 is checked.
EX1_CASES: tuple[tuple[int, int, int], ...] = ((2, 4, 32), (4, 4, 32), (6, 12, 64), (16, 12, 64), (3, 2, 8))


def solution_full_attention_pbs(T: int, n_head: int, head_dim: int) -> int:  # noqa: N803 (T as in the notebook)
    """PBS of the fast full attention: the heads are independent circuits side by side, so ``n_head`` times one."""
    return n_head * solution_fast_pbs_count(T, head_dim)


def feedback_full_attention_pbs(answer: object, compiled: dict[tuple[int, int, int], int] | None = None) -> Feedback:
    """Judge ``answer``: a function ``(T, n_head, head_dim) -> PBS count`` of the full attention.

    ``compiled`` maps some ``(T, n_head, head_dim)`` to the compiler's own count; the reference
    is checked against them too.
    """

    def slips(got: int, expected: int, case: tuple[int, ...]) -> str | None:
        tokens, n_head, head_dim = case
        if got == solution_fast_pbs_count(tokens, head_dim):
            return "that is one head; the circuit runs every head of the layer."
        if got == solution_fast_pbs_count(tokens, n_head * head_dim):
            return (
                "the heads do not mix: each one attends with its own head_dim, so the count is not that of one "
                "head n_head times wider (the softmax is per head)."
            )
        return None

    return judge_formula(
        answer,
        "full_pbs(T, n_head, head_dim)",
        "the full attention's PBS count",
        solution_full_attention_pbs,
        EX1_CASES,
        compiled,
        slips,
        praise="n_head independent heads side by side: n_head times the PBS, and as many cores to share them.",
    )


def check_full_attention_pbs(answer: object, compiled: dict[tuple[int, int, int], int] | None = None) -> None:
    """Print the feedback on exercise 1."""
    print(feedback_full_attention_pbs(answer, compiled))


# ---------------------------------------------------------------------- exercise 2
#: (tokens, heads, head dimension) on which an answer to exercise 2 is checked (a step reads at least 2 tokens).
EX2_CASES: tuple[tuple[int, int, int], ...] = ((2, 4, 32), (5, 4, 32), (6, 12, 64), (16, 12, 64), (3, 2, 8))


def solution_step_pbs(T: int, n_head: int, head_dim: int) -> int:  # noqa: N803 (T as in the notebook)
    """PBS of one step of the whole layer at ``T >= 2`` tokens, the earlier tokens' keys and values (and their
    squares) in the encrypted cache.

    Per head, for the new token only: its ``q``, ``k`` and ``v`` requantized after the projection (``3 d``),
    the squares of its ``k`` and ``v`` that join the cache (``2 d``), its query's squares (``d``), one lookup
    per product of the ``T`` scores and of the ``T`` weighted values (``2 T d``), for the softmax of its one
    row a max chain (``T - 1``), ``exp`` (``T``), one log and ``exp`` again (``T``), the probabilities'
    squares (``T``), and the requantization of its output for ``c_proj`` (``d``):
    ``n_head (2 T d + 7 d + 4 T)``. ``c_proj`` itself has clear weights: no PBS.
    """
    return n_head * (2 * T * head_dim + 7 * head_dim + 4 * T)


def feedback_step_pbs(answer: object, compiled: dict[tuple[int, int, int], int] | None = None) -> Feedback:
    """Judge ``answer``: a function ``(T, n_head, head_dim) -> PBS count`` of one step of the layer.

    ``compiled`` maps some ``(T, n_head, head_dim)`` to the compiler's count of a layer's step;
    the reference is checked against them too.
    """

    def slips(got: int, expected: int, case: tuple[int, ...]) -> str | None:
        T, n_head, d = case  # noqa: N806
        if got == expected // n_head:
            return "that is one head; the step runs every head of the layer."
        if got == expected + 2 * (T - 1) * d * n_head:
            return (
                "the earlier tokens' keys and values have their squares in the cache already: only the new "
                "token's are looked up."
            )
        if got == expected - 4 * d * n_head:
            return (
                "that is the attention alone: the step also requantizes the new token's q, k, v after the "
                "projection, and the heads' outputs before c_proj."
            )
        if got in (expected - 3 * d * n_head, expected - d * n_head):
            return (
                "almost: count the requantizations on both sides of the attention, after the projection "
                "(q, k and v) and before c_proj."
            )
        if got == expected - T * n_head:
            return "almost: the probabilities are multiplied by the values too, so they need their squares."
        if got == solution_full_attention_pbs(*case):
            return "that is the full attention, every row; a step computes the new token's row only."
        return None

    return judge_formula(
        answer,
        "step_pbs(T, n_head, head_dim)",
        "a step's PBS count",
        solution_step_pbs,
        EX2_CASES,
        compiled,
        slips,
        praise="linear in T: the new token pays for every earlier one once, through the cache, and the "
        "projections' cost does not grow at all.",
    )


def check_step_pbs(answer: object, compiled: dict[tuple[int, int, int], int] | None = None) -> None:
    """Print the feedback on exercise 2."""
    print(feedback_step_pbs(answer, compiled))


# ---------------------------------------------------------------------- exercise 3
#: Exercise 3's question: a generation step of GPT-2's first layer (12 heads of 64), the 8th token, on 196 cores.
EX3_TOKENS, EX3_HEADS, EX3_HEAD_DIM, EX3_CORES = 8, 12, 64, 196


def solution_cluster_seconds(pbs: int, seconds_per_pbs_on_2_cores: float, cores: int) -> float:
    """Seconds for ``pbs`` bootstraps on ``cores`` cores, from a per-PBS time measured on 2 cores.

    PBS of one circuit are independent enough to share the cores evenly: the time falls as ``2 / cores``
    (an optimistic bound: it ignores the chains of lookups that must wait for each other).
    """
    return pbs * seconds_per_pbs_on_2_cores * 2 / cores


def solution_step_seconds(seconds_per_pbs_on_2_cores: float) -> float:
    """Reference solution of exercise 3: exercise 2's step count at GPT-2's shape, timed at the benchmark's
    seconds per PBS and shared among :data:`EX3_CORES` cores."""
    pbs = solution_step_pbs(EX3_TOKENS, EX3_HEADS, EX3_HEAD_DIM)  # the 8th token: T = 8, 7 of them cached
    return solution_cluster_seconds(pbs, seconds_per_pbs_on_2_cores, EX3_CORES)


def feedback_step_seconds(answer: object, seconds_per_pbs: float) -> Feedback:
    """Judge ``answer``: the seconds of step :data:`EX3_TOKENS` of GPT-2's first layer on :data:`EX3_CORES` cores
    (within 1 %), with hints for the usual slips (2 cores, one core, one head, the full pass, the next step)."""
    if answer is None:
        return not_attempted("set `step_seconds` to the estimated time of one step, in seconds.")
    if isinstance(answer, bool) or not isinstance(answer, int | float | np.integer | np.floating):
        return wrong(f"give a number of seconds, got {type(answer).__name__}.")
    expected = solution_step_seconds(seconds_per_pbs)
    full = solution_cluster_seconds(
        solution_full_attention_pbs(EX3_TOKENS, EX3_HEADS, EX3_HEAD_DIM), seconds_per_pbs, EX3_CORES
    )

    if within_one_percent(answer, expected):
        return correct(
            f"about {expected:,.1f} s per generated token, where recomputing all {EX3_TOKENS} tokens' token mixing "
            f"would take {full:,.1f} s at the same time per PBS: the cache turns a quadratic pass into a linear "
            "step, projections included."
        )
    slips = [
        (expected * EX3_CORES / 2, "that is the time on 2 cores; share the PBS among all the cores."),
        (expected / 2, "the per-PBS time was measured with 2 cores busy: one core alone takes twice as long per PBS."),
        (expected / EX3_HEADS, f"that is one head; the layer runs all {EX3_HEADS}."),
        (
            full,
            "that is a full pass over every token (section 6's estimate); a step computes the new token's row only.",
        ),
    ]
    for tokens in (EX3_TOKENS - 1, EX3_TOKENS + 1):
        other = solution_step_pbs(tokens, EX3_HEADS, EX3_HEAD_DIM)
        slips.append(
            (
                solution_cluster_seconds(other, seconds_per_pbs, EX3_CORES),
                f"that is step {tokens}; the 8th token's step reads T = {EX3_TOKENS} tokens, its own included.",
            )
        )
    for value, hint in slips:
        if within_one_percent(answer, value):
            return wrong(hint)
    return wrong(
        f"{answer:,.1f} s is not it: count the step's PBS (exercise 2) at GPT-2's shape, multiply by the time of "
        "one, then share among the cores."
    )


def check_step_seconds(answer: object, seconds_per_pbs: float) -> None:
    """Print the feedback on exercise 3."""
    print(feedback_step_seconds(answer, seconds_per_pbs))


# ---------------------------------------------------------------------- worked solutions


def _check_full_attention_pbs_and_show(compiled: dict[tuple[int, int, int], int] | None = None) -> None:
    check_full_attention_pbs(solution_full_attention_pbs, compiled)
    print(f"GPT-2's first layer (12 heads of 64) at 8 tokens: {solution_full_attention_pbs(8, 12, 64):,} PBS")


def _check_step_pbs_and_compare(compiled: dict[tuple[int, int, int], int] | None = None) -> None:
    check_step_pbs(solution_step_pbs, compiled)
    for tokens in (8, 16):
        print(
            f"at {tokens} tokens, GPT-2's first layer: a step {solution_step_pbs(tokens, 12, 64):,} PBS, "
            f"the full attention of every token {solution_full_attention_pbs(tokens, 12, 64):,}"
        )


def _check_step_seconds_and_show(seconds_per_pbs: float) -> None:
    answer = solution_step_seconds(seconds_per_pbs)
    check_step_seconds(answer, seconds_per_pbs)
    pbs = solution_step_pbs(EX3_TOKENS, EX3_HEADS, EX3_HEAD_DIM)
    print(f"{pbs:,} PBS: about {answer:.1f} s on {EX3_CORES} cores, {answer * EX3_CORES / 2 / 60:.0f} minutes on 2")


SOLUTIONS: dict[int, Solution] = {
    1: Solution(
        r"""**Exercise 1.** The heads are independent circuits side by side: $n_\text{head}$ times one fast head,
$n_\text{head}\,(2Pd + 3Td + 3P + T + T(T-1)/2)$ with $P = T(T+1)/2$.""",
        solution_full_attention_pbs,
        _check_full_attention_pbs_and_show,
    ),
    2: Solution(
        r"""**Exercise 2.** Per head, for the new token only: its $q$, $k$, $v$ requantized after `c_attn` ($3d$),
the squares of its $k$ and $v$ for the cache ($2d$), the squares of its query ($d$), one lookup per product, $Td$
for the scores and $Td$ for the weighted values, for the softmax of its one row a max chain ($T-1$), `exp` ($T$),
the log of the sum (1), `exp` again ($T$) and the squares of the $T$ probabilities, and its output requantized for
`c_proj` ($d$): $n_\text{head}\,(2Td + 7d + 4T)$. Linear in $T$, where a pass over the whole sequence is
quadratic; and the earlier tokens' squares are never looked up again.""",
        solution_step_pbs,
        _check_step_pbs_and_compare,
    ),
    3: Solution(
        r"""**Exercise 3.** Exercise 2's formula at GPT-2's shape: the 8th token's step reads $T = 8$ tokens (7 in
the cache, its own), $12\,(2 \cdot 8 \cdot 64 + 7 \cdot 64 + 4 \cdot 8) = 18{,}048$ PBS. Times the time of one PBS,
measured with 2 cores busy, shared among 196 cores instead of 2. Section 6's full pass of the token mixing at 8
tokens is four times as many PBS: a generation step pays for its new token only, and each later step grows by
$n_\text{head}(2d + 4)$ PBS. (At 4-bit activations GPT-2's wider heads would need a little more precision per PBS
than ours, and the lookups of one row wait for each other: take it as a lower bound.)""",
        solution_step_seconds,
        _check_step_seconds_and_show,
    ),
}


def solution(number: int, *data: object) -> None:
    """Show the worked solution of exercise ``number`` of notebook 04, and its check passing: exercises 1 and 2
    take optionally the compiler's counts (as their checks do), exercise 3 the benchmark's seconds per PBS."""
    show_solution(SOLUTIONS, number, *data)
