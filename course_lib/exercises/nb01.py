"""Exercises of notebook 01 (quantization): their data, checks and reference solutions.

1. :func:`check_scale_zero_point`: the scale and zero point of a range, by hand.
2. :func:`check_smallest_n_bits`: the fewest bits that meet an error tolerance.
3. :func:`check_sigmoid_table`: the integer function of a 3-bit sigmoid table lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real

import numpy as np

from ..error_analysis import round_trip_errors, smallest_n_bits
from ..quantization import Quantizer, QuantParams, compute_params
from . import Feedback, Solution, correct, not_attempted, show_solution, wrong

# ---------------------------------------------------------------------- exercise 1
#: The range and bits of exercise 1 (affine, unsigned).
EX1_RMIN, EX1_RMAX, EX1_N_BITS = -0.5, 1.5, 3


def feedback_scale_zero_point(answer: object) -> Feedback:
    """Judge ``answer = (scale, zero_point)`` for the range ``[EX1_RMIN, EX1_RMAX]`` on ``EX1_N_BITS`` unsigned bits."""
    if answer is None:
        return not_attempted("set `answer_1` to a pair (scale, zero_point), e.g. (0.1, 5).")
    if not (isinstance(answer, tuple | list) and len(answer) == 2 and all(_is_real(v) for v in answer)):
        return wrong(f"give a pair of two numbers (scale, zero_point), e.g. (0.1, 5); got {answer!r}.")
    scale, zero_point = float(answer[0]), float(answer[1])
    expected = compute_params(EX1_RMIN, EX1_RMAX, EX1_N_BITS)
    width, steps = EX1_RMAX - EX1_RMIN, 2**EX1_N_BITS - 1
    if not np.isclose(scale, expected.scale, rtol=1e-3, atol=0):
        if np.isclose(scale, width / 2**EX1_N_BITS, rtol=1e-3, atol=0):
            return wrong(
                f"scale = {scale:.4f} divides the width {width} by 2**{EX1_N_BITS} = {2**EX1_N_BITS}. "
                f"{EX1_N_BITS} bits give {2**EX1_N_BITS} integers, 0..{steps}, but only {steps} steps between "
                "the first and the last: divide by the number of steps."
            )
        return wrong(
            f"scale = {scale:.4f} is not the real width of one integer step. The range [{EX1_RMIN}, {EX1_RMAX}] "
            f"must be spread over the integers 0..{steps}: scale = (rmax - rmin) / (number of steps)."
        )
    if zero_point != round(zero_point):
        return wrong(
            f"the scale is right, but zero_point = {zero_point} is not an integer. The zero point is the integer "
            "that stands for the real 0.0, so it must be an integer: round it to the nearest one."
        )
    if zero_point == -expected.zero_point and zero_point != expected.zero_point:
        return wrong(
            f"the scale is right, but the zero point has the wrong sign. rmin = {EX1_RMIN} maps to the integer 0, "
            "and 0.0 lies above rmin, so the integer standing for 0.0 lies above 0 too."
        )
    if zero_point != expected.zero_point:
        return wrong(
            f"the scale is right, but zero_point = {zero_point:.0f} is not. rmin must map to the smallest integer, "
            "0: solve 0 = rmin / scale + zero_point for zero_point, then round it."
        )
    return correct(f"scale = {expected.scale:.4f}, zero_point = {expected.zero_point}.")


def check_scale_zero_point(answer: object) -> None:
    """Print the feedback of exercise 1."""
    print(feedback_scale_zero_point(answer))


def solution_scale_zero_point() -> tuple[float, int]:
    """Reference solution of exercise 1: the formulas, written out."""
    steps = 2**EX1_N_BITS - 1  # 3 bits: integers 0..7, i.e. 7 steps
    scale = (EX1_RMAX - EX1_RMIN) / steps  # real width of one step: 2 / 7
    zero_point = int(np.rint(0 - EX1_RMIN / scale))  # rmin lands on integer 0: 0.5 / (2/7) = 1.75 -> 2
    return scale, zero_point


# ---------------------------------------------------------------------- exercise 2
#: The largest round-trip error allowed in exercise 2.
EX2_TOLERANCE = 0.01


#: The one outlier among exercise 2's values; the other 1,999 are normal around 0 with standard deviation 0.1.
EX2_OUTLIER = 3.0


def ex2_data() -> np.ndarray:
    """The data of exercise 2: 2,000 activation-like values (seeded, always the same).

    1,999 values are drawn from a normal distribution around 0 (standard deviation 0.1); one is ``EX2_OUTLIER``,
    shuffled in among them. Min/max calibration spans the outlier, so it sets the step, as outlier channels do in
    real activations.
    """
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(loc=0.0, scale=0.1, size=1999), [EX2_OUTLIER]])
    rng.shuffle(values)
    return values


def feedback_smallest_n_bits(answer: object) -> Feedback:
    """Judge ``answer``: the fewest bits for which ``ex2_data()`` round-trips within ``EX2_TOLERANCE``."""
    if answer is None:
        return not_attempted("set `answer_2` to a number of bits (an integer from 2 to 16).")
    if isinstance(answer, bool) or not isinstance(answer, int | np.integer):
        return wrong(f"give the number of bits as an integer, got {answer!r}.")
    if not 2 <= int(answer) <= 16:
        return wrong(f"the quantizers take 2 to 16 bits, got {answer}.")
    n_bits = int(answer)
    data = ex2_data()
    expected = smallest_n_bits(data, EX2_TOLERANCE)
    if n_bits < expected:
        (result,) = round_trip_errors(data, [n_bits])
        hint = ""
        if n_bits == smallest_n_bits(data[data != EX2_OUTLIER], EX2_TOLERANCE):
            hint = (
                " That would be enough for the bulk of the values, but min/max calibration spans every value: "
                "look at the data's max."
            )
        return wrong(
            f"with {n_bits} bits the largest round-trip error is {result.max_error:.4f}, above the tolerance "
            f"{EX2_TOLERANCE}: more bits are needed.{hint}"
        )
    if n_bits > expected:
        (fewer,) = round_trip_errors(data, [n_bits - 1])
        return wrong(
            f"{n_bits} bits are precise enough, but so are {n_bits - 1} (largest error {fewer.max_error:.4f} "
            f"<= {EX2_TOLERANCE}). Every extra bit costs in FHE: find the smallest."
        )
    (result,) = round_trip_errors(data, [n_bits])
    return correct(f"{n_bits} bits: largest round-trip error {result.max_error:.4f} <= {EX2_TOLERANCE}.")


def check_smallest_n_bits(answer: object) -> None:
    """Print the feedback of exercise 2."""
    print(feedback_smallest_n_bits(answer))


def solution_smallest_n_bits() -> int:
    """Reference solution of exercise 2: try 2, 3, ... bits until the round trip is precise enough."""
    data = ex2_data()
    for n_bits in range(2, 17):
        quantizer = Quantizer(n_bits)
        quantizer.calibrate(data)
        error = np.max(np.abs(quantizer.dequantize(quantizer.quantize(data)) - data))
        if error <= EX2_TOLERANCE:
            return n_bits
    raise AssertionError("unreachable: 16 bits are always enough for this data")


# ---------------------------------------------------------------------- exercise 3
#: Input of the table lookup: 3-bit unsigned integers 0..7 standing for the reals -4..3.
EX3_IN = QuantParams(n_bits=3, scale=1.0, zero_point=4, signed=False)
#: Output of the table lookup: 3-bit unsigned, calibrated on [0, 0.875] (scale 0.125, zero point 0).
EX3_OUT = compute_params(0.0, 0.875, 3)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function ``1 / (1 + exp(-x))``."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def feedback_sigmoid_table(answer: object) -> Feedback:
    """Judge ``answer``: a function from input integers (``EX3_IN``) to the sigmoid's output integers (``EX3_OUT``)."""
    if answer is None:
        return not_attempted("define `sigmoid_table` as a function of an array of input integers q (0..7).")
    if not callable(answer):
        return wrong(f"`sigmoid_table` must be a function of the input integers, got {type(answer).__name__}.")
    fn: Callable[[np.ndarray], object] = answer
    q = np.arange(EX3_IN.qmin, EX3_IN.qmax + 1)
    try:
        got = np.asarray(fn(q.copy()))
    except Exception as error:  # any error of the learner's code is feedback, not a crash
        return wrong(f"calling your function on the integers {q.tolist()} raised {type(error).__name__}: {error}")
    if got.shape != q.shape:
        return wrong(
            f"on the {q.size} input integers {q.tolist()} your function returned shape {got.shape}, "
            f"not {q.shape}: it must work elementwise on a NumPy array."
        )
    if not np.issubdtype(got.dtype, np.number) or np.issubdtype(got.dtype, np.complexfloating):
        return wrong(f"your function returned {got.dtype} values, not integers.")
    if not np.all(got == np.round(got)):
        return wrong(
            f"your function returned non-integers ({_fmt(got)}). A table lookup maps integers to integers: "
            "quantize the sigmoid's output with EX3_OUT's scale and zero point."
        )
    got = got.astype(np.int64)
    expected = solution_sigmoid_table(q)
    if np.array_equal(got, expected):
        return correct(f"the table is {expected.tolist()}.")
    real_in = EX3_IN.dequantize(q)
    raw = sigmoid(real_in) / EX3_OUT.scale + EX3_OUT.zero_point
    if np.array_equal(
        got,
        np.clip(np.rint(sigmoid(q * EX3_IN.scale) / EX3_OUT.scale + EX3_OUT.zero_point), EX3_OUT.qmin, EX3_OUT.qmax),
    ):
        return wrong(
            f"you took q * scale as the real input; the input zero point is {EX3_IN.zero_point}: "
            "the real input is scale * (q - zero_point)."
        )
    if np.array_equal(got, np.rint(raw)):
        return wrong(
            f"your function gives {_fmt(got)}, and {got.max()} is above the largest 3-bit output integer "
            f"{EX3_OUT.qmax}: clip the result to {EX3_OUT.qmin}..{EX3_OUT.qmax}."
        )
    if np.array_equal(got, np.clip(np.floor(raw), EX3_OUT.qmin, EX3_OUT.qmax)):
        return wrong("your function rounds down (floor, or int()); quantization rounds to the nearest integer.")
    bad = np.flatnonzero(got != expected)
    return wrong(
        f"for the input integers {q[bad].tolist()} (reals {_fmt(real_in[bad])}) your function gives "
        f"{got[bad].tolist()}, which are not the quantized sigmoid values. Dequantize the input, apply the "
        "sigmoid, quantize the output: round, then clip."
    )


def check_sigmoid_table(answer: object) -> None:
    """Print the feedback of exercise 3."""
    print(feedback_sigmoid_table(answer))


def solution_sigmoid_table(q: np.ndarray) -> np.ndarray:
    """Reference solution of exercise 3: dequantize, apply the sigmoid, quantize (round, then clip)."""
    real_in = EX3_IN.scale * (np.asarray(q, dtype=np.float64) - EX3_IN.zero_point)
    real_out = sigmoid(real_in)
    q_out = np.rint(real_out / EX3_OUT.scale + EX3_OUT.zero_point)
    return np.clip(q_out, EX3_OUT.qmin, EX3_OUT.qmax).astype(np.int64)


# ---------------------------------------------------------------------- helpers
def _is_real(value: object) -> bool:
    return isinstance(value, Real | np.floating | np.integer) and not isinstance(value, bool) and np.isfinite(value)


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in np.asarray(values, dtype=np.float64).ravel()) + "]"


# ---------------------------------------------------------------------- the worked solutions
SOLUTIONS: dict[int, Solution] = {
    1: Solution(
        r"""**Exercise 1.** 3 bits give the 8 integers $0 \dots 7$, hence **7 steps**: $s = (1.5 - (-0.5)) / 7 = 2/7$
(dividing by 8 is the classic mistake). The integer $0$ stands for $r_{min} = -0.5$, so the real $0$ lies
$0.5 / s = 1.75$ steps higher, rounded: $z = 2$.""",
        solution_scale_zero_point,
        lambda: check_scale_zero_point(solution_scale_zero_point()),
    ),
    2: Solution(
        r"""**Exercise 2.** The largest error is half a step, $(r_{max} - r_{min}) / (2 (2^n - 1))$, and min/max
calibration takes $r_{max}$ from the one outlier at 3.0: the span is about $3.0 - (-0.35) = 3.35$, so
$2^n - 1 \ge 3.35 / (2 \times 0.01) \approx 168$, hence **8 bits** (255 steps; 7 bits give 127). The other 1,999
values span about 0.73 and alone would need 6 bits: one value costs two bits, on every lookup that reads this tensor.
Clipping the range at a percentile instead of min/max (notebook 04) buys them back, at the price of a large error on
the outlier itself. The code checks the estimate by trying 2, 3, ... bits.""",
        solution_smallest_n_bits,
        lambda: check_smallest_n_bits(solution_smallest_n_bits()),
    ),
    3: Solution(
        r"""**Exercise 3.** Dequantize the input, apply the function, quantize the output: **round, then clip** to
the output's integers. Without the clip, the largest input would map one past the last integer that 3 bits hold.""",
        solution_sigmoid_table,
        lambda: check_sigmoid_table(solution_sigmoid_table),
    ),
}


def solution(number: int) -> None:
    """Show the worked solution of exercise ``number`` (1 to 3) of notebook 01, and its check passing."""
    show_solution(SOLUTIONS, number)
