"""Cross-cutting (benchmarks/, not a module): the benchmarks' scripts on small inputs: a circuit
that does not compile is recorded as such, and keys over the memory limit are not generated."""

import json
import re

import pytest

from course_lib.data import load_calibration_prompts
from course_lib.fhe import HeadCircuit, NoParametersError
from course_lib.gpt2 import SwappedAttention, SwappedHead


@pytest.mark.fhe
def test_a_circuit_without_parameters_says_how_to_narrow_it(bundled, load_script, monkeypatch):
    """Head 1 of the bundled model without rounded products needs lookups too wide for concrete's parameters.

    HeadCircuit raises NoParametersError, which says how to narrow the circuit. The benchmarks catch exactly that
    error, record the circuit as one that does not compile, and go on with the next one (both scripts are handed the
    error the real compilation raised, rather than compiling the same circuit twice more).
    """
    model, tokenizer = bundled
    attention_fhe = load_script("benchmarks/attention_fhe.py")
    cost_model = load_script("benchmarks/attention_cost_model.py")
    with SwappedAttention(model, 0, n_bits=4, lookup_bits=None) as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        arguments = (swap.heads[1], swap.calibration_inputs, 2)
        with pytest.raises(NoParametersError) as raised:
            HeadCircuit(*arguments)

        def no_parameters(*args, **kwargs):
            raise raised.value

        for script in (attention_fhe, cost_model):
            monkeypatch.setattr(script, "HeadCircuit", no_parameters)
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


@pytest.mark.slow
def test_the_layer_accuracy_benchmark_measures_the_notebooks_setting(load_script, tmp_path, capsys):
    layer_accuracy = load_script("benchmarks/layer_accuracy.py")
    out = tmp_path / "layer_accuracy.json"
    out.write_text(json.dumps({"passages": 3, "budget": ["kept"], "rows": ["an older format, dropped"]}))
    layer_accuracy.main(["--parts", "uniform", "--passages", "3", "--out", str(out)])
    record = json.loads(out.read_text())
    assert [r["n_bits"] for r in record["uniform"]] == [4, 6, 8] and record["budget"] == ["kept"]
    assert "rows" not in record and "techniques" not in record
    row = record["uniform"][0]
    assert (row["lookup_bits"], row["exact_projection_rounding"], row["sum_rounding"]) == (6, True, "products")
    assert 0 < row["top1"] <= row["top5"] <= 1 and row["predictions"] > 0 and record["passages"] == 3
    assert row["perplexity"] > 1 and record["float_perplexity"] > 1
    assert "3 held-out passages" in capsys.readouterr().out
    for bad, message in ((["--parts", "all"], "invalid choice"), (["--passages", "0"], "at least 1")):
        with pytest.raises(SystemExit):
            layer_accuracy.parse_args(bad)
        assert message in capsys.readouterr().err


def test_the_error_budget_changes_one_tensor_at_a_time_and_the_techniques_end_at_accurate_layer(load_script):
    from course_lib.config import ACCURATE_LAYER

    layer_accuracy = load_script("benchmarks/layer_accuracy.py")
    reference, *singles = layer_accuracy.budget_settings()
    base = reference.record()
    assert set(base["tensor_bits"].values()) == {12} and base["lookup_bits"] == 14 and base["n_bits_c_proj"] == 12
    for setting in singles:
        record = setting.record()
        changed = {k for k in base if k != "name" and record[k] != base[k]}
        changed |= {f"bits of {t}" for t in base["tensor_bits"] if record["tensor_bits"][t] != base["tensor_bits"][t]}
        changed.discard("tensor_bits")
        assert len(changed) == 1 or changed == {"n_bits_output", "bits of output"}, (setting.name, changed)
    techniques = layer_accuracy.technique_settings()
    assert techniques[0].config == layer_accuracy.FIRST_SETTING
    assert [s.config for s in techniques].index(ACCURATE_LAYER) == 5  # five changes, one row each
    further = layer_accuracy.further_settings()
    for setting, five in zip(further, ({"v"}, {"q", "k", "v"}), strict=True):  # ACCURATE_LAYER, those tensors on 5
        assert {t: setting.config.bits_of(t) for t in five} == dict.fromkeys(five, 5)
        assert setting.config.replace(n_bits=4, tensor_bits=ACCURATE_LAYER.tensor_bits) == ACCURATE_LAYER
    cost = load_script("benchmarks/layer_cost.py")
    assert set(cost.settings()) == {s.name for s in (*layer_accuracy.uniform_settings(), *techniques, *further)}
    with pytest.raises(SystemExit):
        cost.parse_args(["--max-tokens", "0"])
