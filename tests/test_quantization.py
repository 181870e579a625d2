"""course_lib.quantization: parameters, calibration phases, errors, and agreement with concrete-ml."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.quantization import (
    FrozenQuantizerError,
    NotCalibratedError,
    Quantizer,
    QuantParams,
    compute_params,
)

SETTINGS = [(False, False), (False, True), (True, True)]  # (symmetric, signed)


def test_params_by_hand():
    # [-1, 2] on 2 bits unsigned: 4 levels, step 1, real 0 at integer 1.
    p = compute_params(-1.0, 2.0, 2)
    assert (p.scale, p.zero_point, p.qmin, p.qmax, p.signed) == (1.0, 1, 0, 3, False)
    assert p.quantize([-1.0, 0.0, 0.4, 0.6, 2.0, 9.0]).tolist() == [0, 1, 1, 2, 3, 3]
    assert p.dequantize([0, 3]).tolist() == [-1.0, 2.0]


def test_symmetric_params():
    p = compute_params(-0.5, 2.54, 8, symmetric=True)
    assert p.signed and p.zero_point == 0 and p.scale == pytest.approx(2.54 / 127)
    assert (p.qmin, p.qmax) == (-128, 127)


def test_params_are_immutable_and_printable():
    p = compute_params(0.0, 1.0, 4)
    with pytest.raises(AttributeError):
        p.scale = 2.0  # type: ignore[misc]
    assert str(p).startswith("4-bit unsigned: scale=0.0666667, zero_point=0, integers 0..15")


@pytest.mark.parametrize("value", [3.0, -3.0, 0.0, 1e-9])
@pytest.mark.parametrize("symmetric,signed", SETTINGS)
def test_single_value_range_is_exact_and_agrees_with_concrete_ml(value, symmetric, signed):
    from concrete.ml.quantization.quantizers import MinMaxQuantizationStats, QuantizationOptions, UniformQuantizer

    p = Quantizer(4, symmetric=symmetric, signed=signed).calibrate([value, value])
    assert p.dequantize(p.quantize([value])).tolist() == pytest.approx([value], abs=1e-6)
    options = QuantizationOptions(n_bits=4, is_signed=signed, is_symmetric=symmetric)
    stats = MinMaxQuantizationStats(rmin=value, rmax=value)
    theirs = UniformQuantizer(options, stats)
    theirs.compute_quantization_parameters(options, stats)
    assert p.quantize([value]).tolist() == theirs.quant(np.array([value])).tolist()


@pytest.mark.parametrize("bad", [1, 17, 0, -3, 4.0, "4", None, True])
def test_n_bits_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="n_bits must be an integer from 2 to 16"):
        Quantizer(bad)
    with pytest.raises(ValueError, match="n_bits must be an integer from 2 to 16"):
        compute_params(0.0, 1.0, bad)


@pytest.mark.parametrize("bad", [[1.0, np.nan], [np.inf, 0.0], [-np.inf]])
def test_non_finite_calibration_data_is_refused(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        Quantizer(4).observe(bad)


@pytest.mark.parametrize(
    ("bad", "hint"),
    [(np.array([1.0 + 2.0j, 3.0]), "take .real or abs"), (["1.0", "2.0"], "dtype <U3"), ([None, 1.0], "dtype object")],
)
def test_data_that_is_not_real_numbers_is_refused(bad, hint):
    with pytest.raises(TypeError, match="must be real numbers") as error:
        Quantizer(4).observe(bad)
    assert hint in str(error.value)


def test_empty_calibration_data_is_refused():
    with pytest.raises(ValueError, match="is empty"):
        Quantizer(4).observe([])


def test_bad_params_are_refused():
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        QuantParams(4, 0.0, 0, False)
    with pytest.raises(ValueError, match="rmin must be <= rmax"):
        compute_params(1.0, 0.0, 4)
    with pytest.raises(ValueError, match="symmetric quantization is signed"):
        Quantizer(4, symmetric=True, signed=False)


def test_phases_calibrate_then_freeze():
    q = Quantizer(4, name="x")
    with pytest.raises(NotCalibratedError, match="quantizer 'x' was never calibrated"):
        q.quantize([0.0])
    with pytest.raises(NotCalibratedError, match="observed no calibration data"):
        q.freeze()
    q.observe([-1.0, 0.5])
    with pytest.raises(NotCalibratedError, match="not frozen"):
        _ = q.params
    q.observe([2.0])
    params = q.freeze()
    assert (q.rmin, q.rmax) == (-1.0, 2.0) and params == compute_params(-1.0, 2.0, 4)
    with pytest.raises(FrozenQuantizerError, match="never recalibrates"):
        q.observe([100.0])
    assert q.params == params  # the refused observation changed nothing
    assert q.quantize([100.0]).tolist() == [15]  # out of range: clipped, not recalibrated
    q.reset()
    assert not q.is_frozen and q.rmin is None


@pytest.mark.parametrize("symmetric,signed", SETTINGS)
@pytest.mark.parametrize("n_bits", [2, 3, 4, 6, 8, 12, 16])
def test_same_as_concrete_ml(symmetric, signed, n_bits):
    from concrete.ml.quantization.quantizers import MinMaxQuantizationStats, QuantizationOptions, UniformQuantizer

    x = np.random.default_rng(n_bits).normal(loc=0.7, scale=2.0, size=500)
    ours = Quantizer(n_bits, symmetric=symmetric, signed=signed).calibrate(x)

    options = QuantizationOptions(n_bits=n_bits, is_signed=signed, is_symmetric=symmetric)
    stats = MinMaxQuantizationStats()
    stats.compute_quantization_stats(x)
    theirs = UniformQuantizer(options, stats)
    theirs.compute_quantization_parameters(options, stats)

    assert ours.scale == theirs.scale
    assert ours.zero_point == theirs.zero_point
    test = np.random.default_rng(1).normal(loc=0.7, scale=2.5, size=500)  # some values outside: clipping too
    np.testing.assert_array_equal(ours.quantize(test), theirs.quant(test))
    np.testing.assert_allclose(ours.dequantize(ours.quantize(test)), theirs.dequant(theirs.quant(test)))


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(finite, min_size=2, max_size=50),
    n_bits=st.integers(2, 16),
    setting=st.sampled_from(SETTINGS),
)
def test_round_trip_error_is_at_most_half_a_step(data, n_bits, setting):
    symmetric, signed = setting
    x = np.array(data)
    p = Quantizer(n_bits, symmetric=symmetric, signed=signed).calibrate(x)
    if x.max() - x.min() < 1e-6:
        return  # a single value: exact, tested above
    error = np.abs(p.dequantize(p.quantize(x)) - x)
    assert np.all(error <= p.scale / 2 * (1 + 1e-9) + 1e-12)


def test_a_clipped_range_is_calibrated_on_percentiles():
    values = np.concatenate([np.linspace(-1, 1, 999), [8.0]])  # one outlier
    whole, clipped = Quantizer(4), Quantizer(4, clip_percentile=99.5)
    for q in (whole, clipped):
        q.observe(values[:500])
        q.observe(values[500:])  # the percentiles are of every value observed, not of each call
    low, high = np.percentile(values, [0.5, 99.5])
    assert clipped.freeze() == compute_params(low, high, 4)
    assert clipped.rmax == whole.rmax == 8.0  # the observed range is still recorded
    assert clipped.freeze().scale < whole.freeze().scale / 4  # finer steps for all but the outlier
    assert clipped.quantize([8.0]).tolist() == [clipped.params.qmax]  # which saturates
    for bad in (50, 101, True, "99"):
        with pytest.raises(ValueError, match="clip_percentile must be a number above 50 and at most 100"):
            Quantizer(4, clip_percentile=bad)
    clipped.reset()
    with pytest.raises(NotCalibratedError):
        clipped.freeze()
