"""course_lib.reporting: step tables and lookup records (its figures: test_plots)."""

import numpy as np
import pytest

from course_lib.attention import HeadWeights, QuantizedHead
from course_lib.dual_array import DualArray
from course_lib.quantization import Quantizer
from course_lib.reporting import (
    STEP_COLUMNS,
    Lookup,
    lookups_dataframe,
    recording_lookups,
    step_rows,
    steps_dataframe,
)


def small_head(n_embd=16, head_dim=4, n_bits=4, seed=0):
    rng = np.random.default_rng(seed)
    head = QuantizedHead(HeadWeights.random(n_embd, head_dim, seed=seed), n_bits)
    head.calibrate([rng.normal(size=(t, n_embd)) for t in (2, 5, 8)])
    return head, rng.normal(size=(6, n_embd))


# ---------------------------------------------------------------------- step tables


def test_step_rows_summarise_every_step():
    head, x = small_head()
    steps = head.steps(x)
    rows = step_rows(steps)
    assert [r.name for r in rows] == [name for name, _ in steps]
    assert rows[0].name == "input" and rows[-1].name == "output"
    for row, (_, value) in zip(rows, steps, strict=True):
        assert row.shape == value.shape
        assert (row.int_min, row.int_max) == value.int_range()
        assert row.bits == value.bit_width()
        assert row.max_error == pytest.approx(value.error())
        assert row.max_abs_float == pytest.approx(np.abs(value.float).max())
        assert row.relative_error == pytest.approx(value.error() / np.abs(value.float).max())
        assert value.dequantize() == pytest.approx(row.scale * (value.int - row.zero_point))
    by_name = {r.name: r for r in rows}
    assert by_name["probs"].shape == (6, 6) and by_name["q"].shape == (6, 4)
    # a requantized step holds at most its quantizer's integers; accumulators hold more
    assert by_name["q"].bits <= 4 < by_name["qkv accumulator"].bits


def test_steps_dataframe_columns_and_values():
    head, x = small_head()
    steps = head.steps(x)
    frame = steps_dataframe(steps)
    assert list(frame.columns) == list(STEP_COLUMNS)
    assert len(frame) == len(steps)
    first = frame.iloc[0]
    low, high = steps[0][1].int_range()
    assert first["step"] == "input" and first["shape"] == "6x16" and first["integers"] == f"{low}..{high}"
    assert frame["bits"].tolist() == [v.bit_width() for _, v in steps]
    assert frame["max error"].tolist() == pytest.approx([v.error() for _, v in steps], rel=1e-3)


def test_relative_error_of_an_all_zero_step_is_zero():
    quantizer = Quantizer(4, name="z")
    quantizer.calibrate([-1.0, 1.0])
    (row,) = step_rows([("zeros", DualArray.quantize(np.zeros(3), quantizer))])
    assert row.max_abs_float == 0 and row.relative_error == 0


def test_step_rows_refuse_steps_without_both_sides():
    quantizer = Quantizer(4, name="x")
    with pytest.raises(ValueError, match="calibration mode"):
        step_rows([("x", DualArray.calibration(np.ones(3), quantizer))])
    with pytest.raises(ValueError, match="at least one"):
        step_rows([])


# ---------------------------------------------------------------------- lookups


@pytest.mark.parametrize("tokens", [1, 3, 6])
def test_recording_lookups_counts_every_table_lookup(tokens):
    head, x = small_head()
    t, d = tokens, head.weights.head_dim
    with recording_lookups() as lookups:
        head.run(x[:tokens])
    assert [lookup.quantizer for lookup in lookups] == [
        "q",
        "k",
        "v",
        "scores",
        "exp",
        "inverse_sum",
        "probs",
        "output",
    ]
    assert [lookup.shape for lookup in lookups] == [(t, d)] * 3 + [(t, t)] * 2 + [(t, 1), (t, t), (t, d)]
    assert sum(lookup.elements for lookup in lookups) == 4 * t * d + 3 * t * t + t
    assert all(lookup.output_bits == 4 for lookup in lookups)


def test_lookup_input_bits_are_those_of_the_looked_up_integers():
    head, x = small_head()
    with recording_lookups() as lookups:
        steps = head.steps(x)
    accumulator = dict(steps)["qkv accumulator"]
    q = next(lookup for lookup in lookups if lookup.quantizer == "q")
    d = head.weights.head_dim
    assert q.input_bits == DualArray(None, accumulator.int[:, :d], scale=accumulator.scale).bit_width()
    assert q.input_bits > 4  # the accumulator is wider than the head's 4 bits: an expensive table


def test_recording_lookups_restores_apply_and_skips_calibration():
    original = DualArray.apply
    head, x = small_head()
    with pytest.raises(RuntimeError, match="boom"):
        with recording_lookups():
            raise RuntimeError("boom")
    assert DualArray.apply is original
    fresh = QuantizedHead(head.weights, 4)
    with recording_lookups() as lookups:
        fresh(DualArray.calibration(x, fresh.quantizers["input"]))  # floats only: no lookup is made
    assert lookups == [] and DualArray.apply is original


def test_lookups_dataframe():
    frame = lookups_dataframe([Lookup("q", (3, 4), 12, 9, 4), Lookup("exp", (3, 3), 9, 5, 4)])
    assert frame["elements"].tolist() == [12, 9]
    assert frame["table entries"].tolist() == [512, 32]
    assert frame["shape"].tolist() == ["3x4", "3x3"]
