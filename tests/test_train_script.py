"""The training script refuses bad settings on its command line, before it reads the corpus or trains."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_course_model.py"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--show-every", "-1"], "argument --show-every: must be at least 0, got -1"),
        (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["--batch-size", "many"], "argument --batch-size: expected a whole number, got 'many'"),
        (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
    ],
)
def test_bad_settings_are_refused_with_what_is_allowed(arguments, message, tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert not any(tmp_path.iterdir())  # nothing was trained or written
