"""course_lib.attention: the head's projection, quantized and rounded, and the circuits that start from x with it
(scope ``"projection+attention"``, the published split: the client sends x; the head's float side: test_gpt2).

The circuits are small (a random head, model width 16, head dimension 4). What is exact is
checked for equality: with exact rounding of the projection's accumulators, the circuit from x
simulates and executes the clear quantized head bit for bit. What is approximate is checked
against its bound: with approximate rounding, each q, k, v integer is at most one off the clear one.
"""

import dataclasses

import numpy as np
import pytest
from concrete import fhe

from course_lib.attention import PROJECTED, HeadWeights
from course_lib.client import RemoteHead, ServerProcess
from course_lib.contract import CircuitDescription
from course_lib.dual_array import DualArray
from course_lib.fast_attention import FastHead
from course_lib.fhe import HeadCircuit, InputRangeError, SequenceLengthError, configuration
from course_lib.keys import ensure_keys

LENGTH = 4
SCOPE = "projection+attention"


def projected_head(n_bits=3, lookup_bits=4, projection_bits=4, exact=True, seed=0, weight_scales="qkv"):
    head = FastHead(
        HeadWeights.random(16, 4, seed=seed),
        n_bits,
        n_bits_weights=4,
        lookup_bits=lookup_bits,
        projection_bits=projection_bits,
        exact_projection_rounding=exact,
        weight_scales=weight_scales,
    )
    inputs = HeadWeights.random_inputs(12, 16)
    head.calibrate(inputs)
    return head, inputs


@pytest.fixture(scope="module")
def exact_circuit():
    head, inputs = projected_head()
    return HeadCircuit(head, inputs, LENGTH, scope=SCOPE)


def test_projection_rounding_is_fitted_to_projection_bits():
    head, _ = projected_head(projection_bits=4)
    for name in PROJECTED:
        bits = head.projection_accumulator_bits[name]
        assert bits > 4  # 16 products of 3-bit by 4-bit integers: wider than the target
        assert head.projection_drop_bits[name] == bits - 4


def test_one_scale_per_q_k_v_gives_each_its_own_weights():
    head, _ = projected_head(weight_scales="qkv")
    assert head.w_qkv is None
    assert len({w.params.scale for w in head.w_parts}) == 3
    shared, _ = projected_head(weight_scales="tensor")
    assert len({w.params for w in shared.w_parts}) == 1
    with pytest.raises(ValueError, match="weight_scales must be one of 'tensor', 'qkv'"):
        FastHead(HeadWeights.random(16, 4), 3, weight_scales="channel")


def test_circuit_from_x_simulates_the_clear_quantized_head(exact_circuit):
    head = exact_circuit.head
    assert exact_circuit.input_names == ("x",) and exact_circuit.is_exact
    for x in HeadWeights.random_inputs(8, 16, seed=7):
        x = x[:LENGTH]
        (xq,) = exact_circuit.encode(x)
        clear = exact_circuit.clear(xq)
        np.testing.assert_array_equal(exact_circuit.simulate(xq), clear)
        # the circuit computes the whole quantized head, projection included (padding rows aside)
        np.testing.assert_array_equal(clear[: len(x)], head.run(x).int)


def test_circuit_from_x_counts_its_projection(exact_circuit):
    summary = exact_circuit.summary()
    assert summary.scope == SCOPE
    # one requantization lookup per q, k, v value, plus one per dropped bit (exact rounding)
    dropped = sum(exact_circuit.head.projection_drop_bits.values())
    assert summary.pbs_per_step["projection"] == LENGTH * 4 * (3 + dropped)
    assert "encrypted x" in str(summary)


@pytest.mark.keys
def test_circuit_from_x_executes_as_simulated_and_the_server_takes_x(tmp_path, monkeypatch):
    head, inputs = projected_head(n_bits=2, lookup_bits=3, projection_bits=3)
    circuit = HeadCircuit(head, inputs, LENGTH, scope=SCOPE)
    ensure_keys(circuit.circuit, tmp_path / "keys", progress=False)
    (xq,) = circuit.encode(HeadWeights.random_inputs(1, 16, seed=21)[0][:LENGTH])
    simulated = circuit.simulate(xq)
    np.testing.assert_array_equal(circuit.execute(xq), simulated)
    # The client's path needs no weight: poison them all on the client's side, the server's artifact has its own.
    head.weights = dataclasses.replace(
        head.weights, w_qkv=np.full_like(head.weights.w_qkv, np.nan), b_qkv=np.full_like(head.weights.b_qkv, np.nan)
    )
    head.w_parts = head.w_qkv = None
    (xq,) = circuit.encode(HeadWeights.random_inputs(1, 16, seed=21)[0][:LENGTH])
    monkeypatch.setenv("COURSE_MEMORY_LIMIT", "2G")  # the in-process server: no second Python
    with ServerProcess(circuit, tmp_path / "server") as server:
        info = CircuitDescription.load(tmp_path / "server")
        assert info.scope == "projection+attention" and info.inputs == ("x",)
        with RemoteHead(server.url, circuit) as remote:
            out, stats = remote.run(xq)
    np.testing.assert_array_equal(out, simulated)
    assert stats.bytes_sent > 0


@pytest.mark.fhe
def test_approximate_rounding_keeps_q_k_v_within_one():
    """Approximate rounding is the one inexact step: on the projection alone, an accumulator rounds to a
    neighbouring multiple at worst, so simulated q, k, v integers are within one when a rounded unit of
    the accumulator is smaller than a step of q, k, v (projection_bits > n_bits). They do differ
    somewhere, or the test would show nothing."""
    head, inputs = projected_head(n_bits=4, projection_bits=6, exact=False)
    for name, weights in zip(PROJECTED, head.w_parts, strict=True):
        unit = 2 ** head.projection_drop_bits[name] * head.quantizers["input"].params.scale * weights.params.scale
        assert unit < head.quantizers[name].params.scale
    params = head.quantizers["input"].params

    def projection(x):
        q, k, v = head.project(DualArray.from_int(x, params))
        return np.concatenate((q.int, k.int, v.int), axis=1)

    samples = [head.quantize_input(x[:LENGTH]).int for x in inputs if len(x) >= LENGTH]
    circuit = fhe.Compiler(projection, {"x": "encrypted"}).compile(
        samples, configuration(fhe_execution=False, fhe_simulation=True)
    )
    differences = []
    for x in HeadWeights.random_inputs(40, 16, seed=5):
        if len(x) >= LENGTH:
            xq = head.quantize_input(x[:LENGTH]).int
            differences.append(np.abs(circuit.simulate(xq) - projection(xq)))
    differences = np.concatenate(differences)
    assert differences.max() == 1
    circuit_from_x = HeadCircuit(head, inputs, LENGTH, scope=SCOPE)
    assert not circuit_from_x.is_exact


def test_inputs_from_x_are_checked_before_encryption(exact_circuit):
    (xq,) = exact_circuit.encode(HeadWeights.random_inputs(1, 16)[0][:3])
    too_big = xq.copy()
    too_big[0, 0] = exact_circuit.input_params[0]["x"].qmax + 1
    with pytest.raises(InputRangeError, match=r"x integers must lie in \[0, 7\]"):
        exact_circuit.prepare(too_big)
    with pytest.raises(SequenceLengthError, match=r"takes x of shape \(T, 16\)"):
        exact_circuit.prepare(xq[:, :8])
    with pytest.raises(SequenceLengthError, match="takes 1 input"):
        exact_circuit.prepare(xq, xq, xq)


@pytest.mark.fhe
def test_scopes_are_checked():
    head, inputs = projected_head()
    with pytest.raises(ValueError, match="scope must be one of 'attention', 'projection\\+attention'"):
        HeadCircuit(head, inputs, LENGTH, scope="layer")
    with pytest.raises(ValueError, match="generation-step circuit"):
        HeadCircuit(head, inputs, LENGTH, queries=1, scope=SCOPE)
    with pytest.raises(ValueError, match="projection_bits \\(2\\) must be at least n_bits \\(3\\)"):
        FastHead(HeadWeights.random(16, 4), 3, projection_bits=2)


def test_aligned_scales_make_the_rounding_the_requantization():
    head = FastHead(HeadWeights.random(16, 4, seed=3), 3, n_bits_weights=6, weight_scales="aligned")
    inputs = HeadWeights.random_inputs(12, 16)
    head.calibrate(inputs)
    s_x = head.quantizers["input"].params.scale
    for name, weights in zip(PROJECTED, head.w_parts, strict=True):
        q = head.quantizers[name].params
        unit = 2 ** head.projection_drop_bits[name] * s_x * weights.params.scale
        assert unit == pytest.approx(q.scale, rel=1e-12)  # 2**r accumulator units are one step of q
        assert np.abs(weights.int).max() <= 2**5 - 1  # within n_bits_weights
    for x in inputs[:4]:
        steps = dict(head.steps(x))
        for name in PROJECTED:
            accumulator, params = steps[f"{name} accumulator"], head.quantizers[name].params
            rounded = np.floor(accumulator.int / 2 ** head.projection_drop_bits[name] + 0.5).astype(np.int64)
            expected = np.clip(rounded + params.zero_point, params.qmin, params.qmax)
            np.testing.assert_array_equal(steps[name].int, expected)  # one rounding, then the zero point and a clip
    with pytest.raises(ValueError, match="leave projection_bits unset"):
        FastHead(HeadWeights.random(16, 4), 3, weight_scales="aligned", projection_bits=4)


@pytest.mark.fhe
def test_lookups_per_width_counts_every_pbs():
    from course_lib.fhe import lookups_per_width

    head, inputs = projected_head(exact=False, projection_bits=5)
    approximate = HeadCircuit(head, inputs, LENGTH, scope=SCOPE)
    widths = lookups_per_width(approximate.circuit)
    assert sum(widths.values()) == approximate.summary().pbs_count
    assert max(widths) <= approximate.summary().max_bit_width
