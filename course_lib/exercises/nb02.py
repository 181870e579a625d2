"""Exercises of notebook 02 (one quantized head inside GPT-2): their checks and reference solutions.

1. :func:`check_lookup_count`: how many table lookups the head makes on ``T`` tokens.
2. :func:`check_other_head_n_bits`: the fewest bits that keep a given top-1 agreement, for another head
   than the one the notebook swept (:func:`feedback_smallest_n_bits_for_agreement` judges it on a sweep).
3. :func:`check_largest_error_step`: which step of the head drifts furthest from the floats at 8 bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..attention import HeadWeights, QuantizedHead
from ..dual_array import DualArray
from ..evaluation import Agreement, sweep_topk_agreement
from ..fast_attention import build_head
from ..reporting import recording_lookups, step_rows, steps_dataframe
from . import Feedback, Solution, correct, judge_formula, not_attempted, show_solution, wrong

# ---------------------------------------------------------------------- exercise 1
#: The (tokens T, head dimension d) pairs on which an answer to exercise 1 is checked.
EX1_CASES: tuple[tuple[int, int], ...] = ((1, 4), (2, 4), (5, 4), (3, 8), (7, 8), (13, 32), (16, 64))
_EX1_DIAGNOSTIC = (7, 8)


def _small_head(head_dim: int, n_embd: int = 8, n_bits: int = 4) -> QuantizedHead:
    """A calibrated head with random weights (seeded): enough to count its lookups."""
    rng = np.random.default_rng(head_dim)
    head = QuantizedHead(HeadWeights.random(n_embd, head_dim, seed=head_dim), n_bits)
    head.calibrate(rng.normal(size=(length, n_embd)) for length in (1, 4, 9))
    return head


def measured_lookup_count(tokens: int, head_dim: int) -> int:
    """The table lookups (elements through :meth:`DualArray.apply`) of one head run, counted while it runs."""
    head = _small_head(head_dim)
    x = np.random.default_rng(tokens).normal(size=(tokens, head.weights.n_embd))
    with recording_lookups() as lookups:
        head.run(x)
    return sum(lookup.elements for lookup in lookups)


def _lookup_slip(got: int, expected: int, case: tuple[int, ...]) -> str | None:
    """The usual slips of exercise 1, told apart at T = 7, d = 8 (T, T d, T**2 and their multiples all differ)."""
    t, d = case
    if got == 8:
        return (
            "8 is the number of lookup *calls* (q, k, v, scores, exp, 1/sum, probs, output); in FHE every "
            "element of the looked-up array is one programmable bootstrap: count the elements."
        )
    if got == expected - t:
        return "you forgot one lookup: 1 / (row sum) is computed once per row, T values."
    if got == expected - t * d:
        return "you forgot one lookup: the output (probs @ v) is requantized before it leaves the head."
    if got in (expected - 3 * t * d, expected - 2 * t * d):
        return "q, k and v are requantized separately, each a (T, head_dim) array: three lookups."
    if got in (expected - t * t, expected - 2 * t * t, expected + t * t):
        return (
            "count the (T, T) lookups again: the scores, exp and probs each go through a table, "
            "the masked entries included (the mask only multiplies by 0 or 1, for free)."
        )
    return None


def feedback_lookup_count(answer: object) -> Feedback:
    """Judge ``answer``: a function ``(T, head_dim) -> number of table lookups`` of the head on T tokens."""
    return judge_formula(
        answer,
        "lookups(T, head_dim)",
        "the number of table lookups for T tokens",
        solution_lookup_count,
        (_EX1_DIAGNOSTIC, *(case for case in EX1_CASES if case != _EX1_DIAGNOSTIC)),
        slips=_lookup_slip,
        hint="Go through the (L) arrows of the head's diagram and add the size of each looked-up array.",
        praise="4 T d + 3 T^2 + T: linear in the head's width, quadratic in the sequence length.",
        counted_by="the head makes",
    )


def check_lookup_count(answer: object) -> None:
    """Print the feedback of exercise 1."""
    print(feedback_lookup_count(answer))


def solution_lookup_count(tokens: int, head_dim: int) -> int:
    """Reference solution of exercise 1: the size of every array that goes through a table."""
    t, d = tokens, head_dim
    qkv = 3 * t * d  # q, k and v: three (T, d) requantizations of the c_attn accumulator
    scores = t * t  # the (T, T) scores, requantized
    exp = t * t  # exp(scores - row max)
    inverse = t  # 1 / row sum, one per row
    probs = t * t  # exp * (1 / sum), requantized
    output = t * d  # probs @ v, requantized
    return qkv + scores + exp + inverse + probs + output


# ---------------------------------------------------------------------- exercise 2
#: The top-1 agreement to reach in exercise 2.
EX2_TARGET = 0.99


def _top1(results: Sequence[Agreement]) -> dict[int, float]:
    return {r.n_bits: r.agreement[1] for r in results}


def feedback_smallest_n_bits_for_agreement(
    answer: object, results: Sequence[Agreement], target: float = EX2_TARGET
) -> Feedback:
    """Judge ``answer``: the smallest n_bits of ``results`` whose top-1 agreement is at least ``target``."""
    if answer is None:
        return not_attempted("set `answer` to a number of bits (an integer) read from the sweep's results.")
    top1 = _top1(results)
    if isinstance(answer, bool) or not isinstance(answer, int | np.integer):
        return wrong(f"give the number of bits as an integer, got {answer!r}.")
    n_bits = int(answer)
    reaching = sorted(b for b, share in top1.items() if share >= target)
    if not reaching:
        best = max(top1, key=top1.get)
        return wrong(
            f"no n_bits of this sweep reaches {target:.1%} top-1 agreement (the best is {top1[best]:.2%} at "
            f"{best} bits): sweep more bits, or lower the target."
        )
    if n_bits not in top1:
        return wrong(f"the sweep has no result for {n_bits} bits; it measured n_bits {sorted(top1)}.")
    if top1[n_bits] < target:
        return wrong(
            f"at {n_bits} bits the top-1 agreement is {top1[n_bits]:.2%}, below the target {target:.1%}: "
            "more bits are needed."
        )
    if n_bits > reaching[0]:
        return wrong(
            f"{n_bits} bits reach the target, but so do {reaching[0]} bits ({top1[reaching[0]]:.2%}). Every bit "
            "makes each table lookup slower in FHE: find the smallest."
        )
    return correct(f"{n_bits} bits: {top1[n_bits]:.2%} top-1 agreement >= {target:.1%}.")


def solution_smallest_n_bits_for_agreement(results: Sequence[Agreement], target: float = EX2_TARGET) -> int:
    """Reference solution of exercise 2: the first n_bits, in increasing order, whose top-1 reaches the target."""
    for result in sorted(results, key=lambda r: r.n_bits):
        if result.agreement[1] >= target:
            return result.n_bits
    raise ValueError(f"no n_bits of these results reaches a top-1 agreement of {target}")


#: The head exercise 2 sweeps: another head of the notebook's layer 0.
EX2_HEAD = 1
#: The bit widths of exercise 2's sweep, those of section 6.
EX2_N_BITS = tuple(range(2, 11))
_swept: list[tuple[object, object, object, list[Agreement]]] = []  # (model, passages, reference, their sweep)


def sweep_other_head(model, tokenizer, passages, calibration_prompts, reference) -> list[Agreement]:
    """Section 6's sweep for head :data:`EX2_HEAD` of layer 0, kept for the next call with the same model, passages
    and reference objects (a check run twice waits once; the objects are kept too, so they are the same ones)."""
    for kept_model, kept_passages, kept_reference, results in _swept:
        if kept_model is model and kept_passages is passages and kept_reference is reference:
            return results
    results = sweep_topk_agreement(
        model,
        tokenizer,
        passages,
        calibration_prompts,
        EX2_N_BITS,
        layer=0,
        head=EX2_HEAD,
        progress=False,
        reference=reference,
    )
    _swept[:] = [(model, passages, reference, results)]
    return results


def feedback_other_head_n_bits(
    answer: object, results: Sequence[Agreement], head0_results: Sequence[Agreement], target: float = EX2_TARGET
) -> Feedback:
    """Judge ``answer``: the smallest n_bits of head :data:`EX2_HEAD`'s sweep ``results`` reaching ``target``,
    told apart from head 0's (``head0_results``, the notebook's sweep)."""
    if answer is None:
        return not_attempted(f"set `answer_2` to a number of bits (an integer), from your sweep of head {EX2_HEAD}.")
    feedback = feedback_smallest_n_bits_for_agreement(answer, results, target)
    head0 = solution_smallest_n_bits_for_agreement(head0_results, target)
    if feedback.correct:
        return correct(
            f"{feedback.message} Head 0 needs {head0}: heads of one layer differ, and a layer quantized with one "
            "setting needs the bits of its most demanding head (notebook 04 measures the whole layer)."
        )
    if answer == head0:
        return wrong(
            f"{head0} bits is head 0's answer, from section 6's sweep; sweep head {EX2_HEAD}: "
            f"`sweep_topk_agreement(..., head={EX2_HEAD})`."
        )
    return feedback


def check_other_head_n_bits(
    answer: object, head0_results: Sequence[Agreement], model, tokenizer, passages, calibration_prompts, reference
) -> None:
    """Print the feedback of exercise 2 (sweeping head :data:`EX2_HEAD` first, once: about as long as section 6's
    sweep)."""
    if answer is None:
        print(feedback_other_head_n_bits(None, [], head0_results))
        return
    results = sweep_other_head(model, tokenizer, passages, calibration_prompts, reference)
    print(feedback_other_head_n_bits(answer, results, head0_results))


def solution_other_head_n_bits(model, tokenizer, passages, calibration_prompts, reference) -> int:
    """Reference solution of exercise 2: sweep head ``EX2_HEAD`` as section 6 swept head 0, then take the first
    n_bits, in increasing order, whose top-1 agreement reaches ``EX2_TARGET``."""
    results = sweep_topk_agreement(
        model,
        tokenizer,
        passages,
        calibration_prompts,
        range(2, 11),
        layer=0,
        head=EX2_HEAD,
        progress=False,
        reference=reference,
    )
    return solution_smallest_n_bits_for_agreement(results, EX2_TARGET)


def _check_other_head_and_show(head0_results, model, tokenizer, passages, calibration_prompts, reference) -> None:
    results = sweep_other_head(model, tokenizer, passages, calibration_prompts, reference)
    answer = solution_smallest_n_bits_for_agreement(results)
    print(feedback_other_head_n_bits(answer, results, head0_results))
    for name, sweep in ((f"head {EX2_HEAD}", results), ("head 0", head0_results)):
        print(f"{name}: " + ", ".join(f"{r.n_bits} bits {r.agreement[1]:.2%}" for r in sweep if r.n_bits >= 4))


# ---------------------------------------------------------------------- exercise 3
#: The bit width exercise 3 asks about (section 3's table is at 4 bits).
EX3_N_BITS = 8


def steps_at_bits(swap, x: np.ndarray, n_bits: int = EX3_N_BITS) -> list[tuple[str, DualArray]]:
    """The steps of ``swap``'s head on ``x`` with every activation on ``n_bits`` bits: a new head with the swap's
    other settings, calibrated on the swap's calibration inputs (the swap itself is not changed)."""
    if not swap.is_calibrated:
        raise RuntimeError("calibrate the swap first: swap.calibrate(tokenizer, calibration_prompts)")
    head = build_head(swap.head.weights, swap.config.replace(n_bits=n_bits))
    head.calibrate(swap.calibration_inputs)
    return head.steps(x)


def _outside_range(value: DualArray) -> tuple[float, float, float, float] | None:
    """``(float min, float max, range low, range high)`` when ``value``'s floats leave its quantizer's range by more
    than half a step (so that saturation, not rounding, explains its error), else ``None``."""
    if value.params is None or value.float is None:
        return None
    low, high = value.params.dequantize(np.array([value.params.qmin, value.params.qmax]))
    half = value.params.scale / 2
    lowest, highest = float(np.min(value.float)), float(np.max(value.float))
    if lowest < low - half or highest > high + half:
        return lowest, highest, float(low), float(high)
    return None


def feedback_largest_error_step(
    answer: object, steps: Sequence[tuple[str, DualArray]], previous: Sequence[tuple[str, DualArray]] | None = None
) -> Feedback:
    """Judge ``answer``: the name of the step with the largest *relative* error among ``steps``.

    ``previous`` (optional) are the same steps at another width (section 3's table): naming the step that was worst
    there, when it is not any more, gets a hint saying so.
    """
    if answer is None:
        return not_attempted('set `answer_3` to the name of a step, as written in the table, e.g. "q".')
    rows = step_rows(steps)
    names = [row.name for row in rows]
    if not isinstance(answer, str) or answer not in names:
        return wrong(f"give the name of a step exactly as in the table, one of {names}; got {answer!r}.")
    by_name = {row.name: row for row in rows}
    expected = solution_largest_error_step(steps)
    largest_absolute = max(rows, key=lambda row: row.max_error).name
    # steps whose relative errors print the same in the table are equally right
    if by_name[answer].relative_error >= by_name[expected].relative_error * (1 - 1e-3):
        message = f"{answer!r}: its largest error is {by_name[answer].relative_error:.1%} of its largest value."
        outside = _outside_range(dict(steps)[answer])
        if outside is not None:
            lowest, highest, low, high = outside
            message += (
                f" Its float values run from {lowest:.3g} to {highest:.3g}, but its quantizer, calibrated on other "
                f"passages, holds {low:.3g} to {high:.3g}: the values beyond saturate. More bits make the steps "
                "finer, they do not widen the range: that error is clipping, not rounding."
            )
        return correct(message)
    if previous is not None and answer == solution_largest_error_step(previous):
        return wrong(
            f"{answer!r} was the worst step in section 3's table, but here it is off by "
            f"{by_name[answer].relative_error:.1%} of its largest value: more bits shrank its error. Another step "
            "did not shrink: find it in the new table."
        )
    if answer == largest_absolute:
        row = by_name[answer]
        return wrong(
            f"{answer!r} has the largest error in absolute terms ({row.max_error:.3g}), but its values reach "
            f"{row.max_abs_float:.3g}: that is {row.relative_error:.1%} of them. Compare errors relative to the "
            "size of each step's values (the table's last column)."
        )
    return wrong(
        f"{answer!r} is off by {by_name[answer].relative_error:.1%} of its largest value; another step is off by "
        "more. Sort the table by its last column."
    )


def check_largest_error_step(answer: object, swap, x: np.ndarray) -> None:
    """Print the feedback of exercise 3: ``answer`` judged on the steps of ``swap``'s head on ``x`` at
    :data:`EX3_N_BITS` bits (section 3's steps, at the swap's own width, are what a hint compares with)."""
    print(feedback_largest_error_step(answer, steps_at_bits(swap, x), previous=swap.head.steps(x)))


def solution_largest_error_step(steps: Sequence[tuple[str, DualArray]]) -> str:
    """Reference solution of exercise 3: the step whose largest error is the largest share of its values."""
    rows = step_rows(steps)
    return max(rows, key=lambda row: row.relative_error).name


def solution_largest_error_step_at_bits(swap, x: np.ndarray) -> str:
    """Reference solution of exercise 3 as the notebook asks it: the head at :data:`EX3_N_BITS` bits, then the
    step with the largest relative error."""
    steps = steps_at_bits(swap, x, EX3_N_BITS)
    return solution_largest_error_step(steps)


# ---------------------------------------------------------------------- the worked solutions
def _check_lookup_count_and_compare(tokens: int | None = None, head_dim: int | None = None, measured=None) -> None:
    check_lookup_count(solution_lookup_count)
    if tokens is not None and head_dim is not None:
        counted = solution_lookup_count(tokens, head_dim)
        print(
            f"for the prompt of section 3 ({tokens} tokens, head dimension {head_dim}): {counted:,} lookups"
            + (f" (measured: {measured:,})" if measured is not None else "")
        )


def _check_largest_error_step_and_show(swap, x: np.ndarray) -> None:
    steps = steps_at_bits(swap, x, EX3_N_BITS)  # built once: the reference's answer, its check and the table
    print(feedback_largest_error_step(solution_largest_error_step(steps), steps, previous=swap.head.steps(x)))
    print(steps_dataframe(steps).sort_values("relative error", ascending=False, kind="stable").head(4).to_string())


SOLUTIONS: dict[int, Solution] = {
    1: Solution(
        r"""**Exercise 1.** Go through the arrows: q, k and v are three $(T, d)$ arrays; the scores, the exponentials
and the probabilities are $(T, T)$ each (the masked entries too: the mask is applied by multiplication, for free, but
the lookup runs on the whole array); the inverse of the row sums is $(T, 1)$; the output is $(T, d)$. In total
$4Td + 3T^2 + T$.""",
        solution_lookup_count,
        _check_lookup_count_and_compare,
    ),
    2: Solution(
        r"""**Exercise 2.** Run section 6's sweep with `head=EX2_HEAD`, then go through its results by increasing
`n_bits` and stop at the first that reaches the target. On the bundled model, head 1 matters more than head 0
(remove it and the top-1 agreement falls much lower), and it needs more bits for the same agreement. One setting
for a whole layer is set by its most demanding head, one reason why notebook 04's layer loses more than one head.
(The curve is measured on a finite sample and need not be perfectly monotonic: a deployment would also check that
the bits above the answer stay above the target.)""",
        solution_other_head_n_bits,
        _check_other_head_and_show,
    ),
    3: Solution(
        r"""**Exercise 3.** Build the head at 8 bits and compare errors relative to the size of each step's values
(the table's last column: an absolute error means little when the row sums reach several units and the
probabilities stay below 1). At 4 bits the exponential was the worst step: its input, the shifted scores, is
quantized in coarse steps, and $e^s$ turns a small absolute error on $s$ into a large relative one. At 8 bits that
error has shrunk several times; on the bundled model the worst step is now the head's **output**, whose error hardly
moved from 4 bits. Its float values on this prompt reach beyond the range its quantizer learnt from the 64
calibration passages, so the largest values saturate at the top of the range: more bits make the steps finer but do
not widen the range. That error is **clipping**, not rounding; the remedies are calibration data closer to what the
model will read, or a range with a margin, and notebook 04 weighs the opposite trade (clipping rare outliers on
purpose to get finer steps for the rest).""",
        solution_largest_error_step_at_bits,
        _check_largest_error_step_and_show,
    ),
}


def solution(number: int, *data: object) -> None:
    """Show the worked solution of exercise ``number`` of notebook 02, and its check passing: exercise 1 takes
    optionally ``(T, head_dim, measured)`` to compare with the prompt's count, exercise 2 section 6's sweep
    ``results`` then what sweeping another head takes ``(model, tokenizer, passages, calibration_prompts,
    reference)``, exercise 3 the notebook's ``swap`` and the prompt's ``x``."""
    show_solution(SOLUTIONS, number, *data)
