"""course_lib.exercises.nb02, notebook 02's exercises: the reference solutions pass their checks, and wrong answers
are rejected."""

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_worked_solutions

from course_lib.attention import HeadWeights, QuantizedHead
from course_lib.config import PUBLISHED
from course_lib.dual_array import DualArray
from course_lib.evaluation import Agreement
from course_lib.exercises import Feedback
from course_lib.exercises import nb02 as ex
from course_lib.fast_attention import build_head
from course_lib.reporting import step_rows

#: The prompt of notebook 02's section 2, on which exercise 3's head is read.
NOTEBOOK_PROMPT = "Cryptography is the practice of hiding a message from everyone but its reader."

# ---------------------------------------------------------------------- exercise 1: lookups of the head


class CountingApply:
    """Count the elements that go through DualArray.apply (every table lookup), independently of course_lib."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self.elements = 0
        original = DualArray.apply

        def counting(array, fn, quantizer, **kwargs):
            if not array.calibrating:
                self.calls += 1
                self.elements += int(np.size(array.int))
            return original(array, fn, quantizer, **kwargs)

        monkeypatch.setattr(DualArray, "apply", counting)


def random_head(n_embd, head_dim, n_bits=4, seed=0):
    rng = np.random.default_rng(seed)
    head = QuantizedHead(HeadWeights.random(n_embd, head_dim, seed=seed), n_bits)
    head.calibrate([rng.normal(size=(t, n_embd)) for t in (3, 7)])
    return head


@pytest.mark.parametrize("tokens, head_dim", [(1, 2), (4, 2), (9, 6), (12, 16)])
def test_ex1_solution_counts_the_lookups_the_head_makes(monkeypatch, tokens, head_dim):
    head = random_head(n_embd=10, head_dim=head_dim)
    counter = CountingApply(monkeypatch)
    head.run(np.random.default_rng(1).normal(size=(tokens, 10)))
    assert counter.calls == 8
    assert counter.elements == ex.solution_lookup_count(tokens, head_dim)


def test_ex1_solution_counts_the_bundled_models_head(bundled, monkeypatch):
    from course_lib.data import load_calibration_prompts
    from course_lib.gpt2 import SwappedHead

    model, tokenizer = bundled
    with SwappedHead(model, 0, 0, n_bits=4) as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=4))
        (x,) = swap.attention_inputs(tokenizer, ["Cryptography is a method of protecting information"])
        counter = CountingApply(monkeypatch)
        swap.head.run(x)
    head_dim = model.config.n_embd // model.config.n_head
    assert counter.elements == ex.solution_lookup_count(len(x), head_dim)


def test_ex1_the_check_measures_the_same_count():
    for tokens, head_dim in ex.EX1_CASES:
        assert ex.measured_lookup_count(tokens, head_dim) == ex.solution_lookup_count(tokens, head_dim)


def test_ex1_solution_is_correct_and_other_forms_too():
    assert ex.feedback_lookup_count(ex.solution_lookup_count).correct
    assert ex.feedback_lookup_count(lambda t, d: 4 * t * d + 3 * t**2 + t).correct
    assert ex.feedback_lookup_count(lambda t, d: float(t * (4 * d + 3 * t + 1))).correct
    assert ex.feedback_lookup_count(lambda t, d: np.int64(4 * t * d + 3 * t * t + t)).correct


@pytest.mark.parametrize(
    "answer, hint",
    [
        (8, "must be a function"),
        (lambda t, d: 8, "lookup *calls*"),
        (lambda t, d: 4 * t * d + 3 * t * t, "1 / (row sum)"),
        (lambda t, d: 3 * t * d + 3 * t * t + t, "output (probs @ v)"),
        (lambda t, d: 2 * t * d + 3 * t * t + t, "three lookups"),
        (lambda t, d: 4 * t * d + 2 * t * t + t, "(T, T) lookups"),
        (lambda t, d: 4 * t * d + t * t + t, "(T, T) lookups"),
        (lambda t, d: t * d, "Go through the (L) arrows"),
        (lambda t, d: 4 * t * d + 3 * t * t + t + 0.5, "whole number"),
        (lambda t, d: "many", "whole number"),
        (lambda t, d: True, "whole number"),
        (lambda t: t, "raised TypeError"),
    ],
)
def test_ex1_wrong_answers_are_rejected_with_a_hint(answer, hint):
    feedback = ex.feedback_lookup_count(answer)
    assert feedback.status == "wrong"
    assert feedback.message.startswith("Not quite: ")
    assert hint in feedback.message


# ---------------------------------------------------------------------- exercise 2: smallest n_bits


def sweep(top1):
    return [Agreement(n_bits, {1: share, 5: min(1.0, share + 0.01), 10: 1.0}, 1000) for n_bits, share in top1.items()]


RESULTS = sweep({2: 0.80, 3: 0.93, 4: 0.975, 5: 0.991, 6: 0.985, 7: 0.996, 8: 0.999})


def test_ex2_solution():
    assert ex.solution_smallest_n_bits_for_agreement(RESULTS) == 5
    assert ex.solution_smallest_n_bits_for_agreement(RESULTS, target=0.9) == 3
    assert ex.solution_smallest_n_bits_for_agreement(list(reversed(RESULTS)), target=0.97) == 4
    assert ex.feedback_smallest_n_bits_for_agreement(5, RESULTS).correct
    assert ex.feedback_smallest_n_bits_for_agreement(np.int64(3), RESULTS, target=0.9).correct
    with pytest.raises(ValueError, match="no n_bits"):
        ex.solution_smallest_n_bits_for_agreement(RESULTS, target=0.9999)


@pytest.mark.parametrize(
    "answer, target, hint",
    [
        (4, ex.EX2_TARGET, "more bits are needed"),
        (6, ex.EX2_TARGET, "more bits are needed"),  # the curve is not monotonic: 6 bits fall below
        (7, ex.EX2_TARGET, "find the smallest"),
        (8, 0.9, "find the smallest"),
        (12, ex.EX2_TARGET, "no result for 12 bits"),
        (5.0, ex.EX2_TARGET, "as an integer"),
        ("5", ex.EX2_TARGET, "as an integer"),
        (True, ex.EX2_TARGET, "as an integer"),
        (8, 0.9999, "no n_bits of this sweep reaches"),
    ],
)
def test_ex2_wrong_answers_are_rejected_with_a_hint(answer, target, hint):
    feedback = ex.feedback_smallest_n_bits_for_agreement(answer, RESULTS, target)
    assert feedback.status == "wrong"
    assert hint in feedback.message


OTHER_HEAD = sweep({2: 0.70, 3: 0.71, 4: 0.84, 5: 0.92, 6: 0.96, 7: 0.978, 8: 0.989, 9: 0.995})


def test_ex2_other_head_feedback():
    assert ex.feedback_other_head_n_bits(9, OTHER_HEAD, RESULTS).correct
    assert "Head 0 needs 5" in ex.feedback_other_head_n_bits(9, OTHER_HEAD, RESULTS).message
    assert "head 0's answer" in ex.feedback_other_head_n_bits(5, OTHER_HEAD, RESULTS).message
    assert "more bits are needed" in ex.feedback_other_head_n_bits(8, OTHER_HEAD, RESULTS).message
    assert ex.feedback_other_head_n_bits(None, [], RESULTS).status == "not attempted"


def test_ex2_check_sweeps_only_when_answered(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(ex, "sweep_other_head", lambda *args: calls.append(args) or OTHER_HEAD)
    ex.check_other_head_n_bits(None, RESULTS, "model", "tokenizer", "passages", "prompts", "reference")
    assert calls == [] and "Not attempted" in capsys.readouterr().out
    ex.check_other_head_n_bits(9, RESULTS, "model", "tokenizer", "passages", "prompts", "reference")
    assert len(calls) == 1 and "Correct!" in capsys.readouterr().out


@pytest.mark.slow
def test_ex2_reference_solution_sweeps_the_other_head_of_the_bundled_model():
    from course_lib.data import load_calibration_prompts, load_evaluation_passages
    from course_lib.evaluation import float_top1
    from course_lib.models import load_model, load_tokenizer

    model, tokenizer = load_model("course-gpt2"), load_tokenizer("course-gpt2")
    passages, prompts = load_evaluation_passages(12), load_calibration_prompts()
    reference = float_top1(model, tokenizer, passages)
    results = ex.sweep_other_head(model, tokenizer, passages, prompts, reference)
    assert [r.n_bits for r in results] == list(ex.EX2_N_BITS)
    assert ex.sweep_other_head(model, tokenizer, passages, prompts, reference) is results  # swept once
    answer = ex.solution_other_head_n_bits(model, tokenizer, passages, prompts, reference)
    assert answer == ex.solution_smallest_n_bits_for_agreement(results)
    assert ex.feedback_other_head_n_bits(answer, results, results).correct


# ---------------------------------------------------------------------- exercise 3: the step with the largest error


@pytest.fixture(scope="module")
def steps():
    head = random_head(n_embd=16, head_dim=4, n_bits=3)
    return head.steps(np.random.default_rng(2).normal(size=(8, 16)))


@pytest.fixture(scope="module")
def small_swap():
    """A stand-in for the notebook's calibrated swap (what exercise 3's check reads of it) and an input x."""
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(t, 16)) for t in (3, 7)]
    config = PUBLISHED.replace(n_bits=3)
    head = build_head(HeadWeights.random(16, 4, seed=0), config)
    head.calibrate(inputs)
    swap = SimpleNamespace(is_calibrated=True, head=head, config=config, calibration_inputs=inputs)
    return swap, 2.0 * rng.normal(size=(8, 16))  # twice the calibration's spread: some values saturate


def test_ex3_solution(steps):
    rows = step_rows(steps)
    expected = ex.solution_largest_error_step(steps)
    assert max(r.relative_error for r in rows) == next(r.relative_error for r in rows if r.name == expected)
    assert ex.feedback_largest_error_step(expected, steps).correct


def test_ex3_wrong_answers_are_rejected_with_a_hint(steps):
    rows = step_rows(steps)
    expected = ex.solution_largest_error_step(steps)
    largest_absolute = max(rows, key=lambda r: r.max_error).name
    assert largest_absolute != expected  # the trap the exercise is about exists in this data
    feedback = ex.feedback_largest_error_step(largest_absolute, steps)
    assert feedback.status == "wrong" and "relative to the size" in feedback.message
    smallest = min(rows, key=lambda r: r.relative_error).name
    feedback = ex.feedback_largest_error_step(smallest, steps)
    assert feedback.status == "wrong" and "Sort the table" in feedback.message
    for answer in ("Q", "softmax", 3):
        feedback = ex.feedback_largest_error_step(answer, steps)
        assert feedback.status == "wrong" and "exactly as in the table" in feedback.message


def test_ex3_steps_at_bits_builds_a_new_head_and_leaves_the_swap_alone(small_swap):
    swap, x = small_swap
    before = swap.head.quantizers["output"].params
    steps = dict(ex.steps_at_bits(swap, x, 6))
    assert steps["q"].params.n_bits == 6 and steps["output"].params.n_bits == 6
    assert swap.head.quantizers["output"].params == before and swap.config.n_bits == 3
    with pytest.raises(RuntimeError, match="calibrate the swap first"):
        ex.steps_at_bits(SimpleNamespace(is_calibrated=False), x)


def test_ex3_check_judges_the_head_at_8_bits_and_hints_at_the_4_bit_answer(small_swap, capsys):
    swap, x = small_swap
    at_8 = ex.steps_at_bits(swap, x)
    expected = ex.solution_largest_error_step_at_bits(swap, x)
    assert expected == ex.solution_largest_error_step(at_8)
    ex.check_largest_error_step(expected, swap, x)
    assert capsys.readouterr().out.startswith("Correct!")
    previous = swap.head.steps(x)
    worst_before = ex.solution_largest_error_step(previous)
    if worst_before != expected:
        feedback = ex.feedback_largest_error_step(worst_before, at_8, previous=previous)
        assert feedback.status == "wrong" and "section 3's table" in feedback.message


def test_ex3_correct_answer_names_clipping_when_the_values_leave_the_range():
    head = random_head(n_embd=16, head_dim=4, n_bits=6)
    steps = head.steps(5.0 * np.random.default_rng(4).normal(size=(8, 16)))  # far outside the calibration
    clipped = [name for name, value in steps if ex._outside_range(value) is not None]
    assert clipped
    worst = ex.solution_largest_error_step(steps)
    message = ex.feedback_largest_error_step(worst, steps).message
    assert ("clipping, not rounding" in message) == (worst in clipped)


def test_ex3_on_the_bundled_model_the_worst_step_at_8_bits_is_the_clipped_output(bundled):
    """What the worked solution says of the bundled model: exp is the worst at 4 bits, the output at 8, clipped."""
    from course_lib.data import load_calibration_prompts
    from course_lib.gpt2 import SwappedHead

    model, tokenizer = bundled
    with SwappedHead(model, 0, 0, n_bits=4) as swap:
        swap.calibrate(tokenizer, load_calibration_prompts())
        (x,) = swap.attention_inputs(tokenizer, [NOTEBOOK_PROMPT])
        assert ex.solution_largest_error_step(swap.head.steps(x)) == "exp"
        answer = ex.solution_largest_error_step_at_bits(swap, x)
        assert answer == "output"
        feedback = ex.feedback_largest_error_step(answer, ex.steps_at_bits(swap, x))
        assert feedback.correct and "clipping, not rounding" in feedback.message


# ---------------------------------------------------------------------- what the notebook prints


def test_checks_print_not_attempted_then_correct(small_swap, capsys):
    for check, args, solution in [
        (ex.check_lookup_count, (), ex.solution_lookup_count),
        (ex.check_largest_error_step, small_swap, ex.solution_largest_error_step_at_bits(*small_swap)),
    ]:
        check(None, *args)
        assert capsys.readouterr().out.startswith("Not attempted yet: ")
        check(solution, *args)
        assert capsys.readouterr().out.startswith("Correct!")


@pytest.mark.parametrize(
    "feedback_fn, args",
    [
        (ex.feedback_lookup_count, ()),
        (ex.feedback_smallest_n_bits_for_agreement, (RESULTS,)),
        (ex.feedback_largest_error_step, ([],)),
    ],
)
def test_none_is_not_attempted_never_wrong(feedback_fn, args):
    feedback = feedback_fn(None, *args)
    assert isinstance(feedback, Feedback)
    assert feedback.status == "not attempted" and not feedback.correct
    assert str(feedback).startswith("Not attempted yet: ")


# ---------------------------------------------------------------------- the worked solutions, on request
def test_each_worked_solution_shows_its_reasoning_code_and_passing_check(small_swap, capsys, monkeypatch):
    swept = {}
    monkeypatch.setattr(ex, "sweep_other_head", lambda *args: swept.setdefault("results", OTHER_HEAD))
    data_2 = (RESULTS, "model", "tokenizer", "passages", "prompts", "reference")
    assert_worked_solutions(ex, {1: (5, 8, ex.solution_lookup_count(5, 8)), 2: data_2, 3: small_swap}, capsys)
    ex.solution(1)  # the comparison with the prompt's count is optional
    assert "Correct!" in capsys.readouterr().out
