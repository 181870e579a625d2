"""How faithful the encrypted attention layer is: the model with layer 0's attention on integers, against floats.

    .venv/bin/python benchmarks/layer_accuracy.py [--n-bits 4 6 8] [--passages N]

The layer is the one notebook 04 runs on the server (:class:`course_lib.swapped_layer.SwappedLayer`: ``c_attn``,
every fast head and ``c_proj``, every accumulator rounded exactly, lookups reading ``n_bits + 2`` bits), calibrated
on the calibration prompts and run in ``"quantized"`` mode: the clear integers, which the circuit's simulation and
its encrypted execution reproduce exactly (the tests check both). For each n_bits it reports, on the held-out
passages (all 571 by default), the top-1 and top-5 agreement with the float model (the share of positions where the
float model's next token is the quantized model's first choice, or among its first five) and the held-out
perplexity, next to the float model's. These are the figures the layer-accuracy work sets targets on: top-1 of at
least 90 %, top-5 of at least 99 %, perplexity at most 10 % above the float model's. Results go to
``benchmarks/results/layer_accuracy.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from course_lib.config import FROM_X
from course_lib.data import load_calibration_prompts, load_evaluation_passages
from course_lib.evaluation import float_top1, perplexity, topk_agreement, topk_predictions
from course_lib.models import load_model, load_tokenizer
from course_lib.results import write_results
from course_lib.swapped_layer import SwappedLayer

RESULTS = Path(__file__).resolve().parent / "results" / "layer_accuracy.json"
LAYER = 0
#: The setting of notebook 04's encrypted layer, at the default n_bits: every accumulator rounded exactly.
NOTEBOOK_SETTING = FROM_X.replace(exact_projection_rounding=True)


def measure(model, tokenizer, prompts, passages, reference, n_bits: int) -> dict:
    """Top-1 and top-5 agreement with the float model, and perplexity, of the model with layer ``LAYER``'s attention
    quantized at ``n_bits`` (the notebook's setting otherwise)."""
    config = NOTEBOOK_SETTING.at_bits(n_bits)
    start = time.perf_counter()
    with SwappedLayer(model, LAYER, config) as swap:
        swap.calibrate(tokenizer, prompts)
        swap.mode = "quantized"
        agreement, predictions = topk_agreement(reference, topk_predictions(model, tokenizer, passages, 5), (1, 5))
        quantized_perplexity = perplexity(model, tokenizer, passages)
    return {
        "n_bits": n_bits,
        "lookup_bits": config.lookup_bits,
        "n_bits_weights": config.weight_bits,
        "exact_projection_rounding": config.exact_projection_rounding,
        "top1": agreement[1],
        "top5": agreement[5],
        "perplexity": quantized_perplexity,
        "predictions": predictions,
        "seconds": round(time.perf_counter() - start, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-bits", type=int, nargs="+", default=[4, 6, 8], help="activation bits (default: 4 6 8)")
    parser.add_argument("--passages", type=int, default=None, help="the first N held-out passages (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file (default: {RESULTS})")
    args = parser.parse_args(argv)
    for n in args.n_bits:
        if not 2 <= n <= 12:
            parser.error(f"argument --n-bits: each value must be from 2 to 12, got {n}")
    if args.passages is not None and args.passages < 1:
        parser.error(f"argument --passages: must be at least 1, got {args.passages}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, tokenizer = load_model(), load_tokenizer()
    passages, prompts = load_evaluation_passages(args.passages), load_calibration_prompts()
    float_perplexity = perplexity(model, tokenizer, passages)
    reference = float_top1(model, tokenizer, passages)
    rows = [measure(model, tokenizer, prompts, passages, reference, n) for n in args.n_bits]

    print(
        f"layer {LAYER} of the bundled model, {len(passages)} held-out passages; float model perplexity "
        f"{float_perplexity:.2f}"
    )
    print(f"{'n_bits':>6} {'lookup':>6} {'top-1':>8} {'top-5':>8} {'perplexity':>10} {'vs float':>9} {'seconds':>8}")
    for r in rows:
        print(
            f"{r['n_bits']:>6} {r['lookup_bits']:>6} {100 * r['top1']:>7.2f}% {100 * r['top5']:>7.2f}% "
            f"{r['perplexity']:>10.2f} {100 * (r['perplexity'] / float_perplexity - 1):>+8.1f}% {r['seconds']:>8}"
        )
    record = {
        "command": "benchmarks/layer_accuracy.py --n-bits " + " ".join(map(str, args.n_bits)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "layer": LAYER,
        "passages": len(passages),
        "float_perplexity": float_perplexity,
        "rows": rows,
    }
    write_results(record, args.out)


if __name__ == "__main__":
    main()
