"""course_lib.exercises.nb04, notebook 04's exercises: the reference solutions are right (against the compiler and
generate), slips get hints."""

import numpy as np
import pytest
from circuits import never_run
from conftest import assert_worked_solutions

from course_lib.attention import HeadWeights
from course_lib.exercises.nb03 import solution_fast_pbs_count
from course_lib.exercises.nb04 import (
    EX3_CORES,
    EX3_HEAD_DIM,
    EX3_HEADS,
    EX3_TOKENS,
    feedback_full_attention_pbs,
    feedback_step_pbs,
    feedback_step_seconds,
    solution_cluster_seconds,
    solution_full_attention_pbs,
    solution_step_pbs,
    solution_step_seconds,
)
from course_lib.fast_attention import FastHead
from course_lib.fhe import DEFAULT_PROJECTION, HeadCircuit
from course_lib.layer import ProjectionWeights, QuantizedLayer
from course_lib.layer_circuit import LayerCircuit


def calibrated_heads(n_heads: int, n_inputs: int, tokens: tuple[int, int]):
    """``n_heads`` fast heads (width 8, head dim 4) calibrated on random inputs of ``tokens`` (low, high) rows."""
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(*tokens)), 8)) for _ in range(n_inputs)]
    heads = [FastHead(HeadWeights.random(8, 4, seed=h), 4, lookup_bits=6) for h in range(n_heads)]
    for head in heads:
        head.calibrate(inputs)
    return heads, inputs


@pytest.mark.fhe
def test_full_attention_formula_is_the_compilers_count():
    heads, inputs = calibrated_heads(3, 8, (1, 7))
    count = HeadCircuit(heads, inputs, 3, never_run()).summary().pbs_count
    assert solution_full_attention_pbs(3, 3, 4) == count
    assert feedback_full_attention_pbs(solution_full_attention_pbs, {(3, 3, 4): count}).correct


def test_full_attention_feedback_for_usual_slips():
    assert feedback_full_attention_pbs(None).status == "not attempted"
    assert "one head" in feedback_full_attention_pbs(lambda t, h, d: solution_fast_pbs_count(t, d)).message
    assert "do not mix" in feedback_full_attention_pbs(lambda t, h, d: solution_fast_pbs_count(t, h * d)).message
    assert "raised" in feedback_full_attention_pbs(lambda t, h, d: 1 / 0).message
    assert "whole number" in feedback_full_attention_pbs(lambda t, h, d: 0.5).message
    assert "function" in feedback_full_attention_pbs(3).message


@pytest.mark.fhe
def test_step_formula_is_the_compilers_count():
    """Against the steps of a small layer's module (2 heads of dimension 4, 4 bits, the notebook's approximate
    rounding), from 2 tokens on; its PBS by tag add up to each step's. The counts come from the compiled program
    (concrete's execution server), so the module is compiled for that only, not for simulation too."""
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(2, 6)), 8)) for _ in range(16)]
    heads = [FastHead(HeadWeights.random(8, 4, seed=h), 4, lookup_bits=6, **DEFAULT_PROJECTION) for h in range(2)]
    layer = QuantizedLayer(heads, ProjectionWeights(rng.normal(scale=0.3, size=(8, 8)), np.zeros(8)))
    layer.calibrate(inputs)
    circuit = LayerCircuit(layer, inputs, max_tokens=3)
    assert not circuit.is_exact
    pbs = circuit.pbs_per_step()
    assert all(sum(circuit.pbs_per_tag(T).values()) == pbs[T] for T in circuit.steps)
    compiled = {(T, 2, 4): pbs[T] for T in circuit.steps if T >= 2}
    assert all(solution_step_pbs(*case) == count for case, count in compiled.items())
    assert feedback_step_pbs(solution_step_pbs, compiled).correct
    with pytest.raises(ValueError, match="steps 1 to 3, got 4"):
        circuit.pbs_per_tag(4)


def test_step_feedback_for_usual_slips():
    def step(extra):
        return lambda t, h, d: solution_step_pbs(t, h, d) + extra(t, h, d)

    assert feedback_step_pbs(None).status == "not attempted"
    assert "full attention" in feedback_step_pbs(solution_full_attention_pbs).message
    assert "one head" in feedback_step_pbs(lambda t, h, d: solution_step_pbs(t, 1, d)).message
    assert "in the cache already" in feedback_step_pbs(step(lambda t, h, d: 2 * (t - 1) * d * h)).message
    assert "attention alone" in feedback_step_pbs(step(lambda t, h, d: -4 * d * h)).message
    assert "both sides" in feedback_step_pbs(step(lambda t, h, d: -3 * d * h)).message
    assert "both sides" in feedback_step_pbs(step(lambda t, h, d: -d * h)).message
    assert "probabilities" in feedback_step_pbs(step(lambda t, h, d: -t * h)).message
    assert "compiler counts" in feedback_step_pbs(step(lambda t, h, d: 1)).message
    assert "raised" in feedback_step_pbs(lambda t, h, d: 1 / 0).message
    assert "function" in feedback_step_pbs(3).message
    with pytest.raises(RuntimeError, match="disagrees"):
        feedback_step_pbs(solution_step_pbs, {(2, 1, 4): 1})


def test_cluster_seconds_shares_the_pbs_among_the_cores():
    assert solution_cluster_seconds(10_000, 0.01, 200) == pytest.approx(1.0)
    assert solution_cluster_seconds(10_000, 0.01, 2) == pytest.approx(100.0)


def test_step_seconds_is_exercise_2s_step_at_gpt2s_shape():
    assert (EX3_TOKENS, EX3_HEADS, EX3_HEAD_DIM, EX3_CORES) == (8, 12, 64, 196)
    assert solution_step_pbs(8, 12, 64) == 18_048  # the count the worked solution spells out
    assert solution_step_seconds(0.03) == pytest.approx(18_048 * 0.03 * 2 / 196)
    # not section 6's figure: a step is about a quarter of the full pass of the token mixing
    assert solution_full_attention_pbs(8, 12, 64) > 4 * solution_step_pbs(8, 12, 64)


@pytest.mark.parametrize(
    "answer_of, hint",
    [
        (lambda e: e * EX3_CORES / 2, "2 cores"),
        (lambda e: e / 2, "twice"),
        (lambda e: e / EX3_HEADS, "one head"),
        (lambda e: solution_cluster_seconds(solution_full_attention_pbs(8, 12, 64), 0.03, EX3_CORES), "full pass"),
        (lambda e: solution_cluster_seconds(solution_step_pbs(7, 12, 64), 0.03, EX3_CORES), "that is step 7"),
        (lambda e: solution_cluster_seconds(solution_step_pbs(9, 12, 64), 0.03, EX3_CORES), "that is step 9"),
        (lambda e: 3 * e, "is not it"),
    ],
)
def test_step_seconds_hints(answer_of, hint):
    feedback = feedback_step_seconds(answer_of(solution_step_seconds(0.03)), 0.03)
    assert feedback.status == "wrong" and hint in feedback.message


def test_step_seconds_accepts_within_one_percent_and_refuses_non_numbers():
    expected = solution_step_seconds(0.03)
    assert feedback_step_seconds(expected * 1.009, 0.03).correct
    assert feedback_step_seconds(np.float32(expected), 0.03).correct
    assert feedback_step_seconds(None, 0.03).status == "not attempted"
    for answer in ("5", True):
        assert "number" in feedback_step_seconds(answer, 0.03).message


def test_each_worked_solution_shows_its_reasoning_code_and_passing_check(capsys):
    from course_lib.exercises import nb04 as ex

    counts = {(4, 4, 32): solution_full_attention_pbs(4, 4, 32)}
    assert_worked_solutions(ex, {1: (counts,), 2: (), 3: (0.03,)}, capsys)
