"""Several heads in one circuit (HeadCircuit with a list of heads), SwappedAttention and generation."""

import numpy as np
import pytest
import torch

from course_lib.attention import HeadWeights, QuantizedHead
from course_lib.data import load_calibration_prompts
from course_lib.fast_attention import FastHead
from course_lib.fhe import HeadCircuit, InputRangeError, SequenceLengthError
from course_lib.generation import generate
from course_lib.gpt2 import SwappedAttention, SwappedHead
from course_lib.keys import ensure_keys

LENGTH = 4


def small_inputs(n=12, seed=1, n_embd=16):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(2, 9)), n_embd)) for _ in range(n)]


#: Enough calibration inputs that held-out inputs of the same kind stay within the compiled ranges.
CALIBRATION = small_inputs(n=60)


def small_heads(n_heads=2, design=FastHead):
    heads = [design(HeadWeights.random(16, 4, seed=h), 4, lookup_bits=6) for h in range(n_heads)]
    for head in heads:
        head.calibrate(CALIBRATION)
    return heads


@pytest.fixture(scope="module")
def two_heads():
    heads = small_heads()
    return heads, HeadCircuit(heads, CALIBRATION, length=LENGTH)


def test_heads_side_by_side_equal_each_head_alone(two_heads):
    heads, circuit = two_heads
    alone = [HeadCircuit(head, CALIBRATION, length=LENGTH) for head in heads]
    for x in small_inputs(n=5, seed=7):
        x = x[:LENGTH]
        q, k, v = circuit.encode(x)
        assert q.shape == (LENGTH, 8)
        together = circuit.simulate(q, k, v)
        np.testing.assert_array_equal(together, circuit.clear(q, k, v))
        expected = np.concatenate([c.clear(*c.encode(x)) for c in alone], axis=1)
        np.testing.assert_array_equal(together, expected)
        reals = np.concatenate([c.dequantize(c.clear(*c.encode(x)), len(x)) for c in alone], axis=1)
        np.testing.assert_allclose(circuit.dequantize(together, len(x)), reals, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            circuit.dequantize(together, len(x)),
            np.concatenate([h.run(x).dequantize() for h in heads], axis=1),
            rtol=0,
            atol=1e-12,
        )


def test_several_heads_checks(two_heads):
    heads, circuit = two_heads
    with pytest.raises(AttributeError, match="2 heads"):
        _ = circuit.head
    q, k, v = circuit.encode(small_inputs(n=1)[0][:3])
    bad = q.copy()
    bad[0, 5] = 99  # a column of head 1
    with pytest.raises(InputRangeError, match="q of head 1"):
        circuit.prepare(bad, k, v)
    with pytest.raises(SequenceLengthError, match=r"shape \(T, 8\)"):
        circuit.prepare(q[:, :4], k, v)
    other = FastHead(HeadWeights.random(16, 8, seed=3), 4, lookup_bits=6)
    other.calibrate(CALIBRATION)
    with pytest.raises(ValueError, match="share their head dimension"):
        HeadCircuit([heads[0], other], CALIBRATION)
    with pytest.raises(ValueError, match="non-empty list"):
        HeadCircuit([], CALIBRATION)


def test_two_heads_execute_as_simulated(two_heads, tmp_path):
    _, circuit = two_heads
    ensure_keys(circuit.circuit, tmp_path, progress=False)
    qkv = circuit.encode(small_inputs(n=1, seed=5)[0][:LENGTH])
    np.testing.assert_array_equal(circuit.execute(*qkv), circuit.simulate(*qkv))


def test_published_heads_side_by_side_too():
    heads = small_heads(design=QuantizedHead)
    circuit = HeadCircuit(heads, CALIBRATION, length=3)
    qkv = circuit.encode(small_inputs(n=1, seed=2)[0][:3])
    np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))


# -- the bundled model -------------------------------------------------------------------------------
def test_swapped_attention_modes_and_generation(bundled):
    model, tokenizer = bundled
    prompt = "A key is"
    with SwappedAttention(model, 0, n_bits=4, lookup_bits=6) as swap:
        assert len(swap.heads) == model.config.n_head and swap.head_indices == [0, 1, 2, 3]
        with pytest.raises(AttributeError, match="use .heads"):
            _ = swap.head
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        float_run = generate(model, tokenizer, prompt, 3)
        swap.mode = "quantized"
        quantized = generate(model, tokenizer, prompt, 3, swap)
        assert all(t.encrypted_seconds is None for t in quantized.tokens)
        n_prompt = tokenizer(prompt, return_tensors="pt")["input_ids"].shape[1]
        swap.compile(length=n_prompt + 2)
        swap.mode = "simulate"
        simulated = generate(model, tokenizer, prompt, 3, swap)
        assert simulated.token_ids == quantized.token_ids
        assert all(t.encrypted_seconds is not None for t in simulated.tokens)
        assert simulated.text == prompt + "".join(t.text for t in simulated.tokens)
        with pytest.raises(ValueError, match=f"compiled for {n_prompt + 2}"):
            generate(model, tokenizer, prompt, 4, swap)
        with pytest.raises(ValueError, match="positive integer"):
            generate(model, tokenizer, prompt, 0, swap)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        logits = {}
        for mode in ("quantized", "simulate"):
            swap.mode = mode
            with torch.no_grad():
                logits[mode] = model(ids).logits
        torch.testing.assert_close(logits["simulate"], logits["quantized"], rtol=0, atol=0)
    assert len(float_run.tokens) == 3


def test_swapped_attention_replaces_every_head(bundled):
    """With every head swapped, the float side of each head must rebuild the float model exactly."""
    model, tokenizer = bundled
    ids = tokenizer("The cipher text", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(ids).logits
    with SwappedAttention(model, 1, n_bits=8, lookup_bits=12, design="published") as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=8))
        swap.mode = "quantized"
        with torch.no_grad():
            quantized = model(ids).logits
    assert not torch.equal(quantized, reference)
    assert (quantized - reference).abs().max() < 0.5
    assert repr(swap).startswith("SwappedAttention(layer=1, heads=[0, 1, 2, 3]")
    with SwappedHead(model, 0, 2) as one:
        assert one.head_index == 2 and one.head is one.heads[0]
