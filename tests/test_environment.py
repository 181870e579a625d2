"""course_lib.environment: finding a session's memory cap, and the compiler configuration a capped session gets."""

from __future__ import annotations

import pytest
from concrete import fhe

from course_lib.environment import (
    LIGHT_SETTINGS_BELOW,
    MemoryLimit,
    describe_memory,
    memory_capped,
    memory_limit,
    parse_bytes,
)
from course_lib.fhe import configuration

GiB = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 * GiB),
        ("2g", 2 * GiB),
        ("2Gi", 2 * GiB),
        ("512M", 512 * 1024**2),
        ("1.5G", int(1.5 * GiB)),
        ("2147483648", 2 * GiB),
        ("3 GB", 3 * GiB),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "two", "-1", "0", "2X", "G"])
def test_parse_bytes_says_what_is_accepted(text):
    with pytest.raises(ValueError, match="e.g. 2G"):
        parse_bytes(text)


def unknown_machine():
    """The machine's memory, when it cannot be read: only the other sources count."""
    return None


def cgroup_file(tmp_path, text):
    path = tmp_path / "memory.max"
    path.write_text(text + "\n")
    return (path,)


def test_no_cap_anywhere(tmp_path):
    assert memory_limit({}, cgroup_file(tmp_path, "max"), unknown_machine) is None
    assert memory_limit({}, (tmp_path / "missing",), unknown_machine) is None
    assert memory_limit({}, cgroup_file(tmp_path, str(2**63 - 4096)), unknown_machine) is None  # v1's "unlimited"


def test_binder_cap_from_mem_limit_and_cgroup(tmp_path):
    limit = memory_limit({"MEM_LIMIT": str(2 * GiB)}, cgroup_file(tmp_path, str(3 * GiB)), lambda: 64 * GiB)
    assert limit == MemoryLimit(2 * GiB, "$MEM_LIMIT")
    limit = memory_limit({}, cgroup_file(tmp_path, str(2 * GiB)), lambda: 64 * GiB)
    assert limit.bytes == 2 * GiB and "control group" in limit.source


def test_the_smallest_cap_wins_and_course_setting_counts(tmp_path):
    limit = memory_limit(
        {"COURSE_MEMORY_LIMIT": "1G", "MEM_LIMIT": "2G"}, cgroup_file(tmp_path, "max"), lambda: 8 * GiB
    )
    assert limit == MemoryLimit(GiB, "$COURSE_MEMORY_LIMIT")


@pytest.mark.parametrize(
    ("machine", "lighter"),
    [(8 * GiB, True), (int(12.7 * GiB), True), (int(15.5 * GiB), False), (24 * GiB, False)],
    ids=["8 GB laptop", "Colab", "16 GB laptop", "24 GiB"],
)
def test_the_machine_memory_counts_when_nothing_caps_the_session(tmp_path, machine, lighter):
    limit = memory_limit({}, cgroup_file(tmp_path, "max"), lambda: machine)
    assert limit == MemoryLimit(machine, "the machine's memory")
    assert memory_capped(limit) is lighter
    assert describe_memory(limit).startswith(f"memory cap: {machine / 1e9:.1f} GB (from the machine's memory);")


def test_a_malformed_variable_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"\$COURSE_MEMORY_LIMIT: not a memory size: '2 gigs'"):
        memory_limit({"COURSE_MEMORY_LIMIT": "2 gigs"}, (tmp_path / "missing",))


def test_capped_below_the_threshold_only():
    assert memory_capped(MemoryLimit(2 * GiB, "test"))
    assert not memory_capped(MemoryLimit(LIGHT_SETTINGS_BELOW, "test"))
    assert "lighter" in describe_memory(MemoryLimit(2 * GiB, "test"))
    assert describe_memory(MemoryLimit(24 * GiB, "test")).endswith("settings: the default ones")


def test_configuration_under_a_cap_uses_one_parameter_set(monkeypatch):
    monkeypatch.delenv("MEM_LIMIT", raising=False)
    monkeypatch.delenv("COURSE_MEMORY_LIMIT", raising=False)
    if memory_capped():
        pytest.skip("this machine itself has less memory than the default settings need")
    assert configuration().parameter_selection_strategy == fhe.ParameterSelectionStrategy.MULTI
    monkeypatch.setenv("COURSE_MEMORY_LIMIT", "2G")
    assert configuration().parameter_selection_strategy == fhe.ParameterSelectionStrategy.MONO
    assert configuration(parameter_selection_strategy="multi").parameter_selection_strategy in (
        "multi",
        fhe.ParameterSelectionStrategy.MULTI,
    )
