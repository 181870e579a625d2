"""course_lib.exercises.nb01, notebook 01's exercises: the reference solutions pass their checks, and wrong answers
are rejected."""

import numpy as np
import pytest

from course_lib.error_analysis import smallest_n_bits
from course_lib.exercises import Feedback
from course_lib.exercises import nb01 as ex
from course_lib.quantization import Quantizer, compute_params

# ---------------------------------------------------------------------- exercise 1: scale and zero point


def test_ex1_solution_is_correct_and_matches_compute_params():
    scale, zero_point = ex.solution_scale_zero_point()
    params = compute_params(ex.EX1_RMIN, ex.EX1_RMAX, ex.EX1_N_BITS)
    assert (scale, zero_point) == (params.scale, params.zero_point) == (pytest.approx(2 / 7), 2)
    assert ex.feedback_scale_zero_point((scale, zero_point)).correct


def test_ex1_accepts_a_rounded_scale_and_a_list():
    assert ex.feedback_scale_zero_point((0.2857, 2)).correct
    assert ex.feedback_scale_zero_point([0.2857, np.int64(2)]).correct


@pytest.mark.parametrize(
    "answer, hint",
    [
        ((0.25, 2), "divide by the number of steps"),  # divided by 2**n instead of 2**n - 1
        ((2 / 7, 1.75), "not an integer"),  # forgot to round the zero point
        ((2 / 7, -2), "wrong sign"),
        ((2 / 7, 3), "solve 0 = rmin / scale + zero_point"),
        ((2 / 7, 0), "solve 0 = rmin / scale + zero_point"),
        ((0.5, 2), "real width of one integer step"),
        ((2 / 7,), "a pair of two numbers"),
        ("0.2857, 2", "a pair of two numbers"),
        ((True, 2), "a pair of two numbers"),
        ((float("nan"), 2), "a pair of two numbers"),
    ],
)
def test_ex1_wrong_answers_are_rejected_with_a_hint(answer, hint):
    feedback = ex.feedback_scale_zero_point(answer)
    assert feedback.status == "wrong"
    assert feedback.message.startswith("Not quite: ")
    assert hint in feedback.message


# ---------------------------------------------------------------------- exercise 2: smallest n_bits


def test_ex2_solution_is_correct_and_not_borderline():
    n_bits = ex.solution_smallest_n_bits()
    assert n_bits == 8
    assert ex.feedback_smallest_n_bits(n_bits).correct
    assert ex.feedback_smallest_n_bits(np.int64(n_bits)).correct
    # a clear margin on both sides, so no rounding detail can flip the answer
    data = ex.ex2_data()
    for bits, low, high in [(n_bits, 0.0, 0.8 * ex.EX2_TOLERANCE), (n_bits - 1, 1.2 * ex.EX2_TOLERANCE, np.inf)]:
        q = Quantizer(bits)
        q.calibrate(data)
        error = np.max(np.abs(q.dequantize(q.quantize(data)) - data))
        assert low <= error <= high


def test_ex2_data_is_always_the_same():
    np.testing.assert_array_equal(ex.ex2_data(), ex.ex2_data())
    assert ex.ex2_data().shape == (2000,)


def test_ex2_is_not_read_off_section_3s_table():
    """Section 3's table (other data, span about 7.2) says 9 bits for 0.01; the outlier makes this data need 8,
    and its bulk alone 6, so neither the table nor the bulk's spread gives the answer."""
    data = ex.ex2_data()
    assert np.count_nonzero(data == ex.EX2_OUTLIER) == 1
    bulk = data[data != ex.EX2_OUTLIER]
    assert smallest_n_bits(bulk, ex.EX2_TOLERANCE) == 6
    assert ex.solution_smallest_n_bits() not in (6, 9)
    assert "look at the data's max" not in ex.feedback_smallest_n_bits(7).message


@pytest.mark.parametrize(
    "answer, hint",
    [
        (7, "more bits are needed"),
        (6, "look at the data's max"),
        (2, "more bits are needed"),
        (9, "find the smallest"),
        (16, "find the smallest"),
        (9.0, "as an integer"),
        ("9", "as an integer"),
        (True, "as an integer"),
        (1, "2 to 16 bits"),
        (17, "2 to 16 bits"),
    ],
)
def test_ex2_wrong_answers_are_rejected_with_a_hint(answer, hint):
    feedback = ex.feedback_smallest_n_bits(answer)
    assert feedback.status == "wrong"
    assert hint in feedback.message


# ---------------------------------------------------------------------- exercise 3: a sigmoid lookup table


def test_ex3_solution_is_correct():
    q = np.arange(8)
    assert ex.solution_sigmoid_table(q).tolist() == [0, 0, 1, 2, 4, 6, 7, 7]
    assert ex.feedback_sigmoid_table(ex.solution_sigmoid_table).correct
    # other correct ways of writing it are accepted too
    assert ex.feedback_sigmoid_table(lambda q: ex.EX3_OUT.quantize(ex.sigmoid(ex.EX3_IN.dequantize(q)))).correct
    assert ex.feedback_sigmoid_table(lambda q: [0, 0, 1, 2, 4, 6, 7, 7]).correct


def test_ex3_table_has_no_rounding_ties():
    # no entry lies (almost) exactly between two integers: round-half-up and half-to-even agree
    raw = ex.sigmoid(ex.EX3_IN.dequantize(np.arange(8))) / ex.EX3_OUT.scale + ex.EX3_OUT.zero_point
    assert np.min(np.abs(raw - np.floor(raw) - 0.5)) > 0.1


def test_ex3_solution_is_the_table_course_lib_builds():
    from course_lib.dual_array import DualArray

    out = Quantizer(3, name="sigmoid")
    out.calibrate([0.0, 0.875])
    assert out.params == ex.EX3_OUT
    q = np.arange(8)
    lookup = DualArray.from_int(q, ex.EX3_IN).apply(ex.sigmoid, out)
    np.testing.assert_array_equal(lookup.int, ex.solution_sigmoid_table(q))


def _quantize_out(real: np.ndarray) -> np.ndarray:
    return np.rint(real / ex.EX3_OUT.scale + ex.EX3_OUT.zero_point)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (3, "must be a function"),
        (lambda q: ex.sigmoid(q - 4), "non-integers"),  # forgot to quantize the output
        (lambda q: _quantize_out(ex.sigmoid(q - 4)), "clip the result"),  # forgot to clip
        (lambda q: np.clip(_quantize_out(ex.sigmoid(q)), 0, 7), "input zero point"),  # forgot the zero point
        (lambda q: np.clip(np.floor(ex.sigmoid(q - 4) / 0.125), 0, 7), "rounds down"),
        (lambda q: q, "not the quantized sigmoid values"),
        (lambda q: np.zeros(3, dtype=int), "returned shape"),
        (lambda q: 1 / 0, "raised ZeroDivisionError"),
        (lambda q: np.array(["a"] * 8), "not integers"),
    ],
)
def test_ex3_wrong_answers_are_rejected_with_a_hint(answer, hint):
    feedback = ex.feedback_sigmoid_table(answer)
    assert feedback.status == "wrong"
    assert hint in feedback.message


# ---------------------------------------------------------------------- what the notebook prints


@pytest.mark.parametrize(
    "check, solution",
    [
        (ex.check_scale_zero_point, ex.solution_scale_zero_point()),
        (ex.check_smallest_n_bits, ex.solution_smallest_n_bits()),
        (ex.check_sigmoid_table, ex.solution_sigmoid_table),
    ],
)
def test_checks_print_not_attempted_then_correct(check, solution, capsys):
    check(None)
    assert capsys.readouterr().out.startswith("Not attempted yet: ")
    check(solution)
    assert capsys.readouterr().out.startswith("Correct!")


@pytest.mark.parametrize(
    "feedback_fn", [ex.feedback_scale_zero_point, ex.feedback_smallest_n_bits, ex.feedback_sigmoid_table]
)
def test_none_is_not_attempted_never_wrong(feedback_fn):
    feedback = feedback_fn(None)
    assert isinstance(feedback, Feedback)
    assert feedback.status == "not attempted" and not feedback.correct
    assert str(feedback).startswith("Not attempted yet: ")


# ---------------------------------------------------------------------- the worked solutions, on request
@pytest.mark.parametrize("number", [1, 2, 3])
def test_each_worked_solution_shows_its_reasoning_code_and_passing_check(number, capsys):
    ex.solution(number)
    shown = capsys.readouterr().out
    assert f"**Exercise {number}.**" in shown  # the explanation (printed outside a notebook)
    assert f"def {ex.SOLUTIONS[number].reference.__name__}(" in shown  # the reference code
    assert "Correct!" in shown and "Not quite" not in shown


@pytest.mark.parametrize("number", [0, 4, "1", True])
def test_an_unknown_exercise_number_says_which_exist(number):
    with pytest.raises(ValueError, match=r"the exercises are \[1, 2, 3\]"):
        ex.solution(number)
