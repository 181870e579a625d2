"""course_lib.lookup_errors: what p_error means, measured in concrete's simulation (the wrong lookups' count
against the binomial range p_error predicts, where they land), and the checks on its arguments."""

import numpy as np
import pytest

from course_lib.lookup_errors import (
    OUTSIDE,
    LookupErrors,
    compile_lookup,
    lookup_table,
    measure_lookup_errors,
)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_the_table_is_a_permutation(bits):
    table = lookup_table(bits)
    assert sorted(table.tolist()) == list(range(2**bits))


def test_wrong_lookups_follow_p_error_and_land_next_to_the_right_row():
    result = measure_lookup_errors(0.1, lookups=50_000, seed=1)
    assert 0.05 < result.p_error <= 0.1  # the compiler meets the requested bound
    assert sum(result.landed.values()) == result.lookups == 50_000
    assert result.as_expected, (result.wrong, result.expected_range())
    neighbours = result.landed.get(-1, 0) + result.landed.get(1, 0) + result.landed.get(OUTSIDE, 0)
    assert neighbours >= 0.99 * result.wrong  # off by one row, or across the table's first or last row


def test_a_lower_p_error_costs_more():
    assert compile_lookup(1e-6, lookups=8).complexity > compile_lookup(0.1, lookups=8).complexity


def test_expected_range_is_the_binomial_spread():
    result = LookupErrors(p_error=0.01, complexity=1.0, lookups=10_000, landed={0: 9_900, 1: 100})
    assert result.wrong == 100 and result.rate == 0.01
    spread = 4 * np.sqrt(10_000 * 0.01 * 0.99)
    assert result.expected_range() == (int(np.floor(100 - spread)), int(np.ceil(100 + spread)))
    assert result.as_expected
    assert not LookupErrors(p_error=0.01, complexity=1.0, lookups=10_000, landed={0: 9_700, -1: 300}).as_expected


@pytest.mark.parametrize("p_error", [0, 1, -0.1, 1.5, True, "0.1"])
def test_refuses_what_is_not_a_probability(p_error):
    with pytest.raises(ValueError, match="p_error must be a probability strictly between 0 and 1"):
        compile_lookup(p_error)


@pytest.mark.parametrize("kwargs, message", [({"bits": 1}, "bits must be"), ({"lookups": 0}, "lookups must be")])
def test_refuses_sizes_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compile_lookup(0.1, **kwargs)
