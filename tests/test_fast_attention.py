"""course_lib.fast_attention and the DualArray operations it adds: the fast head computes the same
attention, its simulation equals its clear computation exactly, and it costs the PBS its docstring says."""

import numpy as np
import pytest
import torch

from course_lib.attention import HeadWeights, QuantizedHead, float_head
from course_lib.data import load_calibration_prompts
from course_lib.dual_array import DualArray
from course_lib.fast_attention import CausalPairs, FastHead
from course_lib.fhe import HeadCircuit
from course_lib.gpt2 import DESIGNS, SwappedHead, head_class
from course_lib.keys import ensure_keys
from course_lib.quantization import Quantizer

LENGTH = 4


#: Calibration inputs: the compiler sizes every intermediate value from them, so new inputs stay exact
#: only while their values stay in those ranges. Enough of them that held-out inputs of the same kind do.
CALIBRATION = HeadWeights.random_inputs(60, 16)


def fast_head(lookup_bits=6, seed=0, **options):
    head = FastHead(HeadWeights.random(16, 4, seed=seed), 4, lookup_bits=lookup_bits, **options)
    head.calibrate(CALIBRATION)
    return head


@pytest.fixture(scope="module")
def circuit():
    return HeadCircuit(fast_head(), CALIBRATION, length=LENGTH)


def quantized(values, n_bits=4, symmetric=False):
    quantizer = Quantizer(n_bits, symmetric=symmetric)
    quantizer.observe(values)
    quantizer.freeze()
    return DualArray.quantize(values, quantizer)


# -- DualArray: products with shared squares, and the layout operations ---------------------------
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


def test_causal_pairs_match_numpy():
    pairs = CausalPairs(4)
    assert len(pairs) == 10 and pairs.rows[:3] == [0, 1, 1] and pairs.cols[:3] == [0, 0, 1]
    rng = np.random.default_rng(3)
    full = rng.integers(-30, 30, size=(4, 4)).astype(float)
    keep = np.tril(np.ones((4, 4), dtype=bool))
    x = quantized(full[keep])  # the causal entries, row after row
    row_max = pairs.row_max(x)
    expected = [x.dequantize()[s : s + i + 1].max() for i, s in enumerate(pairs.starts)]
    np.testing.assert_array_equal(row_max.dequantize(), expected)
    np.testing.assert_array_equal(row_max.float, [full[i, : i + 1].max() for i in range(4)])
    sums = pairs.row_sums(x)
    np.testing.assert_allclose(sums.float, [full[i, : i + 1].sum() for i in range(4)])
    np.testing.assert_array_equal(pairs.per_pair(row_max).dequantize(), np.repeat(expected, [1, 2, 3, 4]))
    with pytest.raises(ValueError, match="expected 10 pairs"):
        pairs.row_sums(row_max)
    with pytest.raises(ValueError, match="positive integer"):
        CausalPairs(0)


# -- the fast head ---------------------------------------------------------------------------------
def test_fast_head_computes_the_head():
    weights = HeadWeights.random(16, 4, seed=0)
    inputs = HeadWeights.random_inputs(12, 16)
    fast, published = FastHead(weights, 8, lookup_bits=12), QuantizedHead(weights, 8)
    fast.calibrate(inputs)
    published.calibrate(inputs)
    for x in inputs[:5]:  # inputs within the calibrated ranges: no clipping, only rounding
        reference = float_head(x, weights)
        scale = np.abs(reference).max()
        assert np.abs(fast.run(x).dequantize() - reference).max() < 0.05 * scale
        assert np.abs(published.run(x).dequantize() - reference).max() < 0.05 * scale
        assert np.abs(fast.run(x).float - reference).max() < 1e-9  # the float side is the float head


def test_fast_head_is_causal():
    head = fast_head()
    x = HeadWeights.random_inputs(1, 16, seed=4)[0]
    whole = head.run(x).int
    for t in range(1, len(x)):
        np.testing.assert_array_equal(head.run(x[:t]).int, whole[:t])


def test_fast_simulation_equals_clear_quantized_computation(circuit):
    for x in HeadWeights.random_inputs(10, 16, seed=7):
        qkv = circuit.encode(x[:LENGTH])  # shorter inputs are padded
        np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))
        np.testing.assert_array_equal(circuit.clear(*qkv)[: min(len(x), LENGTH)], circuit.head.run(x[:LENGTH]).int)


@pytest.mark.parametrize("one_lookup_products", [True, False])
def test_pbs_count_is_the_documented_formula(one_lookup_products):
    head = fast_head(one_lookup_products=one_lookup_products)
    t, d = 5, 4
    p = t * (t + 1) // 2
    circuit = HeadCircuit(head, CALIBRATION, length=t)
    steps = circuit.summary().pbs_per_step
    if one_lookup_products:
        assert steps == {"scores": p * d + 2 * t * d, "softmax": t * (t - 1) // 2 + 2 * p + t, "mix": p * d + p + t * d}
    else:
        assert steps["scores"] == 2 * p * d and steps["mix"] == 2 * p * d
    qkv = circuit.encode(HeadWeights.random_inputs(1, 16, seed=2)[0][:t])
    np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))


def test_fast_circuit_is_cheaper_than_the_published_one(circuit):
    published = QuantizedHead(HeadWeights.random(16, 4, seed=0), 4)
    published.calibrate(CALIBRATION)
    slow = HeadCircuit(published, CALIBRATION, length=LENGTH).summary()
    fast = circuit.summary()
    assert fast.pbs_count < slow.pbs_count / 1.5
    assert fast.max_bit_width <= slow.max_bit_width
    assert fast.complexity < slow.complexity / 2


def test_fast_execution_equals_simulation(circuit, tmp_path):
    ensure_keys(circuit.circuit, tmp_path, progress=False)
    qkv = circuit.encode(HeadWeights.random_inputs(1, 16, seed=21)[0][:LENGTH])
    np.testing.assert_array_equal(circuit.execute(*qkv), circuit.simulate(*qkv))


def test_designs_are_named_and_checked():
    assert head_class("fast") is FastHead and head_class("published") is QuantizedHead
    assert set(DESIGNS) == {"published", "fast", "fast-quarter-squares"}
    assert head_class("fast-quarter-squares")(HeadWeights.random(16, 4), 4).one_lookup_products is False
    with pytest.raises(ValueError, match="design must be one of 'published', 'fast'"):
        head_class("quick")


def test_swapped_fast_head_simulation_equals_quantized_mode(bundled):
    model, tokenizer = bundled
    with SwappedHead(model, 0, 0, n_bits=4, lookup_bits=6, design="fast") as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        swap.compile(length=6)
        ids = tokenizer("Cryptography is a", return_tensors="pt")["input_ids"]
        logits = {}
        for mode in ("float", "quantized", "simulate"):
            swap.mode = mode
            with torch.no_grad():
                logits[mode] = model(ids).logits
        torch.testing.assert_close(logits["simulate"], logits["quantized"], rtol=0, atol=0)
        assert not torch.equal(logits["quantized"], logits["float"])
        assert logits["quantized"][0, -1].argmax() == logits["float"][0, -1].argmax()
