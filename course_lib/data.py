"""The course's texts: held-out evaluation passages and calibration prompts.

Both ship with the package (``course_lib/assets/text/``), so they load offline.
They were cut from the bundled model's corpus by ``scripts/train_course_model.py``
(see :mod:`course_lib.corpus`):

- the **evaluation passages** are the held-out split, never trained on;
- the **calibration prompts** are 64 passages of the training split, used to
  calibrate quantizers, so calibration never sees the evaluation text either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from .checks import check_integer

TEXT_DIR = Path(__file__).resolve().parent / "assets" / "text"
HELDOUT_FILE = TEXT_DIR / "heldout.jsonl"
CALIBRATION_FILE = TEXT_DIR / "calibration.jsonl"


class _PassageLike(Protocol):
    source: str
    headword: str
    text: str


def save_passages(path: Path, passages: Iterable[_PassageLike]) -> None:
    """Write passages as JSON lines with their source, headword and text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for passage in passages:
            record = {"source": passage.source, "headword": passage.headword, "text": passage.text}
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_records(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def _take(texts: list[str], limit: int | None, what: str) -> list[str]:
    if limit is None:
        return texts
    limit = check_integer(limit, "limit", 1, len(texts), unit=f"the number of {what}")
    return texts[:limit]


def load_evaluation_passages(limit: int | None = None) -> list[str]:
    """The held-out passages (plain text), in a fixed order; the first ``limit`` if given."""
    return _take([r["text"] for r in _read_records(HELDOUT_FILE)], limit, "evaluation passages")


def load_calibration_prompts(limit: int | None = None) -> list[str]:
    """Training-split passages for calibrating quantizers; the first ``limit`` if given."""
    return _take([r["text"] for r in _read_records(CALIBRATION_FILE)], limit, "calibration prompts")
