"""The whole attention layer one token at a time (course_lib.layer) and as an FHE module (course_lib.layer_circuit)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from course_lib.attention import HeadWeights
from course_lib.dual_array import DualArray
from course_lib.fast_attention import FastHead
from course_lib.fhe import DEFAULT_PROJECTION
from course_lib.keys import ensure_keys
from course_lib.layer import KVCache, ProjectionWeights, QuantizedLayer
from course_lib.layer_circuit import LayerCircuit, step_name

N_EMBD, HEAD_DIM, N_HEAD = 16, 4, 4


def make_layer(seed: int = 0, *, exact: bool = False, n_bits: int = 3) -> tuple[QuantizedLayer, list[np.ndarray]]:
    inputs = HeadWeights.random_inputs(24, N_EMBD, seed=seed + 1)
    projection = {**DEFAULT_PROJECTION, "exact_projection_rounding": exact}
    heads = [
        FastHead(HeadWeights.random(N_EMBD, HEAD_DIM, seed=seed + 10 + h), n_bits, lookup_bits=n_bits + 2, **projection)
        for h in range(N_HEAD)
    ]
    rng = np.random.default_rng(seed)
    c_proj = ProjectionWeights(rng.normal(scale=0.3, size=(N_EMBD, N_EMBD)), rng.normal(scale=0.1, size=N_EMBD))
    layer = QuantizedLayer(heads, c_proj)
    layer.calibrate(inputs)
    return layer, inputs


def float_layer(layer: QuantizedLayer, x: np.ndarray) -> np.ndarray:
    """GPT-2's attention layer in plain float NumPy, every head then c_proj."""
    from course_lib.attention import float_head

    heads = np.concatenate([float_head(x, head.weights) for head in layer.heads], axis=1)
    return heads @ layer.c_proj.w + layer.c_proj.b


@pytest.fixture(scope="module")
def exact_layer():
    return make_layer(exact=True)


@pytest.fixture(scope="module")
def exact_circuit(exact_layer):
    layer, inputs = exact_layer
    return LayerCircuit(layer, inputs, max_tokens=3)


def test_float_side_is_gpt2s_attention_layer(exact_layer):
    layer, inputs = exact_layer
    x = inputs[0][:5]
    np.testing.assert_allclose(layer.run(x).float, float_layer(layer, x), atol=1e-9)


def test_steps_give_the_integers_of_the_whole_sequence(exact_layer):
    """Token after token with a KV cache: the rows of every head run on the whole sequence, requantized,
    then c_proj: the same integers."""
    layer, inputs = exact_layer
    x = inputs[1][:5]
    outputs = [head.run(x).requantize(layer.output_quantizer) for head in layer.heads]
    joined = outputs[0]
    for out in outputs[1:]:
        joined = joined.append(out, axis=1)
    whole = joined.linear(layer.w_proj, layer.c_proj.b)
    np.testing.assert_array_equal(layer.run(x).int, whole.int)


def test_the_cache_keeps_one_entry_per_token(exact_layer):
    layer, inputs = exact_layer
    xq = layer.quantize_input(inputs[2][:3])
    cache = KVCache()
    for t in range(3):
        _, cache = layer.step(xq[t : t + 1], cache)
    assert len(cache) == 3
    keys, values = cache.head(0)
    assert keys.shape == values.shape == (3, HEAD_DIM)
    assert keys.squares is not None and values.squares is not None


def test_step_refuses_bad_shapes(exact_layer):
    layer, inputs = exact_layer
    with pytest.raises(ValueError, match=r"one token's x of shape \(1, 16\)"):
        layer.step(layer.quantize_input(inputs[0][:2]))


def test_layer_refuses_heads_that_do_not_fill_the_width():
    heads = [FastHead(HeadWeights.random(N_EMBD, HEAD_DIM, seed=h), 3, lookup_bits=5) for h in range(3)]
    c_proj = ProjectionWeights(np.zeros((N_EMBD, N_EMBD)), np.zeros(N_EMBD))
    with pytest.raises(ValueError, match="3 heads of dimension 4 do not make the layer's width 16"):
        QuantizedLayer(heads, c_proj)


def test_simulation_equals_the_clear_steps(exact_layer, exact_circuit):
    layer, inputs = exact_layer
    assert exact_circuit.is_exact
    for x in inputs[3:6]:
        xi = exact_circuit.encode(x[:3])
        np.testing.assert_array_equal(exact_circuit.simulate(xi), exact_circuit.clear(xi))
        np.testing.assert_array_equal(exact_circuit.clear(xi), layer.run(x[:3]).int)


def test_pbs_per_step_grow_linearly(exact_circuit):
    pbs = exact_circuit.pbs_per_step()
    assert list(pbs) == [1, 2, 3]
    # one more cached token costs, per head, its two products per dimension (scores, mix), one step of the
    # max chain, two exp and the square of its probability: linear in T (recomputing every row is T**2)
    assert pbs[3] - pbs[2] == N_HEAD * (2 * HEAD_DIM + 4)


def test_execution_equals_simulation_and_needs_no_weight(exact_layer, exact_circuit, tmp_path):
    """The encrypted cache goes from step to step as ciphertexts; the client's side (encode, encrypt,
    decrypt, dequantize) runs with every weight of the layer replaced by NaN after compiling."""
    layer, inputs = exact_layer
    xi = exact_circuit.encode(inputs[6][:3])
    expected = exact_circuit.simulate(xi)
    ensure_keys(exact_circuit.module, tmp_path, progress=False)
    saved = [(head.weights, head.w_parts) for head in layer.heads], layer.c_proj, layer.w_proj
    try:
        for head in layer.heads:
            head.weights = dataclasses.replace(head.weights, w_qkv=np.full_like(head.weights.w_qkv, np.nan))
            head.w_parts = None
        layer.c_proj = ProjectionWeights(np.full((N_EMBD, N_EMBD), np.nan), np.full(N_EMBD, np.nan))
        layer.w_proj = None
        np.testing.assert_array_equal(exact_circuit.execute(exact_circuit.encode(inputs[6][:3])), expected)
        assert np.all(np.isfinite(exact_circuit.dequantize(expected)))
    finally:
        for head, (weights, parts) in zip(layer.heads, saved[0], strict=True):
            head.weights, head.w_parts = weights, parts
        layer.c_proj, layer.w_proj = saved[1], saved[2]


def test_approximate_rounding_stays_close(tmp_path):
    """Rounded approximately, a q, k or v integer may be one off: the outputs stay near the clear ones."""
    layer, inputs = make_layer(seed=3, exact=False)
    circuit = LayerCircuit(layer, inputs, max_tokens=2)
    assert not circuit.is_exact
    spread = []
    for x in inputs[:8]:
        xi = circuit.encode(x[:2])
        clear, simulated = circuit.clear(xi), circuit.simulate(xi)
        spread.append(np.abs(circuit.dequantize(simulated) - circuit.dequantize(clear)).max())
        error = np.abs(circuit.dequantize(clear) - float_layer(layer, x[:2])).max()
        assert np.abs(circuit.dequantize(simulated) - float_layer(layer, x[:2])).max() <= 3 * error + 1e-9
    assert max(spread) > 0  # the rounding did differ somewhere, or the test would show nothing


def test_circuit_checks_its_inputs(exact_circuit):
    row = np.zeros((1, N_EMBD), dtype=np.int64)
    with pytest.raises(ValueError, match="up to 3 tokens, got token 4"):
        exact_circuit.check_row(row, 4)
    with pytest.raises(ValueError, match=r"shape \(1, 16\)"):
        exact_circuit.check_row(np.zeros((2, N_EMBD), dtype=np.int64), 1)
    params = exact_circuit.layer.input_params
    with pytest.raises(ValueError, match=rf"must lie in \[{params.qmin}, {params.qmax}\]"):
        exact_circuit.check_row(row + params.qmax + 1, 1)
    with pytest.raises(ValueError, match=r"1 <= T <= 3"):
        exact_circuit.clear(np.zeros((4, N_EMBD), dtype=np.int64))
    assert step_name(2) == "step_2"


def test_append_and_carried_squares():
    params = FastHead(HeadWeights.random(N_EMBD, HEAD_DIM), 3).quantizers["k"]
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
