"""course_lib.error_analysis: round-trip errors, the integer matmul error and its bounds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.error_analysis import (
    matmul_error_bound,
    matmul_error_typical,
    measure_matmul_error,
    quantized_matmul,
    round_trip_error,
    round_trip_errors,
    signed_bits,
    smallest_n_bits,
)
from course_lib.quantization import compute_params

SETTINGS = [(False, False), (False, True), (True, True)]  # (symmetric, signed)

# ---------------------------------------------------------------------- round trip


def test_round_trip_error_by_hand():
    # [0, 3] on 2 bits: levels 0, 1, 2, 3 (scale 1); 0.5 -> 0 (half to even), 1.25 -> 1, 2.75 -> 3
    params = compute_params(0.0, 3.0, 2)
    result = round_trip_error([0.0, 0.5, 1.25, 2.75, 3.0], params)
    assert (result.n_bits, result.scale, result.bound) == (2, 1.0, 0.5)
    assert result.max_error == 0.5
    assert result.rms_error == pytest.approx(np.sqrt((0.25 + 0.0625 + 0.0625) / 5))


def test_round_trip_errors_halve_with_each_bit():
    x = np.random.default_rng(0).normal(size=5000)
    results = round_trip_errors(x, range(2, 11))
    assert [r.n_bits for r in results] == list(range(2, 11))
    for r in results:
        assert r.scale == pytest.approx((x.max() - x.min()) / (2**r.n_bits - 1))
    for a, b in zip(results, results[1:], strict=False):
        assert b.bound / a.bound == pytest.approx((2**a.n_bits - 1) / (2**b.n_bits - 1))
        assert 0.4 < b.max_error / a.max_error < 0.6
        assert 0.4 < b.rms_error / a.rms_error < 0.6
    # dense data: the largest error reaches the bound, the rms error is about scale / sqrt(12)
    for r in results:
        assert r.max_error == pytest.approx(r.bound, rel=0.02)
        assert r.rms_error == pytest.approx(r.scale / np.sqrt(12), rel=0.1)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(2, 300),
    spread=st.floats(1e-3, 1e3),
    offset=st.floats(-1e3, 1e3),
    n_bits=st.integers(2, 16),
    setting=st.sampled_from(SETTINGS),
)
def test_measured_round_trip_error_is_at_most_half_a_step(seed, size, spread, offset, n_bits, setting):
    symmetric, signed = setting
    x = offset + spread * np.random.default_rng(seed).standard_normal(size)
    (result,) = round_trip_errors(x, [n_bits], symmetric=symmetric, signed=signed)
    assert result.max_error <= result.bound * (1 + 1e-9) + 1e-12
    assert result.rms_error <= result.max_error


def test_smallest_n_bits():
    x = np.linspace(0.0, 1.0, 1001)
    # the bound (1 / (2**n - 1)) / 2 drops under 0.01 at n = 6 (1/126 = 0.0079); at n = 5 it is 0.016
    assert smallest_n_bits(x, 0.01) == 6
    assert smallest_n_bits(x, 10.0) == 2
    with pytest.raises(ValueError, match="no bit width"):
        smallest_n_bits(x, 1e-9)
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        smallest_n_bits(x, 0.0)


# ---------------------------------------------------------------------- integer matmul


def test_bounds_by_hand():
    # 10 * (1 * 0.2/2 + 2 * 0.1/2 + 0.1*0.2/4) = 10 * 0.205
    assert matmul_error_bound(10, x_scale=0.1, w_scale=0.2, x_abs_max=1.0, w_abs_max=2.0) == pytest.approx(2.05)
    np.testing.assert_allclose(matmul_error_bound(np.array([1, 4]), 0.1, 0.2, 1.0, 2.0), [0.205, 0.82])
    # only the e_x * e_w term: sqrt(4) * sqrt(1 / 144)
    assert matmul_error_typical(4, x_scale=1.0, w_scale=1.0, x_rms=0.0, w_rms=0.0) == pytest.approx(2 / 12)
    # sqrt(9) * sqrt(2**2 * 0.5**2 / 12)
    assert matmul_error_typical(9, x_scale=0.0, w_scale=0.5, x_rms=2.0, w_rms=0.0) == pytest.approx(3 * np.sqrt(1 / 12))


def test_quantized_matmul_is_exact_on_the_dequantized_inputs():
    rng = np.random.default_rng(1)
    x, w = rng.uniform(-1, 1, size=(5, 16)), rng.normal(size=(16, 3))
    px, pw = compute_params(x.min(), x.max(), 5), compute_params(w.min(), w.max(), 4, symmetric=True)
    y_hat, acc = quantized_matmul(x, w, px, pw)
    assert acc.dtype == np.int64
    np.testing.assert_array_equal(acc, (px.quantize(x) - px.zero_point) @ pw.quantize(w))
    np.testing.assert_allclose(y_hat, px.dequantize(px.quantize(x)) @ pw.dequantize(pw.quantize(w)), atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 200),
    n_bits_x=st.integers(2, 10),
    n_bits_w=st.integers(2, 10),
    x_setting=st.sampled_from(SETTINGS),
)
def test_matmul_error_stays_within_the_worst_case_bound(seed, k, n_bits_x, n_bits_w, x_setting):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=rng.uniform(-2, 2), scale=rng.uniform(0.01, 5), size=(4, k))
    w = rng.normal(scale=rng.uniform(0.01, 5), size=(k, 3))
    symmetric, signed = x_setting
    px = compute_params(x.min(), x.max(), n_bits_x, symmetric=symmetric, signed=signed)
    pw = compute_params(w.min(), w.max(), n_bits_w, symmetric=True)
    y_hat, _ = quantized_matmul(x, w, px, pw)
    bound = matmul_error_bound(k, px.scale, pw.scale, np.abs(x).max(), np.abs(w).max())
    assert np.max(np.abs(y_hat - x @ w)) <= bound * (1 + 1e-9) + 1e-12


def test_measured_matmul_error_grows_like_sqrt_k_within_a_bound_growing_like_k():
    dims = (4, 16, 64, 256, 1024)
    result = measure_matmul_error(dims, n_bits_x=4, n_bits_w=4, rows=32, cols=32, seed=0)
    np.testing.assert_array_equal(result.inner_dims, dims)
    assert np.all(result.max_error <= result.bound)
    assert np.all(result.rms_error <= result.max_error)
    # the typical estimate predicts the rms error closely
    np.testing.assert_allclose(result.rms_error, result.typical, rtol=0.15)
    # slopes on a log-log scale: about 1/2 for the measured error, exactly 1 for the bound (same scales)
    log_k = np.log(result.inner_dims)
    assert 0.4 < np.polyfit(log_k, np.log(result.rms_error), 1)[0] < 0.6
    assert 0.95 < np.polyfit(log_k, np.log(result.bound), 1)[0] < 1.05
    # the accumulator grows with K; inputs are 4 + 4 bits (plus a sign)
    assert np.all(np.diff(result.accumulator_bits) >= 0)
    assert result.accumulator_bits[0] >= 5
    assert np.all(result.output_rms > result.rms_error)


def test_measure_matmul_error_is_deterministic():
    a = measure_matmul_error((8, 32), seed=3)
    b = measure_matmul_error((8, 32), seed=3)
    np.testing.assert_array_equal(a.max_error, b.max_error)
    assert (a.n_bits_x, a.n_bits_w) == (4, 4)


@pytest.mark.parametrize(
    "values, bits", [([0], 1), ([-1, 0], 1), ([0, 1], 2), ([0, 127], 8), ([-128, 127], 8), ([-129], 9), ([128], 9)]
)
def test_signed_bits(values, bits):
    assert signed_bits(np.array(values)) == bits
