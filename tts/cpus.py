"""CPUs of its own for a process: ``TTS_WEB_CPUS`` (daphne through ``tts.serve``) and
``TTS_WORKER_CPUS`` (``runworker``), read from the environment as the process starts.

A web process that shares its cores with the workers waits for them: the synthesis of the
next segment, or a store, holds the core that the first chunk's relay, or the next POST,
needs, and each process's caches are cooled by the other's work. Given a core of its own,
the way to first audio was about a millisecond shorter (docs/benchmarks.md, P89). The
workers then have that core less: on a small host that halves what they can synthesize at
once, which is why neither variable has a default.

Values are Linux's CPU lists: ``0``, ``2-3``, ``0,2,4-7``. Every thread the process holds
is pinned, and threads it starts later inherit the set. Docker's ``cpuset``, systemd's
``CPUAffinity=`` and ``taskset`` do the same from outside.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping

WEB = "TTS_WEB_CPUS"
WORKER = "TTS_WORKER_CPUS"


# Linux's own limit (CONFIG_NR_CPUS at most 8,192): a typo such as 0-4294967295 is refused
# before a set of billions is built.
MAX_CPU = 8191


def parse(value: str) -> frozenset[int]:
    """A CPU list (``0,2-3``) as the set it names; ValueError, with the reason, else."""
    cpus: set[int] = set()
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part, re.ASCII)
        if match is None:
            raise ValueError(f"{value!r} is not a CPU list such as 0, 2-3 or 0,2,4-7")
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if high < low:
            raise ValueError(f"{value!r}: the range {part.strip()} runs backwards")
        if high > MAX_CPU:
            raise ValueError(f"{value!r}: CPU {high} is beyond Linux's {MAX_CPU}")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_list(cpus: frozenset[int] | set[int]) -> str:
    """The shortest CPU list for ``cpus``: {0, 1, 2, 5} -> ``0-2,5``."""
    ranges: list[str] = []
    for cpu in sorted(cpus):
        if ranges and cpu == int(ranges[-1].split("-")[-1]) + 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{cpu}"
        else:
            ranges.append(str(cpu))
    return ",".join(ranges)


def wanted(variable: str, environ: Mapping[str, str] | None = None) -> frozenset[int] | None:
    """The CPUs ``variable`` names, or None when it is unset or empty. ValueError, by
    name, for a malformed list or CPUs this process may not use (another container's, a
    cpuset that excludes them)."""
    value = (os.environ if environ is None else environ).get(variable, "").strip()
    if not value:
        return None
    try:
        cpus = parse(value)
    except ValueError as exc:
        raise ValueError(f"{variable}: {exc}") from None
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(f"{variable}: this system cannot pin a process to CPUs (Linux can)")
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise ValueError(
            f"{variable}={value}: CPU {format_list(cpus - allowed)} is not available to this "
            f"process, which may use {format_list(allowed)}"
        )
    return cpus


def pin(cpus: frozenset[int]) -> None:
    """Every thread of this process onto ``cpus``; threads started later inherit them."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(tid), cpus)


def pin_from(variable: str) -> frozenset[int] | None:
    """Pin this process as ``variable`` asks; the CPUs, or None when it asks nothing."""
    cpus = wanted(variable)
    if cpus is not None:
        pin(cpus)
    return cpus
