"""Every head of one attention layer on Dask workers: wall time against the number of local workers.

    .venv/bin/python benchmarks/distributed_heads.py [--length 2] [--workers 1 2 4] [--runs 2]

For the bundled model's layer 0 at the course's default setting (4-bit activations, fast design)
it compiles one circuit per head at ``--length`` tokens, generates or loads their keys, then for
each worker count starts a local Dask cluster (:class:`course_lib.distributed.DistributedHeads`)
and runs every head on the same encrypted prompt ``--runs`` times. The first run of a cluster
includes sending the heads' payloads to the workers (their submission returns at once), each
worker's deserialization of them and the decompression of their evaluation keys; the later runs
are the steady state of a generation, one run per token. Every run is checked equal, bit for bit,
to the heads' clear computation.

The baseline is the same circuits executed one after the other in this process. The results
go to benchmarks/results/distributed_heads.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from course_lib.config import COURSE
from course_lib.data import load_calibration_prompts, load_evaluation_passages
from course_lib.distributed import DistributedHeads
from course_lib.fhe import HeadCircuit
from course_lib.gpt2 import SwappedAttention
from course_lib.keys import ensure_keys, keys_loaded, unload_keys
from course_lib.models import load_model, load_tokenizer
from course_lib.results import write_results

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "distributed_heads.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2, help="sequence length of the heads' circuits")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="local worker counts")
    parser.add_argument("--runs", type=int, default=2, help="runs per cluster (the first one loads the payloads)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, tokenizer = load_model(), load_tokenizer()
    swap = SwappedAttention(model, 0, COURSE)
    swap.calibrate(tokenizer, load_calibration_prompts())
    start = time.perf_counter()
    circuits = [HeadCircuit(head, swap.calibration_inputs, args.length) for head in swap.heads]
    compile_seconds = time.perf_counter() - start
    reports = []
    for circuit in circuits:
        reports.append(ensure_keys(circuit.circuit, progress=False))
        unload_keys(circuit.circuit)
    pbs = sum(c.circuit.programmable_bootstrap_count for c in circuits)
    print(f"{len(circuits)} heads at length {args.length}: {pbs:,} PBS in all, compiled in {compile_seconds:.1f} s")
    for report in reports:
        print(f"  {report}")

    ids = tokenizer(load_evaluation_passages(1)[0], return_tensors="pt")["input_ids"][:, : args.length]
    x = swap.attention_input(ids)
    per_head = [c.encode(x, pad=False) for c in circuits]
    expected = np.concatenate([c.clear(*qkv) for c, qkv in zip(circuits, per_head, strict=True)], axis=1)

    start = time.perf_counter()
    for circuit, qkv in zip(circuits, per_head, strict=True):
        with keys_loaded(circuit.circuit):
            circuit.execute(*qkv)
    sequential_seconds = time.perf_counter() - start
    print(f"one process, heads one after the other: {sequential_seconds:.1f} s (keys loaded per head)")

    rows = []
    for workers in args.workers:
        start = time.perf_counter()
        with DistributedHeads(circuits, workers=workers) as distributed:
            start_seconds = time.perf_counter() - start
            qkv = distributed.encode(x)
            walls = []
            for _ in range(args.runs):
                out, run = distributed.run(*qkv, progress=False)
                np.testing.assert_array_equal(out, expected)
                walls.append(run.wall_seconds)
            payload_mb = sum(distributed.payload_bytes) / 1e6
        row = {
            "workers": workers,
            "start_seconds": start_seconds,
            "first_run_seconds": walls[0],
            "steady_run_seconds": statistics.median(walls[1:]) if len(walls) > 1 else None,
            "payload_mb_all_heads": payload_mb,
        }
        rows.append(row)
        steady = "-" if row["steady_run_seconds"] is None else f"{row['steady_run_seconds']:.1f} s"
        print(
            f"{workers} worker(s): cluster started in {start_seconds:.1f} s, first run (payloads sent and loaded) "
            f"{walls[0]:.1f} s, "
            f"steady run {steady}",
            flush=True,
        )

    print()
    print(f"{len(circuits)} heads, {pbs:,} PBS, {os.cpu_count()} cores")
    print("| workers | first run (s) | steady run (s) | speed-up vs 1 worker (steady) |")
    print("|---:|---:|---:|---:|")
    base = rows[0]["steady_run_seconds"] or rows[0]["first_run_seconds"]
    for row in rows:
        steady = row["steady_run_seconds"] or row["first_run_seconds"]
        print(f"| {row['workers']} | {row['first_run_seconds']:.1f} | {steady:.1f} | {base / steady:.2f} |")
    result = {
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "length": args.length,
        "heads": len(circuits),
        "runs_per_cluster": args.runs,
        "pbs": pbs,
        "compile_seconds": compile_seconds,
        "sequential_seconds": sequential_seconds,
        "rows": rows,
    }
    write_results(result, args.out)


if __name__ == "__main__":  # worker processes re-import this file: the guard keeps them from running it
    main()
