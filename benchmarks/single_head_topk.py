"""Top-k agreement of GPT-2 with one attention head quantized, for n_bits 2 to 10, on every evaluation passage.

The full-size version of notebook 02's sweep (the notebook uses the first 100 passages):

    .venv/bin/python benchmarks/single_head_topk.py

For each n_bits, a fresh quantized head is calibrated on the calibration prompts and
swapped into the model; at every position of every held-out passage, the float model's
top-1 next token is looked up among the quantized model's top-k tokens. The same is measured
with the head removed altogether (its output set to 0): the floor any quantized head should
beat. It prints a table and writes benchmarks/results/single_head_topk.json. Options choose the head
(``--layer``, ``--head``), the number of passages (``--limit``), the bits (``--n-bits``),
the rounding of the FHE circuit's product steps (``--lookup-bits``, as in notebook 03; the
clear head then computes exactly the integers of the circuit's simulation), the head's
construction (``--design``: ``published`` or ``fast``, see ``course_lib.fast_attention``) and
the model (``--model``, default ``$COURSE_MODEL`` or the bundled ``course-gpt2``). The agreement
of the course's default circuit (notebooks 03 and 04) on every passage:

    .venv/bin/python benchmarks/single_head_topk.py --n-bits 4 --lookup-bits 6 --design fast \
        --out benchmarks/results/single_head_topk_fhe_default.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from course_lib.data import load_calibration_prompts, load_evaluation_passages
from course_lib.evaluation import Agreement, float_top1, head_removed_agreement, sweep_topk_agreement
from course_lib.models import load_model, load_tokenizer, resolve_model_name
from course_lib.results import write_results

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "single_head_topk.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: which head, how many passages, which bits, where to write."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=0, help="layer of the quantized head (default: %(default)s)")
    parser.add_argument("--head", type=int, default=0, help="head within the layer (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first LIMIT passages (default: all)")
    parser.add_argument(
        "--n-bits", type=int, nargs="+", default=list(range(2, 11)), help="bit widths to sweep (default: 2 to 10)"
    )
    parser.add_argument(
        "--lookup-bits", type=int, default=None, help="round product steps to this many bits (default: exact)"
    )
    parser.add_argument(
        "--design",
        default="published",
        choices=["published", "fast"],
        help="the head's construction (default: %(default)s)",
    )
    parser.add_argument("--model", default=None, help="course-gpt2 or gpt2 (default: $COURSE_MODEL or course-gpt2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output (default: %(default)s)")
    return parser.parse_args(argv)


def format_table(results: list[Agreement], removed: Agreement | None = None) -> str:
    """The results as a fixed-width text table: n_bits, top-1, top-5, top-10 (in %), predictions.

    ``removed`` (the head removed, see :func:`course_lib.evaluation.head_removed_agreement`) comes first
    when given, and the ``recovered`` column then says which share of the head's effect on the top-1
    predictions each bit width keeps: ``(top-1 - top-1 removed) / (1 - top-1 removed)``.
    """
    ks = sorted(results[0].agreement)
    header = f"{'n_bits':>9} " + " ".join(f"{'top-' + str(k):>7}" for k in ks) + f" {'predictions':>12}"
    if removed is not None:
        header += f" {'recovered':>10}"
    lines = [header, "-" * len(header)]
    for r in ([removed] if removed is not None else []) + list(results):
        name = "removed" if r is removed else str(r.n_bits)
        shares = " ".join(f"{100 * r.agreement[k]:>6.2f}%" for k in ks)
        line = f"{name:>9} {shares} {r.n_predictions:>12}"
        if removed is not None:
            line += f" {100 * r.recovered(removed):>9.1f}%"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the sweep, print the table, write the JSON."""
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(0)
    name = resolve_model_name(args.model)
    model, tokenizer = load_model(name), load_tokenizer(name)
    passages = load_evaluation_passages(args.limit)
    calibration = load_calibration_prompts()
    print(
        f"model {name}: layer {args.layer}, head {args.head}; {len(passages)} evaluation passages, "
        f"{len(calibration)} calibration prompts; n_bits {args.n_bits}, lookup_bits {args.lookup_bits}, "
        f"design {args.design}",
        flush=True,
    )
    start = time.perf_counter()
    reference = float_top1(model, tokenizer, passages)
    results = sweep_topk_agreement(
        model,
        tokenizer,
        passages,
        calibration,
        args.n_bits,
        layer=args.layer,
        head=args.head,
        progress=False,
        reference=reference,
        lookup_bits=args.lookup_bits,
        design=args.design,
    )
    removed = head_removed_agreement(model, tokenizer, passages, layer=args.layer, head=args.head, reference=reference)
    seconds = time.perf_counter() - start
    print(format_table(results, removed))
    print(f"took {seconds:.1f} s")

    record = {
        "model": name,
        "layer": args.layer,
        "head": args.head,
        "lookup_bits": args.lookup_bits,
        "design": args.design,
        "passages": len(passages),
        "calibration_prompts": len(calibration),
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "head_removed": {
            "agreement": {f"top{k}": share for k, share in removed.agreement.items()},
            "n_predictions": removed.n_predictions,
        },
        "results": [
            {
                "n_bits": r.n_bits,
                "agreement": {f"top{k}": share for k, share in r.agreement.items()},
                "n_predictions": r.n_predictions,
            }
            for r in results
        ],
    }
    write_results(record, args.out)


if __name__ == "__main__":
    main()
