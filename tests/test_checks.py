"""course_lib.checks: what counts as an integer, and the message that says what is allowed."""

import numpy as np
import pytest

from course_lib.checks import check_integer, is_integer


@pytest.mark.parametrize("value", [0, 7, -3, np.int64(4), np.uint8(2)])
def test_python_and_numpy_integers_count(value):
    assert is_integer(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 4.0, "4", None, np.array([4])])
def test_bools_floats_text_and_arrays_do_not(value):
    assert not is_integer(value)


def test_a_valid_integer_comes_back_as_an_int():
    value = check_integer(np.int32(5), "length", 1, 8)
    assert value == 5 and type(value) is int


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, "length"), {"unit": "tokens"}, "length must be a positive integer (tokens), got 0"),
        ((True, "workers"), {}, "workers must be a positive integer, got True"),
        ((17, "n_bits", 2, 16), {}, "n_bits must be an integer from 2 to 16, got 17"),
        ((2.0, "n_bits", 2, 16), {}, "n_bits must be an integer from 2 to 16, got 2.0"),
        ((1, "drop", 2), {}, "drop must be an integer of at least 2, got 1"),
        ((3, "steps_up_to", 4), {"allowed": "an integer larger than length=3"}, "larger than length=3, got 3"),
    ],
)
def test_a_wrong_value_is_named_with_what_is_allowed(args, kwargs, message):
    with pytest.raises(ValueError) as error:
        check_integer(*args, **kwargs)
    assert str(error.value).endswith(message)
