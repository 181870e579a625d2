"""Cross-cutting (the pin file, not a module): the README's platform table holds. Every package that
``requirements.txt`` pins for macOS on Apple silicon has a wheel for it, so ``make setup`` installs there without
compiling anything; and the platforms the README calls unsupported really lack a wheel of what the course needs.

pip resolves for another platform with ``--platform``, but evaluates the pins' environment markers against the
machine it runs on. So the markers are evaluated here for the target platform first, and pip then checks each
remaining pin (``--no-deps``: the pin file already lists every dependency) against the registry's wheels, with
``--dry-run``: nothing is downloaded. Skipped when the registry cannot be reached.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "3.11.9"  # a full version: some pins require Python >= 3.11.5, which "3.11" would fail

#: The platforms of the README's table: pip's platform tag, and the environment markers that platform gives.
PLATFORMS = {
    "macos-arm64": (
        "macosx_13_0_arm64",
        {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
    ),
    "macos-x86_64": (
        "macosx_13_0_x86_64",
        {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64"},
    ),
    "linux-aarch64": (
        "manylinux_2_28_aarch64",
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"},
    ),
    "windows": (
        "win_amd64",
        {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"},
    ),
}

pytestmark = pytest.mark.registry


def pins_for(platform: str) -> list[str]:
    """The ``name==version`` pins of ``requirements.txt`` whose markers hold on ``platform``."""
    environment = {
        "python_version": PYTHON.rsplit(".", 1)[0],
        "python_full_version": PYTHON,
        "implementation_version": PYTHON,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
        **PLATFORMS[platform][1],
    }
    pins = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pins.append(f"{requirement.name}{requirement.specifier}")
    return pins


def wheels_resolve(platform: str, pins: list[str]) -> subprocess.CompletedProcess:
    """pip's verdict on installing ``pins`` from wheels only on ``platform``, without installing anything."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet"]
    command += ["--only-binary=:all:", "--platform", PLATFORMS[platform][0], "--python-version", PYTHON]
    return subprocess.run([*command, "--implementation", "cp", *pins], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def registry():
    """Skip unless the registry answers: a pure-Python wheel any platform can take must resolve."""
    probe = wheels_resolve("macos-arm64", [p for p in pins_for("macos-arm64") if Requirement(p).name == "packaging"])
    if probe.returncode != 0:
        pytest.skip(f"the package registry cannot be reached: {probe.stderr.strip().splitlines()[-1:]}")


def test_every_line_of_the_pin_file_is_an_exact_pin_read_for_each_platform():
    text = (ROOT / "requirements.txt").read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for platform in PLATFORMS:
        pins = pins_for(platform)
        assert len(pins) == len(lines) and all("==" in pin for pin in pins)
        assert {"concrete-python", "torch"} <= {Requirement(pin).name for pin in pins}


def test_every_pin_has_a_wheel_for_macos_on_apple_silicon(registry):
    result = wheels_resolve("macos-arm64", pins_for("macos-arm64"))
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "platform, package",
    [("windows", "concrete-python"), ("linux-aarch64", "concrete-python"), ("macos-x86_64", "torch")],
)
def test_the_unsupported_platforms_lack_a_wheel_the_course_needs(registry, platform, package):
    """What the README's table says: concrete-python has no wheel for Windows (hence WSL2) or for Linux on ARM,
    and the torch that concrete-ml 1.9.0 pins has no wheel for Intel Macs."""
    (pin,) = [p for p in pins_for(platform) if Requirement(p).name == package]
    assert wheels_resolve(platform, [pin]).returncode != 0
