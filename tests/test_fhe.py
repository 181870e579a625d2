"""course_lib.fhe, keys, transport, client and server: the compiled head, its keys, and the split.

The circuits here are small (a random head, model width 16, head dimension 4) so that
compilation and key generation take seconds; the bundled model's head is checked in
simulation, and for real in notebook 03.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from course_lib.attention import HeadWeights, QuantizedHead
from course_lib.client import RemoteHead, ServerError, ServerProcess
from course_lib.contract import CIRCUIT_FILE, OPEN_SESSION, SERVER_FILE
from course_lib.data import load_calibration_prompts
from course_lib.dual_array import DualArray
from course_lib.fast_attention import FastHead
from course_lib.fhe import HeadCircuit, InputRangeError, SequenceLengthError
from course_lib.gpt2 import SwappedHead
from course_lib.keys import KEY_CACHE_ENV, circuit_fingerprint, ensure_keys, key_cache_dir
from course_lib.transport import TransportError, pack, unpack

LENGTH = 4


def small_circuit(n_bits=4, lookup_bits=5, length=LENGTH, seed=0, design=QuantizedHead):
    head = design(HeadWeights.random(16, 4, seed=seed), n_bits, lookup_bits=lookup_bits)
    inputs = HeadWeights.random_inputs(12, 16)
    head.calibrate(inputs)
    return HeadCircuit(head, inputs, length=length)


@pytest.fixture(scope="module")
def circuit():
    return small_circuit()


def narrow_circuit(length=LENGTH, seed=0):
    """The cheapest circuit to key and run, a 2-bit fast head: for the tests of keys, execution and the server.

    What they check does not depend on the head's design or width; its keys take a few seconds, not twenty.
    """
    return small_circuit(n_bits=2, lookup_bits=2, length=length, seed=seed, design=FastHead)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A narrow circuit with keys (in a temporary cache)."""
    circuit = narrow_circuit()
    ensure_keys(circuit.circuit, tmp_path_factory.mktemp("keys"), progress=False)
    return circuit


def test_simulation_equals_clear_quantized_computation(circuit):
    for x in HeadWeights.random_inputs(10, 16, seed=7):
        qkv = circuit.encode(x[:LENGTH])
        np.testing.assert_array_equal(circuit.simulate(*qkv), circuit.clear(*qkv))


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


def test_the_published_design_executes_as_simulated_too(tmp_path):
    """The keyed tests above run a fast head; the published design's circuit, narrow, on ciphertexts once."""
    circuit = small_circuit(n_bits=2, lookup_bits=2)
    ensure_keys(circuit.circuit, tmp_path, progress=False)
    qkv = circuit.encode(HeadWeights.random_inputs(1, 16, seed=21)[0][:LENGTH])
    np.testing.assert_array_equal(circuit.execute(*qkv), circuit.simulate(*qkv))


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


def test_keys_are_cached_per_circuit(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_CACHE_ENV, str(tmp_path / "cache"))
    assert key_cache_dir() == tmp_path / "cache"
    first = narrow_circuit(seed=0)
    report = ensure_keys(first.circuit, progress=False)
    assert report.generated and report.path.exists() and report.path.parent.name == report.fingerprint
    again = narrow_circuit(seed=0)  # the same circuit, compiled again: same fingerprint, keys loaded
    assert circuit_fingerprint(again.circuit) == report.fingerprint
    second = ensure_keys(again.circuit, progress=False)
    assert not second.generated and second.path == report.path
    x = HeadWeights.random_inputs(1, 16)[0][:3]
    np.testing.assert_array_equal(again.execute(*again.encode(x)), first.simulate(*first.encode(x)))
    other = narrow_circuit(seed=1)  # another circuit (other weights) never reuses these keys
    assert circuit_fingerprint(other.circuit) != report.fingerprint
    assert ensure_keys(other.circuit, progress=False).generated


def test_transport_roundtrip_and_damage():
    parts = [b"abc", b"", bytes(range(256)) * 3]
    message = pack(parts)
    assert unpack(message, expected_parts=3) == parts
    with pytest.raises(TransportError, match="truncated"):
        unpack(message[:-5])
    damaged = bytearray(message)
    damaged[-10] ^= 1
    with pytest.raises(TransportError, match="part 2 is corrupted"):
        unpack(bytes(damaged))
    with pytest.raises(TransportError, match="wrong header"):
        unpack(b"hello")
    with pytest.raises(TransportError, match="expected 1 parts"):
        unpack(message, expected_parts=1)
    with pytest.raises(TransportError, match="unexpected bytes"):
        unpack(message + b"x")


@pytest.fixture(scope="module")
def server(keyed):
    with ServerProcess(keyed) as process:
        yield process


def test_client_server_run_equals_simulation_and_never_sends_a_secret_key(keyed, server):
    with RemoteHead(server.url, keyed) as remote:
        x = HeadWeights.random_inputs(1, 16, seed=8)[0][:LENGTH]
        qkv = keyed.encode(x)
        out, stats = remote.run(*qkv)
        np.testing.assert_array_equal(out, keyed.simulate(*qkv))
        assert stats.bytes_sent > 0 and stats.bytes_received > 0
        sent = remote.sent
    assert len(sent) == 2  # the evaluation keys, then the ciphertexts
    secret_keys = [key.serialize() for key in keyed.circuit.keys._keyset.get_client_keys().get_secret_keys()]
    assert secret_keys and all(len(key) > 1000 for key in secret_keys)
    for key in secret_keys:
        payload = key[len(key) // 2 :]  # past any header: the key material itself
        for start in range(0, len(payload) - 64, max(1, len(payload) // 8)):
            window = payload[start : start + 64]
            assert all(window not in body for body in sent)
    # What was sent is exactly the evaluation keys and ciphertexts of three inputs.
    assert unpack(sent[0]) == [keyed.circuit.keys.evaluation.serialize()]
    assert len(unpack(sent[1])) == 3


def test_in_process_server_of_a_memory_capped_session_answers_the_same(keyed, monkeypatch):
    monkeypatch.setenv("COURSE_MEMORY_LIMIT", "2G")
    with ServerProcess(keyed) as in_process:
        assert in_process.in_process and in_process.process.poll() is None
        with RemoteHead(in_process.url, keyed) as remote:
            x = HeadWeights.random_inputs(1, 16, seed=8)[0][:LENGTH]
            qkv = keyed.encode(x)
            out, _ = remote.run(*qkv)
        np.testing.assert_array_equal(out, keyed.simulate(*qkv))
    assert in_process.process.poll() == 0  # the thread ended with stop()


def test_server_artifact_holds_no_keys(keyed, tmp_path):
    import zipfile

    folder = keyed.save_server(tmp_path / "artifact")
    names = zipfile.ZipFile(folder / SERVER_FILE).namelist()
    assert not any("key" in name.lower() for name in names)
    assert sorted(p.name for p in folder.iterdir()) == sorted([CIRCUIT_FILE, SERVER_FILE])


def test_server_refuses_damaged_bytes_and_keeps_serving(keyed, server):
    x = HeadWeights.random_inputs(1, 16, seed=9)[0][:3]
    qkv = keyed.prepare(*keyed.encode(x))
    with RemoteHead(server.url, keyed) as remote:
        good = pack([value.serialize() for value in keyed.circuit.encrypt(*qkv)])
        with pytest.raises(ServerError, match="400.*truncated"):
            remote.send(good[: len(good) // 2])
        damaged = bytearray(good)
        damaged[len(damaged) // 2] ^= 0xFF
        with pytest.raises(ServerError, match="400.*corrupted"):
            remote.send(bytes(damaged))
        with pytest.raises(ServerError, match="400.*not ciphertexts"):
            remote.send(pack([b"not a ciphertext"] * 3))
        out, _ = remote.run(*qkv)  # the next good request is served
        np.testing.assert_array_equal(out, keyed.simulate(*qkv))


def test_server_refuses_other_shapes_unknown_sessions_and_bad_keys(keyed, server, tmp_path):
    other = narrow_circuit(length=LENGTH + 1)  # another sequence length
    ensure_keys(other.circuit, tmp_path, progress=False)
    x = HeadWeights.random_inputs(1, 16, seed=2)[0][:2]
    foreign = pack([value.serialize() for value in other.circuit.encrypt(*other.encode(x))])
    with RemoteHead(server.url, keyed) as remote:
        with pytest.raises(ServerError, match=f"422.*compiled for sequence length {LENGTH}"):
            remote.send(foreign)
        session = remote.session
    with pytest.raises(ServerError, match="404.*unknown session"):
        remote.session = session  # closed above: the server forgot it
        remote.send(foreign)
    remote.session = None
    with pytest.raises(ServerError, match="runs circuit"):
        RemoteHead(server.url, other)  # the client notices the server runs another circuit
    import requests

    answer = requests.post(server.url + OPEN_SESSION.path(), data=pack([b"\x00" * 100]), timeout=10)
    assert answer.status_code == 400 and "not evaluation keys" in answer.json()["detail"]
    answer = requests.post(server.url + OPEN_SESSION.path(), data=b"garbage", timeout=10)
    assert answer.status_code == 400 and "wrong header" in answer.json()["detail"]


def test_unreachable_server_fails_fast(keyed):
    import time

    start = time.monotonic()
    with pytest.raises(ServerError, match="cannot reach"):
        RemoteHead("http://127.0.0.1:9", keyed)
    assert time.monotonic() - start < 10


# -- the bundled model ------------------------------------------------------------------------------
def test_swapped_head_simulation_equals_quantized_mode(bundled):
    model, tokenizer = bundled
    with SwappedHead(model, 0, 0, n_bits=4, lookup_bits=5) as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        circuit = swap.compile(length=6)
        ids = tokenizer("Cryptography is a", return_tensors="pt")["input_ids"]
        assert ids.shape[1] <= 6
        logits = {}
        for mode in ("quantized", "simulate"):
            swap.mode = mode
            with torch.no_grad():
                logits[mode] = model(ids).logits
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


def test_lookup_bits_below_n_bits_is_refused():
    with pytest.raises(ValueError, match=r"lookup_bits \(3\) must be at least n_bits \(4\)"):
        QuantizedHead(HeadWeights.random(16, 4), 4, lookup_bits=3)
    with pytest.raises(ValueError, match="length must be a positive integer"):
        HeadCircuit(small_circuit().head, HeadWeights.random_inputs(12, 16), length=0)


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
