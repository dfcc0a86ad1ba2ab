"""CPU time each process of the stack spends over a stretch of the bench.

Everything runs on the same few cores: the client, daphne, the workers, their engine
processes (espeak-ng's, one per chunk, when it runs as a program) and Redis. When their CPU time per
session adds up to most of what the cores can give in a session's wall time, the
pipeline's latency is queueing for a core, not any one step: this is how
docs/benchmarks.md tells the two apart. Times are user + system, from /proc (psutil);
an engine process counts once it has exited (its worker reaps it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil


def _seconds(pid: int, *, children: bool = False) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    if children:
        return times.children_user + times.children_system
    return times.user + times.system


@dataclass
class CpuMeter:
    """Counts from its making: the stack's processes (a worker's reaped children are its
    engine processes), and this one, the client."""

    daphne: int
    workers: list[int]
    redis: int | None = None  # the embedded server; None for an external one
    client: int = field(default_factory=os.getpid)
    _before: dict[str, float] = field(init=False, repr=False)
    _started: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._before, self._started = self.read(), time.perf_counter()

    def read(self) -> dict[str, float]:
        out = {
            "client": _seconds(self.client),
            "daphne": _seconds(self.daphne),
            "workers": sum(_seconds(pid) for pid in self.workers),
            "engine processes": sum(_seconds(pid, children=True) for pid in self.workers),
        }
        if self.redis is not None:
            out["redis"] = _seconds(self.redis)
        return out

    def per_session_ms(self, sessions: int) -> dict[str, float]:
        """Milliseconds per session since the meter was made: CPU per role, in ``all``,
        and the ``wall`` time."""
        after, n = self.read(), max(1, sessions)
        per = {role: (after[role] - self._before[role]) * 1000 / n for role in after}
        per["all"] = sum(per.values())
        per["wall"] = (time.perf_counter() - self._started) * 1000 / n
        return {role: round(ms, 1) for role, ms in per.items()}
