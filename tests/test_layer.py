"""course_lib.layer: the whole attention layer one token at a time, on integers (its FHE module: test_layer_circuit)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_HEAD_DIM, TINY_N_EMBD

from course_lib.attention import HeadWeights
from course_lib.config import ACCURATE_LAYER
from course_lib.fast_attention import FastHead, build_head
from course_lib.fhe import DEFAULT_PROJECTION
from course_lib.layer import KVCache, ProjectionWeights, QuantizedLayer

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
def exact_layer(tiny_swap):
    """(layer, inputs): layer 0 of conftest's tiny GPT-2 (width 8, 2 heads of 4, 3 bits, every accumulator
    rounded exactly) and its calibration inputs."""
    return tiny_swap.quantized, tiny_swap.calibration_inputs


def test_float_side_is_gpt2s_attention_layer(exact_layer):
    layer, inputs = exact_layer
    x = inputs[0][:5]
    np.testing.assert_allclose(layer.run(x).float, float_layer(layer, x), atol=1e-9)


def test_steps_give_the_integers_of_the_whole_sequence(exact_layer):
    """Token after token with a KV cache: the integers of every head run on the whole sequence, combined
    (each head's sums rounded and requantized, then c_proj)."""
    layer, inputs = exact_layer
    x = inputs[1][:5]
    whole = layer.forward(x)
    np.testing.assert_array_equal(whole.int, layer.combine([head.run(x) for head in layer.heads]).int)
    np.testing.assert_array_equal(layer.run(x).int, whole.int)
    assert any(layer.heads_drop_bits)  # the rounding of the heads' sums is on that path


def test_the_cache_keeps_one_entry_per_token(exact_layer):
    layer, inputs = exact_layer
    xq = layer.quantize_input(inputs[2][:3])
    cache = KVCache()
    for t in range(3):
        _, cache = layer.step(xq[t : t + 1], cache)
    assert len(cache) == 3
    keys, values = cache.head(0)
    assert keys.shape == values.shape == (3, TINY_HEAD_DIM)
    assert keys.squares is not None and values.squares is not None


def test_step_refuses_bad_shapes(exact_layer):
    layer, inputs = exact_layer
    with pytest.raises(ValueError, match=rf"one token's x of shape \(1, {TINY_N_EMBD}\)"):
        layer.step(layer.quantize_input(inputs[0][:2]))


def test_layer_refuses_heads_that_do_not_fill_the_width():
    heads = [FastHead(HeadWeights.random(N_EMBD, HEAD_DIM, seed=h), 3, lookup_bits=5) for h in range(3)]
    c_proj = ProjectionWeights(np.zeros((N_EMBD, N_EMBD)), np.zeros(N_EMBD))
    with pytest.raises(ValueError, match="3 heads of dimension 4 do not make the layer's width 16"):
        QuantizedLayer(heads, c_proj)


@pytest.mark.parametrize("exact", [True, False])
def test_the_whole_sequence_path_gives_the_integers_of_the_steps(exact):
    """``forward`` (every head on the whole sequence, the swapped layer's quantized mode) against ``run`` (token
    after token, as the step circuits compute), on a random layer of 4 heads, no circuit compiled."""
    layer, inputs = make_layer(seed=5, exact=exact)
    checked = 0
    for x in inputs[:6]:
        np.testing.assert_array_equal(layer.forward(x).int, layer.run(x).int)
        checked += len(x) > 1
    assert checked


def test_a_layer_takes_every_setting_of_its_heads_config():
    """ACCURATE_LAYER's settings on a random layer: the heads' output quantizer takes the config's ``"output"``
    bits, the heads share one config, and the whole-sequence path still gives the integers of the steps."""
    config = ACCURATE_LAYER.replace(n_bits=3, lookup_bits=5, tensor_bits={"input": 4, "probs": 6, "output": 5})
    inputs = HeadWeights.random_inputs(24, N_EMBD, seed=2)
    heads = [build_head(HeadWeights.random(N_EMBD, HEAD_DIM, seed=20 + h), config) for h in range(N_HEAD)]
    rng = np.random.default_rng(2)
    c_proj = ProjectionWeights(rng.normal(scale=0.3, size=(N_EMBD, N_EMBD)), rng.normal(scale=0.1, size=N_EMBD))
    layer = QuantizedLayer(heads, c_proj)
    layer.calibrate(inputs)
    assert layer.heads_quantizer.params.n_bits == 5 and layer.input_params.n_bits == 4 and layer.rounds_exactly
    for x in inputs[:4]:
        np.testing.assert_array_equal(layer.forward(x).int, layer.run(x).int)
    other = build_head(HeadWeights.random(N_EMBD, HEAD_DIM, seed=9), config.replace(probs_digits=1))
    with pytest.raises(ValueError, match="must share n_embd, head_dim and their settings"):
        QuantizedLayer([*heads[:-1], other], c_proj)
