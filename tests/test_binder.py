"""Cross-cutting (binder/, not a module): binder/ as mybinder.org reads it: the project's pins, a CPU torch, the
course installed, the notebooks' kernel."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_binder_includes_the_one_pin_file_and_only_swaps_torch_for_its_cpu_build():
    binder = (BINDER / "requirements.txt").read_text()
    main = pins((ROOT / "requirements.txt").read_text())
    assert "-r ../requirements.txt" in binder.splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in binder.splitlines()
    assert pins(binder) == {"torch": f"{main['torch']}+cpu"}  # the same release, CPU build; nothing else pinned twice


def test_the_pin_file_has_no_cuda_only_packages_binder_would_install():
    main = pins((ROOT / "requirements.txt").read_text())
    assert not [name for name in main if name.startswith("nvidia-") or name == "triton"]


def test_binder_python_is_the_tested_one():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


def test_post_build_installs_the_course_and_the_notebooks_kernel():
    post_build = (BINDER / "postBuild").read_text()
    assert (BINDER / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    assert "pip install --no-cache-dir --no-deps -e ." in post_build
    makefile = (ROOT / "Makefile").read_text()
    kernel = re.search(r"^KERNEL_NAME := (\S+)", makefile, re.M).group(1)
    assert f"--name {kernel}" in post_build
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(notebooks) == 4, [p.name for p in notebooks]
    for notebook in notebooks:
        assert json.loads(notebook.read_text())["metadata"]["kernelspec"]["name"] == kernel
