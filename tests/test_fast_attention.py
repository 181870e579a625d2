"""course_lib.fast_attention: the fast head computes the same attention, its simulation equals its clear
computation exactly, and it costs the PBS its docstring says (the DualArray operations it uses: test_dual_array; a
fast head on ciphertexts: test_fhe's keyed circuit, a narrow fast head, whose keys take seconds)."""

import numpy as np
import pytest
import torch
from circuits import never_run
from test_dual_array import quantized  # a DualArray of values, quantized on their own range

from course_lib.attention import HeadWeights, QuantizedHead, float_head
from course_lib.config import COURSE, FROM_X, PUBLISHED
from course_lib.data import load_calibration_prompts
from course_lib.fast_attention import CausalPairs, FastHead, build_head
from course_lib.fhe import HeadCircuit, lookups_per_width
from course_lib.gpt2 import SwappedHead

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


@pytest.mark.fhe
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


@pytest.mark.fhe
def test_rounding_the_scores_once_is_exact_in_fhe_and_costs_its_bits():
    """``sum_rounding="sum"``: exact products, each score's sum rounded once (``sum_drop_bits`` PBS and one lookup
    per score), simulated as the clear integers compute it."""
    head, t, d = fast_head(sum_rounding="sum"), 5, 4
    assert head.sum_drop_bits > 0 and head.sum_offset % 2**head.sum_drop_bits == 0
    assert head.drop_bits == {"scores": 0, "output": 0}  # exact products; the output sums are left to the layer
    p = t * (t + 1) // 2
    circuit = HeadCircuit(head, CALIBRATION, length=t, config=never_run())
    steps = circuit.summary().pbs_per_step
    assert steps["scores"] == p * d + 2 * t * d + p * (head.sum_drop_bits + 1)
    assert steps["softmax"] == t * (t - 1) // 2 + 2 * p + t  # the softmax and the mix as before
    for x in HeadWeights.random_inputs(6, 16, seed=7):
        qkv = circuit.encode(x[:t])
        np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))
        np.testing.assert_array_equal(circuit.clear(*qkv)[: min(len(x), t)], head.run(x[:t]).int)


def test_rounding_the_scores_once_is_more_faithful_than_rounding_each_product():
    """With GPT-2's head dimension (32 products a score), the products' rounding errors add up; rounding the exact
    sum once errs by half a step at most. Measured on the scores themselves, against the float scores."""
    weights = HeadWeights.random(64, 32, seed=3)
    inputs = HeadWeights.random_inputs(40, 64, seed=4)
    errors = {}
    for rounding in ("products", "sum"):
        head = FastHead(weights, 4, lookup_bits=6, sum_rounding=rounding)
        head.calibrate(inputs)
        scores = [dict(head.steps(x))["scores (pairs j <= i)"] for x in inputs]
        errors[rounding] = np.mean([np.abs(s.dequantize() - s.float).mean() for s in scores])
        assert max(s.bit_width() for s in scores) <= 7  # both read about lookup_bits
    assert errors["sum"] < errors["products"] / 2, errors
    with pytest.raises(ValueError, match="needs design='fast'"):
        build_head(weights, PUBLISHED.replace(sum_rounding="sum"))


@pytest.mark.fhe
def test_probabilities_as_digits_are_the_wider_probabilities_at_narrow_widths():
    """``probs_digits=2``: 8-bit probabilities as two 4-bit digits give the integers of 8-bit probabilities (which
    no parameters can bootstrap), each digit costing one lookup per probability and one product per value."""
    wide = {"tensor_bits": {"probs": 8}, "sum_rounding": "sum"}
    single, split = fast_head(**wide), fast_head(**wide, probs_digits=2)
    for x in HeadWeights.random_inputs(5, 16, seed=7):
        np.testing.assert_array_equal(split.run(x).int, single.run(x).int)
        np.testing.assert_array_equal(split.run(x).float, single.run(x).float)
    t, d = 5, 4
    p = t * (t + 1) // 2
    circuit = HeadCircuit(split, CALIBRATION, length=t, config=never_run())
    steps = circuit.summary().pbs_per_step
    assert steps["softmax"] == t * (t - 1) // 2 + 3 * p + t  # one more exp lookup per probability
    assert steps["mix"] == 2 * (p * d + p) + t * d  # each digit: its squares and its products
    narrow = HeadCircuit(fast_head(sum_rounding="sum"), CALIBRATION, length=t, config=never_run())  # 4-bit probs
    widths, narrow_widths = lookups_per_width(circuit.circuit), lookups_per_width(narrow.circuit)
    assert max(widths) == max(narrow_widths)  # no lookup wider: they read digits, not 8-bit probabilities
    for x in HeadWeights.random_inputs(4, 16, seed=8):
        qkv = circuit.encode(x[:t])
        np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))
    with pytest.raises(ValueError, match="probs_digits=2 splits the probabilities' 5 bits into digits"):
        fast_head(tensor_bits={"probs": 5}, probs_digits=2)


@pytest.mark.keys
def test_sums_rounded_once_and_probabilities_in_digits_execute_as_simulated(tmp_path):
    """The two new operations on ciphertexts (``DualArray.rounded``, ``apply_digits``), in a narrow head whose keys
    take seconds: 2-bit activations, 4-bit probabilities as two 2-bit digits, sums rounded once to 3 bits."""
    from course_lib.keys import ensure_keys

    settings = {"sum_rounding": "sum", "tensor_bits": {"probs": 4}, "probs_digits": 2}
    head = FastHead(HeadWeights.random(16, 4, seed=0), 2, lookup_bits=3, **settings)
    head.calibrate(CALIBRATION)
    assert head.sum_drop_bits > 0
    circuit = HeadCircuit(head, CALIBRATION, length=3)
    ensure_keys(circuit.circuit, tmp_path, progress=False)
    qkv = circuit.encode(HeadWeights.random_inputs(1, 16, seed=21)[0][:3])
    np.testing.assert_array_equal(circuit.execute(*qkv), circuit.simulate(*qkv))


def test_mixed_precision_and_clipping_reach_the_quantizers():
    head = fast_head(tensor_bits={"input": 6, "v": 5}, input_clip_percentile=99)
    assert head.quantizers["input"].params.n_bits == 6 and head.quantizers["v"].params.n_bits == 5
    assert head.quantizers["q"].params.n_bits == 4 and head.config.bits_of("probs") == 4
    values = np.concatenate(CALIBRATION)
    low, high = head.quantizers["input"].params.real_range
    assert np.percentile(values, 1) <= low + 1e-9 and high < values.max()  # x saturates beyond its percentiles
    with pytest.raises(ValueError, match="tensor_bits names 'scores', which this head does not have: .*input, q, k"):
        FastHead(HeadWeights.random(16, 4), 4, lookup_bits=6, tensor_bits={"scores": 6})


def test_fast_circuit_is_cheaper_than_the_published_one(circuit):
    published = QuantizedHead(HeadWeights.random(16, 4, seed=0), 4)
    published.calibrate(CALIBRATION)
    slow = HeadCircuit(published, CALIBRATION, length=LENGTH).summary()
    fast = circuit.summary()
    assert fast.pbs_count < slow.pbs_count / 1.5
    assert fast.max_bit_width <= slow.max_bit_width
    assert fast.complexity < slow.complexity / 2


def test_build_head_builds_the_design_of_its_config():
    weights = HeadWeights.random(16, 4)
    assert type(build_head(weights, COURSE)) is FastHead
    assert type(build_head(weights, PUBLISHED)) is QuantizedHead
    quarter = build_head(weights, COURSE.replace(design="fast-quarter-squares"))
    assert quarter.one_lookup_products is False
    for config in (COURSE, PUBLISHED, FROM_X, COURSE.replace(design="fast-quarter-squares")):
        assert build_head(weights, config).config == config  # the head keeps the settings it was built from
    with pytest.raises(TypeError, match="config must be a HeadConfig"):
        build_head(weights, {"n_bits": 4})


@pytest.mark.fhe
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


def test_causal_pairs_of_the_last_queries():
    full, last = CausalPairs(5), CausalPairs(5, queries=2)
    assert len(last) == 4 + 5 and last.counts == [4, 5] and last.starts == [0, 4]
    assert last.rows == [0] * 4 + [1] * 5 and last.cols == [0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert [(r + 3, c) for r, c in zip(last.rows, last.cols, strict=True)] == list(
        zip(full.rows, full.cols, strict=True)
    )[6:]
    for bad in (0, 6, 1.0, True):
        with pytest.raises(ValueError, match="queries must be an integer from 1 to length=5"):
            CausalPairs(5, queries=bad)
