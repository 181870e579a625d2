"""Benchmark results: each benchmark writes one JSON file (under ``benchmarks/results/``), always the same way,
so that a re-run changes the file only where a figure changed."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(record: dict, out: str | Path) -> Path:
    """Write ``record`` to ``out`` as JSON (2-space indent, keys in the record's order, a final newline),
    creating its folder if needed, and print where; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return out
