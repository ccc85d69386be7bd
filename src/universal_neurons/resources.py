"""Memory: what a stage may use, and the check that runs before it allocates anything.

A stage estimates its largest allocations from the parameters (and the shapes of its inputs)
and calls ``check_memory`` before it builds them: an estimate above what the machine offers
stops with one line naming the parameter, the estimate and the limit, instead of swapping,
being killed or failing deep inside torch or numpy. The limit is the smallest of the
available memory (``MemAvailable`` in ``/proc/meminfo``), the process's address-space and
data limits (``ulimit -v`` / ``-d``), the cgroup's ``memory.max`` and, when set,
``UNIVERSAL_NEURONS_MEMORY_GB`` (a limit the user configures).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from universal_neurons.errors import UserError

MEMORY_ENV = "UNIVERSAL_NEURONS_MEMORY_GB"
"""Environment variable: the memory (GB) a stage may use at most."""

GIB = 2**30


class MemoryLimitError(UserError, MemoryError):
    """A stage whose parameters need more memory than the machine offers."""


def _meminfo_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit() -> int | None:
    """The cgroup v2 ``memory.max`` of this process in bytes (None: none or unlimited)."""
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _rlimits() -> list[tuple[int, str]]:
    """The address-space and data-segment limits of this process that are set."""
    found = []
    for kind, name in ((resource.RLIMIT_AS, "ulimit -v"), (resource.RLIMIT_DATA, "ulimit -d")):
        soft, _ = resource.getrlimit(kind)
        if soft != resource.RLIM_INFINITY:
            found.append((soft, f"the process limit ({name})"))
    return found


def configured_memory_limit() -> tuple[int, str] | None:
    """``UNIVERSAL_NEURONS_MEMORY_GB`` in bytes, if set (a bad value is a user error)."""
    text = os.environ.get(MEMORY_ENV)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UserError(f"{MEMORY_ENV}: expected a positive number of GB, got {text!r}")
    return int(value * 1e9), f"the configured limit ({MEMORY_ENV}={text})"


def memory_limit() -> tuple[int, str]:
    """``(bytes, what)``: the most memory a stage may use, and what sets that limit."""
    limits = _rlimits()
    available = _meminfo_available()
    if available is not None:
        limits.append((available, "the available memory"))
    cgroup = _cgroup_limit()
    if cgroup is not None:
        limits.append((cgroup, "the memory limit of this container (cgroup memory.max)"))
    configured = configured_memory_limit()
    if configured is not None:
        limits.append(configured)
    return min(limits) if limits else (2**63, "no known limit")


def format_bytes(size: float) -> str:
    """``12.3 GiB``, ``512.0 MiB``, ``1.0 KiB``."""
    for unit, scale in (("TiB", 2**40), ("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def check_memory(parts: dict[str, tuple[str, int]], what: str) -> int:
    """Stop before allocating when the estimate (the sum of ``parts``) exceeds ``memory_limit()``.

    ``parts``: ``{what is allocated: (the parameter that sets its size, bytes)}``; ``what``:
    who needs it (``training one model``). The message starts with the parameter of the
    largest part. Returns the total in bytes.
    """
    total = sum(size for _, size in parts.values())
    limit, source = memory_limit()
    if total > limit:
        largest = max(parts, key=lambda label: parts[label][1])
        cause, size = parts[largest]
        raise MemoryLimitError(
            f"{cause}: {what} needs about {format_bytes(total)} ({largest}: "
            f"{format_bytes(size)}), more than the {format_bytes(limit)} of {source}; "
            "lower the parameter"
        )
    return total
