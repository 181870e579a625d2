"""course_lib.dual_array: each operation's integers, its errors, and the same code traced by concrete."""

import dataclasses

import numpy as np
import pytest
from circuits import never_run
from concrete import fhe

from course_lib.dual_array import DualArray, ModeError, QuantizedWeights, ShapeMismatchError
from course_lib.quantization import FrozenQuantizerError, NotCalibratedError, Quantizer

RNG = np.random.default_rng(0)


def calibrated(data, n_bits=8, **kwargs) -> Quantizer:
    q = Quantizer(n_bits, **kwargs)
    q.calibrate(data)
    return q


def test_quantize_keeps_both_sides():
    x = RNG.normal(size=(3, 4))
    q = calibrated(x, 6)
    d = DualArray.quantize(x, q)
    assert d.mode == "dual" and d.shape == (3, 4)
    np.testing.assert_array_equal(d.int, q.quantize(x))
    assert d.error() <= q.params.scale / 2 + 1e-12
    assert "max error" in repr(d) and "6 bits" in repr(d)


def test_linear_integers_by_hand():
    x = np.array([[1.0, -2.0]])
    qx = calibrated([-2.0, 1.0], 2)  # scale 1, zero point 2
    w = QuantizedWeights.from_float([[1.0, 0.5], [-1.0, 1.0]], 3)  # scale 1/3: ints [[3, 2], [-3, 3]]
    assert w.int.tolist() == [[3, 2], [-3, 3]]
    out = DualArray.quantize(x, qx).linear(w, bias=[1.0, 0.0])
    # (q - zp) = [1, -2]  ->  [1*3 + -2*-3, 1*2 + -2*3] = [9, -4];  bias 1 / (1 * 1/3) = 3
    assert out.int.tolist() == [[12, -4]]
    assert out.scale == pytest.approx(1 / 3) and out.zero_point == 0
    np.testing.assert_allclose(out.float, [[4.0, -1.5]])
    np.testing.assert_allclose(out.dequantize(), [[4.0, -4 / 3]])


def test_constant_multiplication_only_changes_the_scale():
    x = RNG.normal(size=5)
    d = DualArray.quantize(x, calibrated(x, 4))
    scaled = d * 0.125
    np.testing.assert_array_equal(scaled.int, d.int)
    assert scaled.scale == d.scale * 0.125
    np.testing.assert_allclose(scaled.dequantize(), d.dequantize() * 0.125)
    with pytest.raises(ValueError, match="positive constant"):
        d * -1.0


def test_add_sub_same_and_different_scales():
    a_f, b_f = RNG.normal(size=6), 3 * RNG.normal(size=6)
    a = DualArray.quantize(a_f, calibrated(a_f, 8))
    b = DualArray.quantize(b_f, calibrated(b_f, 8))
    same = a - a
    np.testing.assert_array_equal(same.int, np.zeros(6))
    total = a + b  # b is re-quantized onto a's (finer) scale
    assert total.scale == a.scale
    assert np.max(np.abs(total.dequantize() - (a_f + b_f))) <= a.scale / 2 + b.scale / 2 + a.scale / 2 + 1e-12
    diff = b - a
    np.testing.assert_allclose(diff.float, b_f - a_f)


def test_layout_ops_on_both_sides():
    x = RNG.normal(size=(2, 3, 4))
    d = DualArray.quantize(x, calibrated(x, 5))
    checks = [
        (d.transpose(), np.transpose(x)),
        (d.transpose((0, 2, 1)), np.transpose(x, (0, 2, 1))),
        (d.reshape(6, 4), x.reshape(6, 4)),
        (d[:, 1:, ::2], x[:, 1:, ::2]),
        (d.expand_dims(0), np.expand_dims(x, 0)),
        (d.sum(axis=-1), x.sum(axis=-1)),
        (d.max(axis=1, keepdims=True), x.max(axis=1, keepdims=True)),
    ]
    for out, expected in checks:
        assert out.float.shape == expected.shape == out.int.shape
        np.testing.assert_allclose(out.float, expected)
        assert out.error() <= d.scale / 2 * np.prod(x.shape) + 1e-12
    parts = d.split(2, axis=-1)
    assert [p.shape for p in parts] == [(2, 3, 2), (2, 3, 2)]
    np.testing.assert_array_equal(parts[1].int, d.int[..., 2:])
    # max of the integers is the integers of the max (positive scale)
    np.testing.assert_array_equal(d.max(axis=-1).int, d.int.max(axis=-1))


def test_lookup_is_quantized_function_of_dequantized_input():
    x = np.linspace(-3, 1, 50)
    d = DualArray.quantize(x, calibrated(x, 5))
    out_q = calibrated(np.exp(x), 6)
    e = d.exp(out_q)
    np.testing.assert_array_equal(e.int, out_q.quantize(np.exp(d.dequantize())))
    assert e.params == out_q.params
    r_q = calibrated(1 / np.linspace(1, 4, 10), 6)
    pos = DualArray.quantize(np.linspace(1, 4, 10), calibrated(np.linspace(0, 4, 10), 4))
    r = pos.reciprocal(r_q)
    np.testing.assert_array_equal(r.int, r_q.quantize(1 / pos.dequantize()))  # 1/0 never reached here


def test_reciprocal_table_saturates_where_undefined():
    q_in = calibrated([0.0, 3.0], 3)
    q_out = calibrated([0.3, 4.0], 4)
    zero = DualArray.quantize([0.0, 3.0], q_in)
    assert zero.reciprocal(q_out).int.tolist() == [q_out.params.qmax, q_out.quantize([1 / 3])[0]]


def test_rounding_before_lookup_drops_low_bits():
    x = np.arange(64, dtype=float)
    d = DualArray.quantize(x, calibrated(x, 6))
    out = d.requantize(calibrated(x, 6), round_lsbs=3)
    # to the nearest multiple of 8 (ties up), then clipped to the 6-bit output range
    np.testing.assert_array_equal(out.int, np.clip(8 * np.floor((x + 4) / 8), 0, 63))
    with pytest.raises(ValueError, match="round_lsbs"):
        d.requantize(calibrated(x, 6), round_lsbs=-1)


def test_rounded_goes_to_a_coarser_scale_and_compiles_to_the_same_integers():
    sums = DualArray(np.arange(-40, 41, 3, dtype=float), np.arange(-40, 41, 3), scale=0.5)  # a sum of products
    shifted = sums.shifted(64)  # non-negative before rounding, as concrete-python 2.10 needs
    out = shifted.rounded(3)
    # to the nearest multiple of 8 (ties up), divided by 8: the reals on a scale 8 times coarser
    np.testing.assert_array_equal(out.int, np.floor((sums.int + 4) / 8))
    assert out.scale == 4.0 and out.zero_point == 0 and out.float is sums.float
    assert np.abs(out.dequantize() - sums.dequantize()).max() <= out.scale / 2
    assert sums.rounded(0) is sums
    with pytest.raises(ValueError, match="zero point \\(5\\) must be a multiple of 2\\*\\*lsbs = 8"):
        sums.shifted(5).rounded(3)
    with pytest.raises(ValueError, match="lsbs must be an integer from 0"):
        sums.rounded(-1)

    @fhe.compiler({"q": "encrypted"})
    def circuit(q):
        return DualArray(None, q, scale=0.5).shifted(64).rounded(3).int

    compiled = circuit.compile([sums.int, -sums.int], never_run())
    np.testing.assert_array_equal(compiled.simulate(sums.int), out.int)
    assert compiled.programmable_bootstrap_count == sums.shape[0] * 4  # 3 PBS to round exactly, 1 lookup


def test_a_lookup_in_digits_gives_the_whole_integers_digit_by_digit():
    x = np.linspace(-6.0, 0.0, 25)
    qp = calibrated(np.exp(x), 8)
    assert qp.params.zero_point == -1  # exp(-6) is more than half a step: the last digit carries the zero point
    source = DualArray.quantize(x, calibrated(x, 6))
    whole = source.exp(qp)
    high, low = source.apply_digits(np.exp, qp, 2)
    np.testing.assert_array_equal(16 * high.int + low.int, whole.int)
    assert 0 <= low.int.min() and max(high.int.max(), low.int.max()) <= 15
    assert high.scale == 16 * low.scale == 16 * qp.params.scale and high.params.n_bits == low.params.n_bits == 4
    assert (high.zero_point, low.zero_point) == (0, -1)
    np.testing.assert_allclose(high.dequantize() + low.dequantize(), whole.dequantize())
    np.testing.assert_array_equal(high.float, np.exp(x))
    np.testing.assert_array_equal(low.float, 0)  # the float side rides on the first digit
    both = high.times(16) + low  # the same scale: an addition, no lookup
    assert both.scale == low.scale
    np.testing.assert_array_equal(both.int, whole.int - qp.params.zero_point)  # centred: zero point 0
    with pytest.raises(ValueError, match="n_bits \\(8\\) is a multiple of 3"):
        source.apply_digits(np.exp, qp, 3)
    with pytest.raises(ValueError, match="factor must be a positive integer"):
        high.times(0)


def test_calibration_mode_observes_then_inference_never_recalibrates():
    qx, qe = Quantizer(6, name="x"), Quantizer(6, name="exp")
    for data in ([-1.0, 0.0], [0.5, 2.0]):
        out = DualArray.calibration(data, qx).exp(qe)
        assert out.mode == "calibration" and out.int is None
    assert (qx.rmin, qx.rmax) == (-1.0, 2.0) and qe.rmax == pytest.approx(np.exp(2.0))
    with pytest.raises(NotCalibratedError, match="quantizer 'x' has observed data but is not frozen"):
        DualArray.quantize([0.0], qx)
    qx.freeze()
    with pytest.raises(NotCalibratedError, match="quantizer 'exp'"):
        DualArray.quantize([0.0], qx).exp(qe)
    qe.freeze()
    assert DualArray.quantize([5.0], qx).exp(qe).int.tolist() == [qe.params.qmax]  # clipped, not recalibrated
    with pytest.raises(FrozenQuantizerError, match="never recalibrates"):
        DualArray.calibration([9.0], qx)


def test_shape_errors_are_clear():
    x = DualArray.quantize(np.zeros((2, 3)), calibrated([0.0, 1.0], 4))
    w = QuantizedWeights.from_float(np.ones((4, 5)), 4)
    with pytest.raises(ShapeMismatchError, match="input has 3 features .* weights expect 4"):
        x.linear(w)
    with pytest.raises(ShapeMismatchError, match=r"bias must have shape \(5,\)"):
        DualArray.quantize(np.zeros((2, 4)), calibrated([0.0, 1.0], 4)).linear(w, bias=np.zeros(3))
    with pytest.raises(ShapeMismatchError, match="do not fit"):
        x @ x
    with pytest.raises(ShapeMismatchError, match="cannot be broadcast"):
        x + x.transpose()
    with pytest.raises(ShapeMismatchError, match="cannot reshape"):
        x.reshape(4, 2)
    with pytest.raises(ShapeMismatchError, match="cannot be split into 2"):
        x.split(2)
    with pytest.raises(ShapeMismatchError, match="not a permutation"):
        x.transpose((0, 0))
    with pytest.raises(ShapeMismatchError, match="does not fit shape"):
        x[5]
    with pytest.raises(ShapeMismatchError, match="axis 2 is out of range"):
        x.sum(axis=2)


def test_modes_do_not_mix():
    q = calibrated([0.0, 1.0], 4)
    with pytest.raises(ModeError, match="calibration mode with one in dual mode"):
        DualArray.calibration([0.5]) + DualArray.quantize([0.5], q)
    with pytest.raises(ModeError, match="needs both sides"):
        DualArray.from_int(np.array([1]), q.params).error()
    with pytest.raises(ValueError, match="is empty"):
        DualArray.quantize([], q)


def tiny_attention(x: DualArray, w: QuantizedWeights, qs: dict[str, Quantizer]) -> DualArray:
    """Every kind of DualArray operation, as a small softmax attention."""
    q, k, v = x.linear(w).split(3)
    q, k, v = q.requantize(qs["q"]), k.requantize(qs["k"]), v.requantize(qs["v"])
    scores = (q @ k.transpose()).requantize(qs["scores"], round_lsbs=1)
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = scores.exp(qs["exp"])
    inverse = e.sum(axis=-1, keepdims=True).reciprocal(qs["inv"])
    probs = (e * inverse).requantize(qs["probs"])
    out = (probs @ v).requantize(qs["out"])
    return out.expand_dims(0)[0].reshape(-1)


@pytest.mark.fhe
def test_same_code_compiles_and_simulation_equals_clear_integers():
    rng = np.random.default_rng(1)
    w = QuantizedWeights.from_float(rng.normal(size=(6, 9)) * 0.4, 4)
    qs = {name: Quantizer(4, name=name) for name in ("x", "q", "k", "v", "scores", "exp", "inv", "probs", "out")}
    calibration = [rng.normal(size=(3, 6)) for _ in range(20)]
    for data in calibration:
        tiny_attention(DualArray.calibration(data, qs["x"]), w, qs)
    for quantizer in qs.values():
        quantizer.freeze()

    @fhe.compiler({"q": "encrypted"})
    def circuit(q):
        return tiny_attention(DualArray.from_int(q, qs["x"].params), w, qs).int

    compiled = circuit.compile([qs["x"].quantize(d) for d in calibration], never_run())
    for _ in range(3):
        x = rng.normal(size=(3, 6))
        clear = tiny_attention(DualArray.quantize(x, qs["x"]), w, qs)
        np.testing.assert_array_equal(compiled.simulate(qs["x"].quantize(x)), clear.int)
        assert clear.error() < 1.0


def test_products_of_two_dual_arrays_are_exact_and_drop_bits_on_request():
    rng = np.random.default_rng(3)
    qa, qb = calibrated([-1.0, 1.0], 4), calibrated([0.0, 2.0], 4)
    a = DualArray.quantize(rng.uniform(-1, 1, size=(3, 5)), qa)
    b = DualArray.quantize(rng.uniform(0, 2, size=(5, 4)), qb)
    exact = a @ b
    np.testing.assert_array_equal(exact.int, a._centered() @ b._centered())
    assert exact.scale == pytest.approx(a.scale * b.scale)
    dropped = a.matmul(b, drop_bits=3)
    assert dropped.scale == pytest.approx(exact.scale * 8)
    # each of the 5 products is off by at most one unit of 2**3: the sum by at most 5 units
    assert np.max(np.abs(dropped.int * 8 - exact.int)) <= 5 * 8
    assert dropped.bit_width() <= exact.bit_width() - 2
    c = DualArray.quantize(rng.uniform(-1, 1, size=(3, 5)), qa)
    np.testing.assert_array_equal((a * c).int, a._centered() * c._centered())
    assert np.max(np.abs(a.multiply(c, drop_bits=2).int * 4 - (a * c).int)) <= 4


def test_product_errors_say_what_is_allowed():
    q = calibrated([0.0, 1.0], 4)
    a = DualArray.quantize(np.ones((2, 3)), q)
    with pytest.raises(ValueError, match="drop_bits must be an integer from 0 to 32"):
        a.matmul(a.transpose(), drop_bits=-1)
    with pytest.raises(ShapeMismatchError, match="2-D arrays"):
        a.reshape(1, 2, 3) @ a.transpose()
    with pytest.raises(ShapeMismatchError, match="do not fit"):
        a @ a


@pytest.mark.fhe
def test_max_is_a_chain_of_pairwise_maxima():
    rng = np.random.default_rng(4)
    q = calibrated([-1.0, 1.0], 4)
    d = DualArray.quantize(rng.uniform(-1, 1, size=(3, 6)), q)
    np.testing.assert_array_equal(d.max(axis=0).int, d.int.max(axis=0))
    np.testing.assert_array_equal(d.max(axis=1, keepdims=True).int, d.int.max(axis=1, keepdims=True))
    with pytest.raises(ShapeMismatchError, match="one axis"):
        d.max(axis=None)

    @fhe.compiler({"x": "encrypted"})
    def row_max(x):
        return DualArray.from_int(x, q.params).max(axis=-1).int

    compiled = row_max.compile([q.quantize(rng.uniform(-1, 1, size=(3, 6))) for _ in range(10)])
    assert compiled.programmable_bootstrap_count == 3 * 5  # n - 1 lookups per row
    x = q.quantize(rng.uniform(-1, 1, size=(3, 6)))
    np.testing.assert_array_equal(compiled.simulate(x), x.max(axis=-1))


# -- products with shared squares, and the layout operations the fast head uses ----------------------
def quantized(values, n_bits=4, symmetric=False):
    quantizer = Quantizer(n_bits, symmetric=symmetric)
    quantizer.observe(values)
    quantizer.freeze()
    return DualArray.quantize(values, quantizer)


@pytest.mark.parametrize("low", [-1.0, 0.0])  # signed values, and probabilities-like values >= 0 (offset 8)
def test_shared_square_products_are_exact_without_rounding(low):
    rng = np.random.default_rng(0)
    a, b = quantized(rng.uniform(low, 1, size=(5, 3))), quantized(rng.uniform(-1, 1, size=(5, 3)))
    product = a.with_squares(0).multiply(b.with_squares(0))
    np.testing.assert_array_equal(product.int, 2 * a._centered() * b._centered())
    np.testing.assert_allclose(product.dequantize(), a.dequantize() * b.dequantize(), rtol=1e-12, atol=1e-12)
    assert a.with_squares(0).squares[1] == (8 if low == 0 else 0)  # the offset centers 0..15 on -8..7


@pytest.mark.parametrize("drop_bits", [1, 2, 3])
def test_rounded_shared_square_products_stay_within_one_and_a_half_units(drop_bits):
    rng = np.random.default_rng(drop_bits)
    a, b = quantized(rng.uniform(0, 1, size=(40, 8))), quantized(rng.uniform(-1, 1, size=(40, 8)))
    product = a.with_squares(drop_bits).multiply(b.with_squares(drop_bits), drop_bits=drop_bits)
    exact = 2 * a._centered() * b._centered() / 2**drop_bits
    assert np.abs(product.int - exact).max() <= 1.5
    assert np.abs(product.int - exact).max() > 0  # the rounding is real


def test_mismatched_rounding_of_squares_is_refused():
    a = quantized(np.linspace(-1, 1, 6))
    with pytest.raises(ValueError, match="rounded by 1 and 2 bits"):
        a.with_squares(1).multiply(a.with_squares(2), drop_bits=1)


def test_take_combine_rows_and_maximum():
    x = quantized(np.arange(12.0).reshape(4, 3) - 5)
    taken = x.take([2, 0, 2])
    np.testing.assert_array_equal(taken.int, x.int[[2, 0, 2]])
    assert taken.params == x.params and quantized(np.arange(5.0)).take([4, 0]).shape == (2,)
    sums = x.combine_rows(np.array([[1, 1, 0, 0], [0, 0, 0, 1]]))
    np.testing.assert_array_equal(sums.int, [x._centered()[0] + x._centered()[1], x._centered()[3]])
    np.testing.assert_allclose(sums.dequantize(), sums.float, atol=2 * x.scale)
    with pytest.raises(ValueError, match="2-D integer matrix with 4 columns"):
        x.combine_rows(np.ones((2, 3), dtype=int))
    np.testing.assert_array_equal(x.maximum(x.take([3, 2, 1, 0])).int, np.maximum(x.int, x.int[::-1]))
    with pytest.raises(ValueError, match="same scale"):
        x.maximum(quantized(np.arange(12.0).reshape(4, 3)))
    with pytest.raises(ValueError, match=r"rows in 0\.\.3"):
        x.take([4])


def test_apply_at_scale_lands_on_the_given_scale():
    x = quantized(np.linspace(0.5, 4, 8))
    out = x.apply_at_scale(np.log, 0.01)
    assert out.scale == 0.01 and out.zero_point == 0
    np.testing.assert_array_equal(out.int, np.rint(np.log(x.dequantize()) / 0.01).astype(np.int64))
    with pytest.raises(ValueError, match="scale must be a number > 0"):
        x.apply_at_scale(np.log, 0)


def test_append_and_carried_squares():
    params = Quantizer(3, name="k")
    params.observe([-1.0, 1.0])
    p = params.freeze()
    a = DualArray.from_int(np.array([[1, 2], [3, 4]]), p).with_squares(1)
    b = DualArray.from_int(np.array([[5, 6]]), p).with_squares(1)
    joined = a.append(b)
    np.testing.assert_array_equal(joined.int, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(joined.squares[2], DualArray.from_int(joined.int, p).with_squares(1).squares[2])
    kept = DualArray.from_int(b.int, p).carrying_squares(1, b.squares[2])
    assert kept.squares == (1, b.squares[1], b.squares[2])
    with pytest.raises(ValueError, match="same scale and zero point"):
        a.append(DualArray.from_int(np.array([[1, 2]]), dataclasses.replace(p, scale=p.scale * 2)))
