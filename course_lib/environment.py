"""Where the notebooks run: the memory they may use, and the lighter settings of a memory-capped session.

At their default settings the notebooks take several gigabytes: an encrypted run needs the
circuit's evaluation keys decompressed in memory, in the kernel or in the server process it starts
(``benchmarks/results/notebook_memory.json`` has each notebook's measured peak). mybinder.org ends a
kernel past 2 GB, Colab's standard machine has about 12.7 GB and many laptops have 8. This
module finds the memory the session may use, the smallest of these:

- ``COURSE_MEMORY_LIMIT``: set by hand (``COURSE_MEMORY_LIMIT=2G make lab``) to try a capped
  session on a laptop, and by ``benchmarks/notebook_memory.py --memory-limit``;
- ``MEM_LIMIT``: set by JupyterHub's spawners, mybinder.org's included, to the session's cap;
- the Linux control group's limit (``/sys/fs/cgroup/memory.max``, or ``memory.limit_in_bytes``
  under cgroup v1): what the kernel of a container enforces;
- the machine's physical memory.

Under :data:`LIGHT_SETTINGS_BELOW` (14 GiB), :func:`memory_capped` is true and notebooks 03 and 04
take their lighter settings, which peak under 2 GB, and say so; the README lists what differs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

#: Sessions with less memory than this take the notebooks' lighter settings: the default ones peak a little
#: under it (``benchmarks/results/notebook_memory.json``), and the system and the browser need room next to them.
LIGHT_SETTINGS_BELOW = 14 * 1024**3

#: cgroup files holding the memory limit (v2, then v1), in the order they are read.
CGROUP_LIMIT_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_bytes(text: str) -> int:
    """``"2G"`` -> 2147483648: an integer of bytes, optionally with K, M, G or T (1024-based, as JupyterHub reads them).

    Raises ValueError naming the accepted forms for anything else ("2 GB", "two", "-1").
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(
            f"not a memory size: {text!r}; use a positive number of bytes, optionally followed by K, M, G or T "
            "(1024-based), e.g. 2G or 2147483648"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


@dataclass(frozen=True)
class MemoryLimit:
    """A session's memory cap and where it was read."""

    bytes: int
    source: str

    def __str__(self) -> str:
        return f"{self.bytes / 1e9:.1f} GB (from {self.source})"


def _cgroup_limit(files: tuple[Path, ...]) -> MemoryLimit | None:
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= 2**60:  # "max" or cgroup v1's "unlimited"
            return None
        return MemoryLimit(int(text), f"the control group, {path}")
    return None


def physical_memory() -> int:
    """The machine's physical memory, in bytes."""
    return psutil.virtual_memory().total


def memory_limit(
    environ: dict[str, str] | None = None,
    cgroup_files: tuple[Path, ...] = CGROUP_LIMIT_FILES,
    machine_memory: Callable[[], int | None] = physical_memory,
) -> MemoryLimit | None:
    """The smallest memory cap that applies to this session (the machine's memory included), or None if none is known.

    ``machine_memory`` returns the machine's memory in bytes, or None when it cannot be read.
    """
    environ = os.environ if environ is None else environ
    limits = []
    for variable in ("COURSE_MEMORY_LIMIT", "MEM_LIMIT"):
        value = environ.get(variable)
        if value:
            try:
                limits.append(MemoryLimit(parse_bytes(value), f"${variable}"))
            except ValueError as error:
                raise ValueError(f"${variable}: {error}") from None
    cgroup = _cgroup_limit(cgroup_files)
    if cgroup is not None:
        limits.append(cgroup)
    machine = machine_memory()
    if machine:
        limits.append(MemoryLimit(machine, "the machine's memory"))
    return min(limits, key=lambda limit: limit.bytes, default=None)


def memory_capped(limit: MemoryLimit | None = None) -> bool:
    """True when the session has less than :data:`LIGHT_SETTINGS_BELOW` of memory.

    So it is on mybinder.org (2 GB), on Colab's standard machine (about 12.7 GB) and on an 8 GB laptop.
    """
    limit = memory_limit() if limit is None else limit
    return limit is not None and limit.bytes < LIGHT_SETTINGS_BELOW


def describe_memory(limit: MemoryLimit | None = None) -> str:
    """One line for a notebook's output: the cap found, and which settings the notebook takes.

    The cap itself varies from machine to machine (nbval masks it); the settings part is a result.
    """
    limit = memory_limit() if limit is None else limit
    if memory_capped(limit):
        return f"memory cap: {limit}; settings: the lighter ones (under {LIGHT_SETTINGS_BELOW / 1024**3:.0f} GiB)"
    return f"memory cap: {limit or 'none found'}; settings: the default ones"
