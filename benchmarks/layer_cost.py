"""What the encrypted attention layer costs at each setting of ``benchmarks/layer_accuracy.py``: PBS, widths, keys.

    .venv/bin/python benchmarks/layer_cost.py [--settings NAME ...] [--max-tokens 2]

For each setting it swaps layer 0's attention of the bundled model for the quantized layer, calibrates it on the
calibration prompts and compiles its module of steps ``1..max_tokens`` (:class:`course_lib.layer_circuit.
LayerCircuit`), then records, per step, the PBS count and the lookups at each input width (an exact rounding's
own PBS are in the count, not in the widths), the PBS of the last step by tag (projection, cache, scores,
softmax, mix, heads' outputs), the module's complexity (concrete's cost estimate), its widest integer and the
size of its evaluation keys before compression. Compiling is all it does: nothing is encrypted or run.
Results go to ``benchmarks/results/layer_cost.json`` (the rows of settings not run this time are kept): with
``layer_accuracy.json``, the points of accuracy against cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from layer_accuracy import LAYER, further_settings, technique_settings, uniform_settings

from course_lib.data import load_calibration_prompts
from course_lib.fhe import lookups_per_width
from course_lib.layer_circuit import step_name
from course_lib.models import load_model, load_tokenizer
from course_lib.results import write_results
from course_lib.swapped_layer import SwappedLayer

RESULTS = Path(__file__).resolve().parent / "results" / "layer_cost.json"


def settings() -> dict:
    """Every setting whose cost the Pareto figure needs, by name: the uniform ones, the techniques', the further
    ones."""
    return {s.name: s for s in (*uniform_settings(), *technique_settings(), *further_settings())}


def measure(model, tokenizer, prompts, setting, max_tokens: int) -> dict:
    start = time.perf_counter()
    with SwappedLayer(model, LAYER, setting.config, n_bits_c_proj=setting.n_bits_c_proj) as swap:
        swap.calibrate(tokenizer, prompts)
        circuit = swap.compile(max_tokens)
    module = circuit.module
    functions = {t: getattr(module, step_name(t)) for t in circuit.steps}
    return {
        **setting.record(),
        "max_tokens": max_tokens,
        "pbs_per_step": {str(t): n for t, n in circuit.pbs_per_step().items()},
        "lookups_per_width": {
            str(t): {str(w): n for w, n in lookups_per_width(f).items()} for t, f in functions.items()
        },
        "pbs_last_step_by_tag": circuit.pbs_per_tag(max_tokens),
        "complexity": module.complexity,
        "max_bit_width": max(int(f.graph.maximum_integer_bit_width()) for f in functions.values()),
        "evaluation_keys_mb": round((module.size_of_bootstrap_keys + module.size_of_keyswitch_keys) / 1e6, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = list(settings())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=names, default=names, metavar="NAME", help="default: all")
    parser.add_argument("--max-tokens", type=int, default=2, help="the module's longest sequence (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file (default: {RESULTS})")
    args = parser.parse_args(argv)
    if not 1 <= args.max_tokens <= 8:
        parser.error(f"argument --max-tokens: must be from 1 to 8, got {args.max_tokens}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, tokenizer, prompts = load_model(), load_tokenizer(), load_calibration_prompts()
    chosen, rows = settings(), []
    print(f"{'setting':<42} {'PBS per step':>16} {'complexity':>11} {'widest':>6} {'keys MB':>9}")
    for name in args.settings:
        row = measure(model, tokenizer, prompts, chosen[name], args.max_tokens)
        rows.append(row)
        steps = "/".join(str(n) for n in row["pbs_per_step"].values())
        print(
            f"{name:<42} {steps:>16} {row['complexity']:>11.3g} {row['max_bit_width']:>6} "
            f"{row['evaluation_keys_mb']:>9.0f}",
            flush=True,
        )
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    if previous.get("rows") and previous["rows"][0]["max_tokens"] == args.max_tokens:  # keep the settings not re-run
        done = {r["name"] for r in rows}
        rows = [r for r in previous["rows"] if r["name"] not in done] + rows
        rows.sort(key=lambda r: list(chosen).index(r["name"]) if r["name"] in chosen else len(chosen))
    record = {
        "command": "benchmarks/layer_cost.py --max-tokens " + str(args.max_tokens),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "layer": LAYER,
        "rows": rows,
    }
    write_results(record, args.out)


if __name__ == "__main__":
    main()
