"""Peak memory and wall time of each notebook, run top to bottom in a fresh kernel.

    .venv/bin/python benchmarks/notebook_memory.py [NOTEBOOK ...] [--memory-limit 2G] [--save] [--out FILE]

Each notebook runs in a new kernel of the course's environment (the kernel this project's
``make setup`` registers), as nbval runs it. A sampler thread reads, every 0.1 s, the resident
memory (RSS) of every process started under this script: the kernel and its own children (the
HTTP server of notebook 03, the Dask scheduler and workers of notebook 04). The peak of their
sum is the figure that a memory cap such as mybinder.org's 2 GB sees; adding RSS counts shared
libraries once per process, so the sum is a slight over-estimate, never an under-estimate.

``--memory-limit 2G`` runs the notebooks as in a memory-capped session: it sets
``COURSE_MEMORY_LIMIT`` for the kernel, which :mod:`course_lib.environment` reads like the cap
of a Binder container, so the notebooks take their lighter settings. Results are printed as a
table and written to ``benchmarks/results/notebook_memory[_LIMIT].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
KERNEL_NAME = "fhe-gpt2-course"
MB = 1_000_000


@dataclass
class NotebookMemory:
    notebook: str
    peak_mb: float
    peak_cell: int  # index of the code cell that was running at the peak (1 = first code cell)
    seconds: float
    processes_at_peak: int
    breakdown_mb: dict[str, float]  # at the peak: MB per process, named by what it runs
    error: str | None = None  # the first cell error, if the notebook did not run to the end


def process_name(cmdline: list[str]) -> str:
    """A short name for a process of the run: the kernel, the course's server, a Dask scheduler or worker."""
    text = " ".join(cmdline)
    for needle, name in (
        ("ipykernel", "kernel"),
        ("course_lib.server", "HTTP server"),
        ("distributed.cli.dask_worker", "Dask worker"),
        ("from multiprocessing", "worker process"),
        ("multiprocessing.spawn", "worker process"),
    ):
        if needle in text:
            return name
    return text[:40]


class PeakSampler(threading.Thread):
    """Samples the summed RSS of this process's descendants until stopped; keeps the peak."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self.peak_cell = 0
        self.peak_breakdown: dict[str, float] = {}
        self.current_cell = 0
        self._halt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._halt.is_set():
            total, count, breakdown = 0, 0, {}
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    name = process_name(child.cmdline())
                except psutil.Error:  # the process ended between the listing and the read
                    continue
                total += rss
                count += 1
                breakdown[name] = round(breakdown.get(name, 0) + rss / MB, 1)
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_processes, self.peak_cell = total, count, self.current_cell
                self.peak_breakdown = breakdown
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(path: Path, timeout: int, save: bool = False) -> NotebookMemory:
    """Run one notebook in a fresh kernel; ``save`` writes the executed notebook back (else it is left as it was)."""
    notebook = nbformat.read(path, as_version=4)
    sampler = PeakSampler()
    client = NotebookClient(
        notebook, kernel_name=KERNEL_NAME, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
    )
    code_cells = 0

    def on_cell_start(cell, cell_index):  # nbclient's hook: called before each cell runs
        nonlocal code_cells
        if cell.cell_type == "code":
            code_cells += 1
            sampler.current_cell = code_cells

    client.on_cell_start = on_cell_start
    start = time.perf_counter()
    sampler.start()
    error = None
    try:
        client.execute()
    except CellExecutionError as failure:  # still report the memory up to the failing cell
        error = f"code cell {code_cells}: {failure.ename}: {failure.evalue}"
    finally:
        sampler.stop()
    if save:
        nbformat.write(notebook, path)
    return NotebookMemory(
        notebook=path.name,
        peak_mb=round(sampler.peak_bytes / MB, 1),
        peak_cell=sampler.peak_cell,
        seconds=round(time.perf_counter() - start, 1),
        processes_at_peak=sampler.peak_processes,
        breakdown_mb=sampler.peak_breakdown,
        error=error,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS, help="notebooks (default: all four)")
    parser.add_argument(
        "--memory-limit",
        help="run as in a session capped at this much memory (e.g. 2G): sets COURSE_MEMORY_LIMIT for the kernel",
    )
    parser.add_argument("--timeout", type=int, default=2400, help="seconds allowed per cell")
    parser.add_argument(
        "--save", action="store_true", help="write the executed notebooks back (then run scripts/clean_notebooks.py)"
    )
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/notebook_memory*.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_limit:
        from course_lib.environment import parse_bytes

        parse_bytes(args.memory_limit)  # a clear error for "2 GB" or "two", before any kernel starts
        os.environ["COURSE_MEMORY_LIMIT"] = args.memory_limit
    else:
        os.environ.pop("COURSE_MEMORY_LIMIT", None)
    os.environ.setdefault("TQDM_DISABLE", "1")  # as under nbval: no progress widgets to render
    suffix = f"_{args.memory_limit.lower()}" if args.memory_limit else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"notebook_memory{suffix}.json"

    results = []
    print(f"{'notebook':<24} {'peak MB':>9} {'at code cell':>13} {'processes':>10} {'time':>8}   at the peak, MB")
    for path in args.notebooks:
        result = measure(path.resolve(), args.timeout, args.save)
        results.append(result)
        minutes, seconds = divmod(round(result.seconds), 60)
        print(
            f"{result.notebook:<24} {result.peak_mb:>9,.0f} {result.peak_cell:>13} "
            f"{result.processes_at_peak:>10} {minutes:>5}:{seconds:02d}   "
            + ", ".join(f"{name} {mb:,.0f}" for name, mb in result.breakdown_mb.items()),
            flush=True,
        )
        if result.error:
            print(f"  FAILED at {result.error}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "memory_limit": args.memory_limit,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "notebooks": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if any(r.error for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
