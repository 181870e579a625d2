"""Several heads in one circuit (HeadCircuit with a list of heads), SwappedAttention and generation."""

import re

import numpy as np
import pytest
import torch

from course_lib.attention import HeadWeights, QuantizedHead
from course_lib.data import load_calibration_prompts
from course_lib.dual_array import DualArray
from course_lib.fast_attention import CausalPairs, FastHead
from course_lib.fhe import HeadCircuit, InputRangeError, SequenceLengthError
from course_lib.generation import generate
from course_lib.gpt2 import SwappedAttention, SwappedHead
from course_lib.keys import ensure_keys, keys_loaded, unload_keys

LENGTH = 4


#: Enough calibration inputs that held-out inputs of the same kind stay within the compiled ranges.
CALIBRATION = HeadWeights.random_inputs(60, 16)


def small_heads(n_heads=2, design=FastHead):
    heads = [design(HeadWeights.random(16, 4, seed=h), 4, lookup_bits=6) for h in range(n_heads)]
    for head in heads:
        head.calibrate(CALIBRATION)
    return heads


@pytest.fixture(scope="module")
def two_heads():
    heads = small_heads()
    return heads, HeadCircuit(heads, CALIBRATION, length=LENGTH)


@pytest.fixture(scope="module")
def two_narrow_heads():
    """Two 2-bit heads of dimension 2: keys in about a second, for the tests that execute on ciphertexts."""
    heads = [FastHead(HeadWeights.random(16, 2, seed=h), 2, lookup_bits=2) for h in range(2)]
    for head in heads:
        head.calibrate(CALIBRATION)
    return heads, HeadCircuit(heads, CALIBRATION, length=LENGTH)


def test_heads_side_by_side_equal_each_head_alone(two_heads):
    heads, circuit = two_heads
    alone = [HeadCircuit(head, CALIBRATION, length=LENGTH) for head in heads]
    for x in HeadWeights.random_inputs(5, 16, seed=7):
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
    q, k, v = circuit.encode(HeadWeights.random_inputs(1, 16)[0][:3])
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


@pytest.mark.keys
def test_two_heads_execute_as_simulated(two_narrow_heads, tmp_path):
    _, circuit = two_narrow_heads
    ensure_keys(circuit.circuit, tmp_path, progress=False)
    qkv = circuit.encode(HeadWeights.random_inputs(1, 16, seed=5)[0][:LENGTH])
    np.testing.assert_array_equal(circuit.execute(*qkv), circuit.simulate(*qkv))


@pytest.mark.fhe
def test_published_heads_side_by_side_too():
    heads = small_heads(design=QuantizedHead)
    circuit = HeadCircuit(heads, CALIBRATION, length=3)
    qkv = circuit.encode(HeadWeights.random_inputs(1, 16, seed=2)[0][:3])
    np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))


# -- the bundled model -------------------------------------------------------------------------------
@pytest.mark.fhe
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
        with pytest.raises(ValueError, match=f"compiled for at most {n_prompt + 2}"):
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


@pytest.mark.fhe
def test_a_circuit_without_parameters_says_how_to_narrow_it(bundled, load_script):
    """Head 1 of the bundled model without rounded products needs lookups too wide for concrete's parameters.

    HeadCircuit raises NoParametersError, which says how to narrow the circuit. The benchmarks catch exactly that
    error, record the circuit as one that does not compile, and go on with the next one.
    """
    model, tokenizer = bundled
    with SwappedAttention(model, 0, n_bits=4, lookup_bits=None) as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        arguments = (swap.heads[1], swap.calibration_inputs, 2)
        attention_fhe = load_script("benchmarks/attention_fhe.py")
        cost_model = load_script("benchmarks/attention_cost_model.py")
        rows = {
            "attention_fhe": attention_fhe.measure_circuit(*arguments, execute=False, runs=1),
            "attention_cost_model": cost_model.count(*arguments),
        }
    for script, row in rows.items():
        # Only NoParametersError is caught there, so this message proves HeadCircuit raised it.
        assert re.fullmatch(
            r"does not compile: concrete found no cryptographic parameters .* lookup_bits.*", row["error"]
        ), script
        assert set(row) == {"length", "error"}, script


@pytest.mark.fhe
def test_the_benchmark_does_not_generate_keys_too_large_for_its_limit(bundled, load_script):
    """A circuit whose evaluation keys exceed --execute-max-keys-gb is compiled and simulated, not run.

    Generating keys needs more memory than their size: without this limit, the published head's 17 GB of keys
    ran the benchmark's 25 GB machine out of memory.
    """
    model, tokenizer = bundled
    attention_fhe = load_script("benchmarks/attention_fhe.py")
    with SwappedHead(model, 0, 0, n_bits=4, lookup_bits=6, design="fast") as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        row = attention_fhe.measure_circuit(
            swap.head, swap.calibration_inputs, 2, execute=True, runs=1, max_keys_gb=0.001
        )
    assert row["evaluation_keys_mb"] > 1
    gigabytes = row["evaluation_keys_mb"] / 1e3
    assert row["not_executed"] == (
        f"evaluation keys {gigabytes:.1f} GB before compression, above --execute-max-keys-gb 0.001"
    )
    assert "keygen_seconds" not in row and "run_seconds" not in row


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


# -- generation steps: the last token's row only (a KV cache) ------------------------------------------
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


@pytest.mark.parametrize("queries", [1, 2])
def test_step_circuit_equals_the_last_rows_of_the_full_circuit(two_heads, queries):
    heads, full = two_heads
    step = HeadCircuit(heads, CALIBRATION, length=LENGTH, queries=queries)
    assert step.is_step and "queries=" in repr(step) and "KV cache" in str(step.summary())
    assert step.summary().pbs_count < full.summary().pbs_count
    checked = 0
    for x in HeadWeights.random_inputs(8, 16, seed=11):
        if len(x) < LENGTH:
            continue
        q, k, v = full.encode(x[:LENGTH], pad=False)
        rows = step.simulate(q[-queries:], k, v)
        assert rows.shape == (queries, 8)
        np.testing.assert_array_equal(rows, step.clear(q[-queries:], k, v))
        np.testing.assert_array_equal(rows, full.clear(q, k, v)[LENGTH - queries :])
        np.testing.assert_array_equal(step.encode(x[:LENGTH])[0], q[-queries:])
        checked += 1
    assert checked >= 3


def test_step_circuit_checks(two_heads):
    heads, full = two_heads
    step = HeadCircuit(heads, CALIBRATION, length=LENGTH, queries=1)
    q, k, v = full.encode(HeadWeights.random_inputs(1, 16, seed=4)[0][:3], pad=False)
    with pytest.raises(SequenceLengthError, match=r"exactly 4 tokens, no padding\); k has shape \(3, 8\)"):
        step.prepare(q[-1:], k, v)
    with pytest.raises(SequenceLengthError, match=r"q of shape \(1, 8\)"):
        step.prepare(q, k, v)
    with pytest.raises(ValueError, match="queries must be an integer from 1 to length=4"):
        HeadCircuit(heads, CALIBRATION, length=LENGTH, queries=5)
    with pytest.raises(ValueError, match="the fast design"):
        HeadCircuit(small_heads(design=QuantizedHead), CALIBRATION, length=3, queries=1)
    with pytest.raises(ValueError, match="no calibration input has 40 tokens"):
        HeadCircuit(heads, CALIBRATION, length=40, queries=1)
    published = small_heads(n_heads=1, design=QuantizedHead)[0]
    dual = [
        DualArray.from_int(np.zeros((t, 4), dtype=np.int64), published.quantizers[n].params)
        for t, n in ((1, "q"), (3, "k"), (3, "v"))
    ]
    with pytest.raises(ValueError, match="same number of tokens"):
        published.attend(*dual)


@pytest.mark.keys
def test_keys_are_loaded_for_a_run_and_forgotten_after(two_narrow_heads, tmp_path):
    _, circuit = two_narrow_heads
    unload_keys(circuit.circuit)  # an earlier test generated them
    with pytest.raises(RuntimeError, match="ensure_keys"):
        with keys_loaded(circuit.circuit, tmp_path):
            pass
    ensure_keys(circuit.circuit, tmp_path, progress=False)
    unload_keys(circuit.circuit)
    assert not circuit.circuit.keys.are_generated
    qkv = circuit.encode(HeadWeights.random_inputs(1, 16, seed=5)[0][:LENGTH])
    with keys_loaded(circuit.circuit, tmp_path):
        out = circuit.execute(*qkv)
    assert not circuit.circuit.keys.are_generated
    np.testing.assert_array_equal(out, circuit.simulate(*qkv))
    ensure_keys(circuit.circuit, tmp_path, progress=False)
    with keys_loaded(circuit.circuit, tmp_path):  # keys already in memory stay
        pass
    assert circuit.circuit.keys.are_generated


@pytest.mark.fhe
def test_generation_runs_the_new_token_only_through_step_circuits(bundled):
    model, tokenizer = bundled
    prompt = "A key is"
    n_prompt = tokenizer(prompt, return_tensors="pt")["input_ids"].shape[1]
    with SwappedAttention(model, 0, n_bits=4, lookup_bits=6) as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        swap.mode = "quantized"
        quantized = generate(model, tokenizer, prompt, 4, swap)
        with pytest.raises(ValueError, match="steps_up_to must be an integer larger than length"):
            swap.compile(length=n_prompt, steps_up_to=n_prompt)
        swap.compile(length=n_prompt, steps_up_to=n_prompt + 2)
        assert [c.length for c in swap.circuits] == [n_prompt, n_prompt + 1, n_prompt + 2]
        assert swap.max_tokens == n_prompt + 2
        swap.mode = "simulate"
        simulated = generate(model, tokenizer, prompt, 3, swap)
        assert simulated.token_ids == quantized.token_ids[:3]
        assert [t.circuit for t in simulated.tokens] == [
            f"full, {n_prompt} tokens",
            f"step, {n_prompt + 1} tokens",
            f"step, {n_prompt + 2} tokens",
        ]
        assert simulated.tokens[1].pbs < min(simulated.tokens[0].pbs, simulated.tokens[2].pbs)  # 4 tokens: 1 row
        with pytest.raises(ValueError, match=f"compiled for at most {n_prompt + 2}: compile with steps_up_to"):
            generate(model, tokenizer, prompt, 4, swap)
        with pytest.raises(ValueError, match=f"compiled for {n_prompt}: use a shorter prompt"):
            generate(model, tokenizer, prompt + " a secret", 1, swap)
        # A sequence that does not extend the previous one by a token runs the full circuit again.
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            model(ids)
        assert swap.last_circuit is swap.circuit
