"""course_lib.layer_circuit: the whole attention layer as an FHE module of one function per step, simulated and
executed as the clear steps compute it, and run on a server that keeps the encrypted KV cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import requests
from conftest import TINY_HEAD_DIM, TINY_N_EMBD, TINY_N_HEAD
from test_layer import float_layer, make_layer

from course_lib.client import RemoteLayer, ServerError, ServerProcess
from course_lib.contract import CIRCUIT, RUN, STEP
from course_lib.layer import ProjectionWeights
from course_lib.layer_circuit import LayerCircuit, configuration, step_name
from course_lib.transport import unpack


@pytest.fixture(scope="module")
def exact_layer(tiny_swap):
    """(layer, inputs): layer 0 of conftest's tiny GPT-2 and its calibration inputs (as in test_layer)."""
    return tiny_swap.quantized, tiny_swap.calibration_inputs


@pytest.fixture(scope="module")
def exact_circuit(tiny_swap):
    """Its module of 3 steps, with keys (the same compiled module as test_swapped_layer's)."""
    assert tiny_swap.circuit.max_tokens == 3
    return tiny_swap.circuit


@pytest.fixture(scope="module")
def keyed_circuit(exact_circuit):
    return exact_circuit


@pytest.fixture(scope="module")
def layer_server(keyed_circuit):
    with ServerProcess(keyed_circuit, in_process=True) as process:
        yield process


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
    assert pbs[3] - pbs[2] == TINY_N_HEAD * (2 * TINY_HEAD_DIM + 4)


def test_execution_equals_simulation_and_needs_no_weight(exact_layer, keyed_circuit):
    """The encrypted cache goes from step to step as ciphertexts; the client's side (encode, encrypt,
    decrypt, dequantize) runs with every weight of the layer replaced by NaN after compiling."""
    layer, inputs = exact_layer
    exact_circuit = keyed_circuit
    xi = exact_circuit.encode(inputs[6][:3])
    expected = exact_circuit.simulate(xi)
    saved = [(head.weights, head.w_parts) for head in layer.heads], layer.c_proj, layer.w_proj
    try:
        for head in layer.heads:
            head.weights = dataclasses.replace(head.weights, w_qkv=np.full_like(head.weights.w_qkv, np.nan))
            head.w_parts = None
        layer.c_proj = ProjectionWeights(np.full((TINY_N_EMBD, TINY_N_EMBD), np.nan), np.full(TINY_N_EMBD, np.nan))
        layer.w_proj = None
        np.testing.assert_array_equal(exact_circuit.execute(exact_circuit.encode(inputs[6][:3])), expected)
        assert np.all(np.isfinite(exact_circuit.dequantize(expected)))
    finally:
        for head, (weights, parts) in zip(layer.heads, saved[0], strict=True):
            head.weights, head.w_parts = weights, parts
        layer.c_proj, layer.w_proj = saved[1], saved[2]


@pytest.mark.fhe
def test_approximate_rounding_stays_close():
    """Rounded approximately, a q, k or v integer may be one off, and at 3 bits one step of q moves a score
    a lot: single outputs may jump. On average over the inputs the simulated layer stays about as close to
    the float layer as the clear integers are (measured: 1.0 to 1.2 times their mean error)."""
    layer, inputs = make_layer(seed=3, exact=False)
    circuit = LayerCircuit(layer, inputs, max_tokens=2, config=configuration(fhe_execution=False, fhe_simulation=True))
    assert not circuit.is_exact
    simulated_error, clear_error, differs = [], [], False
    for x in inputs[:8]:
        xi = circuit.encode(x[:2])
        clear, simulated = circuit.clear(xi), circuit.simulate(xi)
        differs |= not np.array_equal(clear, simulated)
        exact = float_layer(layer, x[:2])
        simulated_error.append(np.abs(circuit.dequantize(simulated) - exact).mean())
        clear_error.append(np.abs(circuit.dequantize(clear) - exact).mean())
    assert differs  # the rounding did differ somewhere, or the test would show nothing
    assert np.mean(simulated_error) <= 1.5 * np.mean(clear_error)


def test_circuit_checks_its_inputs(exact_circuit):
    row = np.zeros((1, TINY_N_EMBD), dtype=np.int64)
    with pytest.raises(ValueError, match="up to 3 tokens, got token 4"):
        exact_circuit.check_row(row, 4)
    with pytest.raises(ValueError, match=rf"shape \(1, {TINY_N_EMBD}\)"):
        exact_circuit.check_row(np.zeros((2, TINY_N_EMBD), dtype=np.int64), 1)
    params = exact_circuit.layer.input_params
    with pytest.raises(ValueError, match=rf"must lie in \[{params.qmin}, {params.qmax}\]"):
        exact_circuit.check_row(row + params.qmax + 1, 1)
    with pytest.raises(ValueError, match=r"1 <= T <= 3"):
        exact_circuit.clear(np.zeros((4, TINY_N_EMBD), dtype=np.int64))
    assert step_name(2) == "step_2"


def test_server_publishes_a_layer(keyed_circuit, layer_server):
    description = requests.get(layer_server.url + CIRCUIT.path(), timeout=10).json()
    assert description["scope"] == "layer" and description["inputs"] == ["x"]
    assert description["input_shape"] == [1, TINY_N_EMBD] and description["length"] == 3
    assert description["queries"] == 1 and description["heads"] == TINY_N_HEAD
    assert description["input_bytes"] == keyed_circuit.x_bytes


def test_remote_layer_equals_simulation_and_sends_only_x(exact_layer, keyed_circuit, layer_server):
    """Token by token through HTTP: the same integers as the simulation, the client sending one token's
    encrypted x per step (the same bytes at every length) and never a secret key; a second sequence
    after the first starts from an empty cache."""
    _, inputs = exact_layer
    with RemoteLayer(layer_server.url, keyed_circuit) as remote:
        for x, tokens in ((inputs[7], 3), (inputs[8], 1)):  # the second sequence: its first token is enough
            xi = keyed_circuit.encode(x[:tokens])
            out, stats = remote.run(xi)
            np.testing.assert_array_equal(out, keyed_circuit.simulate(xi))
            assert remote.tokens == tokens
            assert len({s.bytes_sent for s in stats}) == 1  # flat in the length: the cache stays on the server
        sent = remote.sent
    keys, *requests_sent = sent
    assert unpack(keys) == [keyed_circuit.module.keys.evaluation.serialize()]
    steps = [body for body in requests_sent if body]  # the FORGET between the sequences has no body
    assert len(steps) == 4 and all(len(unpack(body)) == 1 for body in steps)
    keyset = keyed_circuit.module.keys._keyset  # noqa: SLF001 (the test looks for the secret key material)
    secret_keys = [key.serialize() for key in keyset.get_client_keys().get_secret_keys()]
    assert secret_keys and all(len(key) > 1000 for key in secret_keys)
    for key in secret_keys:
        payload = key[len(key) // 2 :]  # past any header: the key material itself
        for start in range(0, len(payload) - 64, max(1, len(payload) // 8)):
            assert all(payload[start : start + 64] not in body for body in sent)


def test_server_refuses_steps_out_of_order(exact_layer, keyed_circuit, layer_server):
    _, inputs = exact_layer
    xi = keyed_circuit.encode(inputs[9][:2])
    with RemoteLayer(layer_server.url, keyed_circuit, keep_sent=False) as remote:
        message = keyed_circuit.encrypt_step(xi[1:2], 2)
        url = layer_server.url + STEP.path(session=remote.session, position="2")
        answer = requests.post(url, data=message, timeout=60)
        assert answer.status_code == 409 and "holds 0 token(s): the next one is token 1" in answer.json()["detail"]
        remote.step(xi[:1])
        answer = requests.post(
            layer_server.url + STEP.path(session=remote.session, position="4"), data=message, timeout=60
        )
        assert answer.status_code == 422 and "tokens 1 to 3" in answer.json()["detail"]
        answer = requests.post(layer_server.url + RUN.path(session=remote.session), data=message, timeout=60)
        assert answer.status_code == 404 and "runs a layer" in answer.json()["detail"]
        y, _ = remote.step(xi[1:2])  # the refused requests left the cache as it was
        np.testing.assert_array_equal(y, keyed_circuit.simulate(xi)[1:2])
        with pytest.raises(ValueError, match="up to 3 tokens, got token 4"):  # checked before encrypting
            remote.step(xi[:1])
            remote.step(xi[:1])
        assert remote.forget() == 3 and remote.tokens == 0
        assert remote.sent == []  # keep_sent=False: not even the evaluation keys' upload
        assert [position for position, _ in remote.history] == [1, 2, 3]
    with pytest.raises(ServerError, match="unknown session"):
        remote.session = "0" * 32
        remote.step(xi[:1])


@pytest.mark.fhe
def test_an_accurate_layer_simulates_as_the_clear_steps(tiny_gpt2):
    """ACCURATE_LAYER's settings, narrowed for the tiny GPT-2's layer 1: its module's simulation is the clear
    computation (its two new operations on ciphertexts: test_fast_attention's keyed test)."""
    from course_lib.config import ACCURATE_LAYER
    from course_lib.data import load_calibration_prompts
    from course_lib.swapped_layer import SwappedLayer

    model, tokenizer = tiny_gpt2
    config = ACCURATE_LAYER.replace(n_bits=3, lookup_bits=4, tensor_bits={"input": 4, "probs": 6, "output": 4})
    with SwappedLayer(model, 1, config) as swap:  # layer 1: conftest's tiny_swap may hold layer 0
        swap.calibrate(tokenizer, load_calibration_prompts(limit=24))
        circuit = swap.compile(2)
        assert circuit.is_exact
        for x in swap.calibration_inputs[3:6]:
            xi = circuit.encode(x[:2])
            np.testing.assert_array_equal(circuit.simulate(xi), circuit.clear(xi))
            np.testing.assert_array_equal(circuit.clear(xi), swap.quantized.run(x[:2]).int)
