"""PBS count of the encrypted attention against sequence length, from compiled circuits (notebook 04).

    .venv/bin/python benchmarks/attention_cost_model.py

For sequence lengths from 1 to 16 tokens (1, 2, 3, 4, 6, 8, 12 and 16) it compiles, at 4 bits:

- the bundled model's layer 0: head 0 alone, and all of its heads in one circuit;
- a GPT-2-shaped layer (``GPT2Config()``: 12 heads, head dimension 64, model width 768) with
  random weights and random inputs, built locally (no download): one head, and all 12 heads
  (up to ``--gpt2-full-layer-max-length`` tokens: those circuits are large to compile).

for each design asked for (default: the course's fast design and the published one; the
published design's full attention is not compiled, its count is ``n_head`` times its head's). It
records each circuit's PBS count, widest integer and compiler complexity. Nothing runs
encrypted: the counts are the compiler's own. The published construction reported 11,622 PBS
for one GPT-2 head at 6 tokens. The results go to
benchmarks/results/attention_cost_model.json, which notebook 04 plots.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from course_lib.config import COURSE, PUBLISHED, HeadConfig
from course_lib.data import load_calibration_prompts
from course_lib.fhe import HeadCircuit, NoParametersError, configuration
from course_lib.gpt2 import SwappedAttention
from course_lib.models import gpt2_shaped_inputs, gpt2_shaped_model, load_model, load_tokenizer
from course_lib.published import PUBLISHED_GPT2_PBS_AT_6
from course_lib.results import write_results

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "attention_cost_model.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16], help="sequence lengths")
    parser.add_argument("--designs", nargs="+", default=["fast", "published"], choices=["fast", "published"])
    parser.add_argument("--gpt2-full-layer-max-length", type=int, default=8, help="longest 12-head compilation")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output (default: %(default)s)")
    return parser.parse_args(argv)


def design_config(design: str) -> HeadConfig:
    """The course's setting with the ``design`` asked for; the published design with exact products."""
    return COURSE.replace(design=design) if design != "published" else PUBLISHED


def swapped_heads(model, tokenizer_or_inputs, design: str) -> SwappedAttention:
    """Every head of layer 0 of ``model``, quantized and calibrated (on prompts, or on given attention inputs)."""
    swap = SwappedAttention(model, 0, design_config(design))
    if isinstance(tokenizer_or_inputs, list):
        swap.calibration_inputs = tokenizer_or_inputs
        for head in swap.heads:
            head.calibrate(tokenizer_or_inputs)
    else:
        swap.calibrate(tokenizer_or_inputs, load_calibration_prompts())
    return swap


def count(heads, inputs, length: int) -> dict:
    """Compile ``heads`` for ``length`` tokens and keep what the compiler reports."""
    try:
        circuit = HeadCircuit(heads, inputs, length, configuration())
    except NoParametersError as error:
        return {"length": length, "error": f"does not compile: {error}"}
    summary = circuit.summary()
    return {
        "length": length,
        "pbs": summary.pbs_count,
        "max_bit_width": summary.max_bit_width,
        "complexity": summary.complexity,
        "compile_seconds": round(summary.compile_seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    bundled = load_model()
    tokenizer = load_tokenizer()
    gpt2 = gpt2_shaped_model()
    gpt2_inputs = gpt2_shaped_inputs(max(args.lengths))
    series = []
    for design in args.designs:
        for model_name, model, calibration in (("course-gpt2", bundled, tokenizer), ("gpt2-shaped", gpt2, gpt2_inputs)):
            swap = swapped_heads(model, calibration, design)
            inputs = swap.calibration_inputs
            scopes = [("one head", swap.heads[:1])]
            if design == "fast":  # the published design's full attention is n_head times its head: not compiled
                scopes.append(("full attention", swap.heads))
            for scope, heads in scopes:
                rows = []
                for length in args.lengths:
                    full_gpt2 = model_name == "gpt2-shaped" and scope == "full attention"
                    if full_gpt2 and length > args.gpt2_full_layer_max_length:
                        continue
                    row = count(heads, inputs, length)
                    rows.append(row)
                    cost = row.get("error") or f"{row['pbs']:>8,} PBS, width {row['max_bit_width']}"
                    print(f"{design:<9} {model_name:<12} {scope:<15} length {length:>2}: {cost}", flush=True)
                series.append(
                    {
                        "design": design,
                        "model": model_name,
                        "scope": scope,
                        "heads": len(heads),
                        "head_dim": heads[0].weights.head_dim,
                        "rows": rows,
                    }
                )
            swap.remove()
    seconds = time.perf_counter() - start
    print(f"took {seconds:.0f} s")
    record = {
        "n_bits": COURSE.n_bits,
        "fast_lookup_bits": COURSE.lookup_bits,
        "published_gpt2_pbs_at_6": PUBLISHED_GPT2_PBS_AT_6,
        "seconds": round(seconds),
        "series": series,
    }
    write_results(record, args.out)


if __name__ == "__main__":
    main()
