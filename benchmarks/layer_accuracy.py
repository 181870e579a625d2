"""How faithful the encrypted attention layer is, where its error comes from, and what wins it back.

    .venv/bin/python benchmarks/layer_accuracy.py [--parts uniform budget techniques] [--passages N]

Every row swaps layer 0's attention of the bundled model (``c_attn``, every fast head, ``c_proj``:
:class:`course_lib.swapped_layer.SwappedLayer`) for its quantized layer, calibrated on the calibration prompts
and run in ``"quantized"`` mode: the clear integers, which the circuit's simulation and its encrypted execution
reproduce exactly (the tests check both). On the held-out passages (all 571 by default) it reports the top-1
and top-5 agreement with the float model (the share of positions where the float model's next token is the
quantized model's first choice, or among its first five) and the held-out perplexity, next to the float model's.
The layer-accuracy targets are top-1 of at least 90 %, top-5 of at least 99 %, perplexity at most 10 % above.

Four parts, each a list of rows:

- ``uniform``: notebook 04's layer as it was first built (every accumulator rounded exactly, lookups at
  ``n_bits + 2``) at 4, 6 and 8 bits;
- ``budget``: the error budget. A reference layer whose every tensor is on 12 bits (sums of products rounded to
  14), then one tensor at a time at notebook 04's 4-bit setting, the others kept at the reference's: what
  each tensor alone costs;
- ``techniques``: from notebook 04's 4-bit layer, the changes of :data:`course_lib.config.ACCURATE_LAYER` added
  one after the other, each row measured against the row before; then, for scale, ACCURATE_LAYER with 7-bit
  lookups and a uniform 5-bit layer with the first two changes;
- ``further``: ACCURATE_LAYER with more bits where the budget points next (the values ``v``, then ``q``, ``k`` and
  ``v``), each row measured against ACCURATE_LAYER.

Results go to ``benchmarks/results/layer_accuracy.json``; the parts not run are kept from the file when it holds
the same number of passages. The cost of each setting in PBS, complexity and
time is measured by ``benchmarks/layer_cost.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.config import ACCURATE_LAYER, FROM_X, HeadConfig
from course_lib.data import load_calibration_prompts, load_evaluation_passages
from course_lib.evaluation import float_top1, perplexity, topk_agreement, topk_predictions
from course_lib.models import load_model, load_tokenizer
from course_lib.results import write_results
from course_lib.swapped_layer import SwappedLayer

RESULTS = Path(__file__).resolve().parent / "results" / "layer_accuracy.json"
LAYER = 0
#: Notebook 04's encrypted layer as it was first built: every accumulator rounded exactly, each product rounded.
FIRST_SETTING = FROM_X.replace(exact_projection_rounding=True)
#: The bits of every tensor of the budget's reference layer (its sums of products are rounded to 2 bits more).
REFERENCE_BITS = 12
PARTS = ("uniform", "budget", "techniques", "further")


@dataclass(frozen=True)
class Setting:
    """One quantized layer to measure: the heads' config and ``c_proj``'s weight bits (None: ``c_attn``'s)."""

    name: str
    config: HeadConfig
    n_bits_c_proj: int | None = None
    notes: dict = field(default_factory=dict)

    def record(self) -> dict:
        c = self.config
        return {
            "name": self.name,
            "n_bits": c.n_bits,
            "lookup_bits": c.lookup_bits,
            "n_bits_weights": c.weight_bits,
            "n_bits_c_proj": self.n_bits_c_proj or c.weight_bits,
            "n_bits_output": c.bits_of("output"),
            "tensor_bits": dict(c.tensor_bits),
            "sum_rounding": c.sum_rounding,
            "probs_digits": c.probs_digits,
            "input_clip_percentile": c.input_clip_percentile,
            "exact_projection_rounding": c.exact_projection_rounding,
            **self.notes,
        }


def uniform_settings() -> list[Setting]:
    return [Setting(f"{n} bits", FIRST_SETTING.at_bits(n)) for n in (4, 6, 8)]


def budget_settings() -> list[Setting]:
    """The reference (every tensor on :data:`REFERENCE_BITS`), then each tensor alone at notebook 04's 4-bit
    setting (activations 4 bits, sums of products rounded to 6, weights on 6)."""
    first, high = FIRST_SETTING, REFERENCE_BITS
    tensors = {
        "input": "x",
        "q": "q",
        "k": "k",
        "v": "v",
        "exp": "exp (softmax sums)",
        "probs": "probabilities",
        "output": "heads' output",
    }
    reference_bits = dict.fromkeys(tensors, high)
    reference = first.replace(lookup_bits=high + 2, n_bits_weights=high, tensor_bits=reference_bits)
    settings = [Setting("reference (all 12 bits)", reference, n_bits_c_proj=high)]
    for name, label in tensors.items():
        config = reference.replace(tensor_bits={**reference_bits, name: first.n_bits})
        settings.append(Setting(label, config, n_bits_c_proj=high))
    settings += [
        Setting("sums of products (lookups 6)", reference.replace(lookup_bits=first.lookup_bits), high),
        Setting("c_attn weights", reference.replace(n_bits_weights=first.weight_bits), high),
        Setting("c_proj weights", reference, n_bits_c_proj=first.weight_bits),
    ]
    return settings


def technique_settings() -> list[Setting]:
    """Notebook 04's first layer, then :data:`ACCURATE_LAYER`'s changes one at a time, in this order; then two
    settings for scale: ACCURATE_LAYER with 7-bit lookups, and a uniform 5-bit layer."""
    a = ACCURATE_LAYER
    bits = dict(a.tensor_bits)
    steps = [("first layer (4 bits, lookups 6)", FIRST_SETTING)]
    steps.append(("+ sums rounded once", steps[-1][1].replace(sum_rounding=a.sum_rounding)))
    steps.append(("+ x clipped", steps[-1][1].replace(input_clip_percentile=a.input_clip_percentile)))
    steps.append(
        (
            "+ 8-bit probabilities in two digits",
            steps[-1][1].replace(tensor_bits={"probs": bits["probs"]}, probs_digits=a.probs_digits),
        )
    )
    steps.append(
        (
            "+ heads' output on 6 bits",
            steps[-1][1].replace(tensor_bits={"probs": bits["probs"], "output": bits["output"]}),
        )
    )
    steps.append(("+ x on 5, exp on 6 bits (ACCURATE_LAYER)", steps[-1][1].replace(tensor_bits=a.tensor_bits)))
    if steps[-1][1] != a:
        raise AssertionError("the techniques' last row must be ACCURATE_LAYER: update technique_settings")
    uniform5 = FIRST_SETTING.at_bits(5).replace(
        sum_rounding=a.sum_rounding, input_clip_percentile=a.input_clip_percentile
    )
    steps += [
        ("ACCURATE_LAYER, lookups on 7 bits", a.replace(lookup_bits=7)),
        ("uniform 5 bits, sums once, x clipped", uniform5),
    ]
    return [Setting(name, config) for name, config in steps]


def further_settings() -> list[Setting]:
    """:data:`ACCURATE_LAYER` with the values ``v`` on 5 bits (the largest loss of the budget it leaves at 4 bits),
    then with ``q``, ``k`` and ``v`` on 5 bits."""
    a, bits = ACCURATE_LAYER, dict(ACCURATE_LAYER.tensor_bits)
    return [
        Setting("ACCURATE_LAYER, v on 5 bits", a.replace(tensor_bits={**bits, "v": 5})),
        Setting("ACCURATE_LAYER, q, k, v on 5 bits", a.replace(n_bits=5)),
    ]


SETTINGS = {
    "uniform": uniform_settings,
    "budget": budget_settings,
    "techniques": technique_settings,
    "further": further_settings,
}


def measure(model, tokenizer, prompts, passages, reference, setting: Setting) -> dict:
    """Top-1 and top-5 agreement with the float model, and perplexity, of the model with layer ``LAYER``'s attention
    quantized as ``setting`` says."""
    start = time.perf_counter()
    with SwappedLayer(model, LAYER, setting.config, n_bits_c_proj=setting.n_bits_c_proj) as swap:
        swap.calibrate(tokenizer, prompts)
        swap.mode = "quantized"
        agreement, predictions = topk_agreement(reference, topk_predictions(model, tokenizer, passages, 5), (1, 5))
        quantized_perplexity = perplexity(model, tokenizer, passages)
    return {
        **setting.record(),
        "top1": agreement[1],
        "top5": agreement[5],
        "perplexity": quantized_perplexity,
        "predictions": predictions,
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_rows(rows: list[dict], float_perplexity: float) -> str:
    lines = [f"{'setting':<42} {'top-1':>8} {'top-5':>8} {'perplexity':>10} {'vs float':>9} {'seconds':>8}"]
    for r in rows:
        lines.append(
            f"{r['name']:<42} {100 * r['top1']:>7.2f}% {100 * r['top5']:>7.2f}% {r['perplexity']:>10.2f} "
            f"{100 * (r['perplexity'] / float_perplexity - 1):>+8.1f}% {r['seconds']:>8}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which rows (default: all)")
    parser.add_argument("--passages", type=int, default=None, help="the first N held-out passages (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file (default: {RESULTS})")
    args = parser.parse_args(argv)
    if args.passages is not None and args.passages < 1:
        parser.error(f"argument --passages: must be at least 1, got {args.passages}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, tokenizer = load_model(), load_tokenizer()
    passages, prompts = load_evaluation_passages(args.passages), load_calibration_prompts()
    float_perplexity = perplexity(model, tokenizer, passages)
    reference = float_top1(model, tokenizer, passages)
    print(
        f"layer {LAYER} of the bundled model, {len(passages)} held-out passages; float model perplexity "
        f"{float_perplexity:.2f}",
        flush=True,
    )
    parts = {}
    for part in args.parts:
        rows = []
        for setting in SETTINGS[part]():
            rows.append(measure(model, tokenizer, prompts, passages, reference, setting))
            print(f"[{part}] " + format_rows(rows[-1:], float_perplexity).splitlines()[1], flush=True)
        parts[part] = rows
        print(f"\n{part}\n{format_rows(rows, float_perplexity)}\n", flush=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    if previous.get("passages") == len(passages):  # parts not run this time are kept from the last run
        parts = {**{p: previous[p] for p in PARTS if p in previous and p not in parts}, **parts}
    record = {
        "command": "benchmarks/layer_accuracy.py --parts " + " ".join(p for p in PARTS if p in parts),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "layer": LAYER,
        "passages": len(passages),
        "float_perplexity": float_perplexity,
        **parts,
    }
    write_results(record, args.out)


if __name__ == "__main__":
    main()
