"""course_lib.fhe: the compiled head. Simulation equals the clear quantized computation, execution equals
simulation, inputs are checked before encryption (its keys: test_keys; client and server: test_client).

The circuits here are small (``tests/circuits.py``) so that compilation and key generation take seconds; the
bundled model's head is checked in simulation, and for real in notebook 03.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from circuits import LENGTH, logits_in_modes, never_run, small_circuit

from course_lib.attention import HeadWeights, QuantizedHead
from course_lib.contract import CIRCUIT_FILE, SERVER_FILE
from course_lib.data import load_calibration_prompts
from course_lib.dual_array import DualArray
from course_lib.fast_attention import FastHead
from course_lib.fhe import HeadCircuit, InputRangeError, SequenceLengthError
from course_lib.gpt2 import SwappedHead
from course_lib.keys import ensure_keys, keys_loaded, unload_keys

#: Calibration inputs of the small heads side by side: enough that held-out inputs of the same kind stay in range.
CALIBRATION = HeadWeights.random_inputs(60, 16)


@pytest.fixture(scope="module")
def circuit():
    return small_circuit()


def test_simulation_equals_clear_quantized_computation(circuit):
    for x in HeadWeights.random_inputs(10, 16, seed=7):
        qkv = circuit.encode(x[:LENGTH])
        np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))


@pytest.mark.fhe
def test_products_drop_bits_and_simulation_stays_exact():
    circuit = small_circuit(n_bits=4, lookup_bits=5)
    assert any(bits > 0 for bits in circuit.head.drop_bits.values())
    assert circuit.summary().max_bit_width <= 6
    for x in HeadWeights.random_inputs(5, 16, seed=3):
        qkv = circuit.encode(x[:LENGTH])
        np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))


def test_padding_does_not_change_the_real_tokens(circuit):
    head = circuit.head
    for x in HeadWeights.random_inputs(6, 16, seed=11):
        x = x[: LENGTH - 1]  # shorter than the circuit: padded
        unpadded = head.run(x).int
        np.testing.assert_array_equal(circuit.clear(*circuit.encode(x))[: len(x)], unpadded)


def test_the_clear_part_and_the_encrypted_part_make_the_whole_head(circuit):
    x = HeadWeights.random_inputs(1, 16, seed=5)[0][:LENGTH]
    whole = circuit.head.run(x).int
    q, k, v = circuit.head.project(circuit.head.quantize_input(x))
    np.testing.assert_array_equal(circuit.head.attend(q, k, v).int, whole)


def test_summary_reports_the_circuit(circuit):
    summary = circuit.summary()
    assert summary.length == LENGTH and summary.n_bits == 4
    assert summary.pbs_count == circuit.circuit.programmable_bootstrap_count > 0
    assert sum(summary.pbs_per_step.values()) == summary.pbs_count
    assert summary.input_bytes > 0 and summary.output_bytes > 0 and summary.evaluation_key_bytes > 0
    text = str(summary)
    assert "max bit width" in text and f"{summary.pbs_count:,}" in text


def test_execution_equals_simulation(keyed):
    for x in HeadWeights.random_inputs(2, 16, seed=21):
        qkv = keyed.encode(x[:LENGTH])
        out, times = keyed.timed_execute(*qkv)
        np.testing.assert_array_equal(out, keyed.simulate(*qkv))
        assert set(times) == {"encrypt", "run", "decrypt"}


@pytest.mark.keys
def test_the_published_design_executes_as_simulated_too(tmp_path):
    """The keyed tests above run a fast head; the published design's circuit, narrow, on ciphertexts once."""
    circuit = small_circuit(n_bits=2, lookup_bits=2)
    ensure_keys(circuit.circuit, tmp_path, progress=False)
    qkv = circuit.encode(HeadWeights.random_inputs(1, 16, seed=21)[0][:LENGTH])
    np.testing.assert_array_equal(circuit.execute(*qkv), circuit.simulate(*qkv))


@pytest.mark.fhe
def test_execute_without_keys_says_what_to_do():
    circuit = small_circuit(seed=4)
    with pytest.raises(RuntimeError, match="ensure_keys"):
        circuit.execute(*circuit.encode(HeadWeights.random_inputs(1, 16)[0][:2]))


def test_too_long_and_malformed_inputs_name_the_compiled_length(circuit):
    x = HeadWeights.random_inputs(1, 16)[0]
    long = np.random.default_rng(0).normal(size=(LENGTH + 2, 16))
    with pytest.raises(SequenceLengthError, match=f"compiled for {LENGTH}"):
        circuit.encode(long)
    q, k, v = circuit.encode(x[:2])
    with pytest.raises(SequenceLengthError, match=f"compiled sequence length {LENGTH}"):
        circuit.prepare(q[:, :3], k, v)
    with pytest.raises(SequenceLengthError, match="same"):
        circuit.prepare(q[:2], k[:3], v[:3])


def test_out_of_range_integers_are_refused_before_encryption(circuit):
    q, k, v = circuit.encode(HeadWeights.random_inputs(1, 16)[0][:3])
    too_big = q.copy()
    too_big[0, 0] = circuit.input_params[0]["q"].qmax + 1  # head 0, its q
    with pytest.raises(InputRangeError, match=r"q integers must lie in \[0, 15\].*wrap around"):
        circuit.prepare(too_big, k, v)
    with pytest.raises(InputRangeError, match="dtype float64"):
        circuit.prepare(q.astype(float), k, v)


def test_server_artifact_holds_no_keys(keyed, tmp_path):
    import zipfile

    folder = keyed.save_server(tmp_path / "artifact")
    names = zipfile.ZipFile(folder / SERVER_FILE).namelist()
    assert not any("key" in name.lower() for name in names)
    assert sorted(p.name for p in folder.iterdir()) == sorted([CIRCUIT_FILE, SERVER_FILE])


# -- the bundled model ------------------------------------------------------------------------------
@pytest.mark.keys
def test_swapped_head_simulation_equals_quantized_mode(bundled):
    model, tokenizer = bundled
    with SwappedHead(model, 0, 0, n_bits=4, lookup_bits=5) as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        circuit = swap.compile(length=6)
        ids = tokenizer("Cryptography is a", return_tensors="pt")["input_ids"]
        assert ids.shape[1] <= 6
        logits = logits_in_modes(model, swap, ids)
        torch.testing.assert_close(logits["simulate"], logits["quantized"], rtol=0, atol=0)
        x = swap.attention_inputs(tokenizer, ["A compiler is a program"])[0][:6]
        ids_with_eot = tokenizer("<|endoftext|>A compiler is a program", return_tensors="pt")["input_ids"]
        direct = swap.attention_input(ids_with_eot)
        np.testing.assert_array_equal(direct[:6], x)  # the same input, read either way
        np.testing.assert_array_equal(circuit.simulate(*circuit.encode(x)), circuit.clear(*circuit.encode(x)))
        with pytest.raises(RuntimeError, match="ensure_keys"):
            swap.mode = "execute"
        too_long = tokenizer("one two three four five six seven eight nine", return_tensors="pt")["input_ids"]
        with pytest.raises(SequenceLengthError, match="compiled for 6"), torch.no_grad():
            model(too_long)


@pytest.mark.fhe
def test_modes_need_calibration_and_compilation(bundled):
    model, _ = bundled
    with SwappedHead(model, 0, 1, n_bits=4) as swap:
        with pytest.raises(RuntimeError, match="calibrate"):
            swap.mode = "simulate"
        with pytest.raises(RuntimeError, match="calibrate"):
            swap.compile()
        swap.head.calibrate([np.random.default_rng(0).normal(size=(5, model.config.n_embd))])
        with pytest.raises(RuntimeError, match="compile the head"):
            swap.mode = "simulate"
    assert DualArray  # imported for the module's readers: the circuits run DualArray code


@pytest.mark.fhe
def test_lookup_bits_below_n_bits_is_refused():
    with pytest.raises(ValueError, match=r"lookup_bits \(3\) must be at least n_bits \(4\)"):
        QuantizedHead(HeadWeights.random(16, 4), 4, lookup_bits=3)
    with pytest.raises(ValueError, match="length must be a positive integer"):
        HeadCircuit(small_circuit().head, HeadWeights.random_inputs(12, 16), length=0)


@pytest.mark.keys
def test_a_failure_after_an_encrypted_run_keeps_its_exit_status(tmp_path):
    """concrete's exit handler ends a process that ran a circuit with status 0; keep_exit_status overrides it."""
    script = tmp_path / "fails_after_a_run.py"
    script.write_text(
        "import sys\n"
        "from concrete import fhe\n"
        "from course_lib.fhe import keep_exit_status\n"
        "square = fhe.compiler({'x': 'encrypted'})(lambda x: x**2)\n"
        "circuit = square.compile(range(4))\n"
        "circuit.keygen()\n"
        "assert circuit.encrypt_run_decrypt(3) == 9\n"
        "keep_exit_status(3)\n"
        "sys.exit(3)\n"
    )
    assert subprocess.run([sys.executable, str(script)], timeout=300).returncode == 3


def small_heads(n_heads=2, design=FastHead):
    heads = [design(HeadWeights.random(16, 4, seed=h), 4, lookup_bits=6) for h in range(n_heads)]
    for head in heads:
        head.calibrate(CALIBRATION)
    return heads


@pytest.fixture(scope="module")
def two_heads():
    heads = small_heads()
    return heads, HeadCircuit(heads, CALIBRATION, LENGTH, never_run())


@pytest.fixture(scope="module")
def two_narrow_heads():
    """Two 2-bit heads of dimension 2: keys in about a second, for the tests that execute on ciphertexts."""
    heads = [FastHead(HeadWeights.random(16, 2, seed=h), 2, lookup_bits=2) for h in range(2)]
    for head in heads:
        head.calibrate(CALIBRATION)
    return heads, HeadCircuit(heads, CALIBRATION, length=LENGTH)


def test_heads_side_by_side_equal_each_head_alone(two_heads):
    heads, circuit = two_heads
    alone = [HeadCircuit(head, CALIBRATION, LENGTH, never_run()) for head in heads]
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
    circuit = HeadCircuit(heads, CALIBRATION, 3, never_run())
    qkv = circuit.encode(HeadWeights.random_inputs(1, 16, seed=2)[0][:3])
    np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))


@pytest.mark.parametrize("queries", [1, 2])
def test_step_circuit_equals_the_last_rows_of_the_full_circuit(two_heads, queries):
    heads, full = two_heads
    step = HeadCircuit(heads, CALIBRATION, LENGTH, never_run(), queries=queries)
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
    step = HeadCircuit(heads, CALIBRATION, LENGTH, never_run(), queries=1)
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
