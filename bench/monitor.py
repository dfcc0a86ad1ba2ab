"""How busy the machine was with other work while the benchmark ran: the CPU used by
processes outside the benchmark's own process tree, sampled every couple of seconds.
On a shared machine this says how far to trust the latencies."""

from __future__ import annotations

import os
import threading

INTERVAL_S = 2.0


class ForeignLoad:
    def __init__(self) -> None:
        self.samples: list[float] = []  # CPU cores used by other processes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-load", daemon=True)
        self._seen: dict[int, object] = {}

    def __enter__(self) -> ForeignLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _ours(self) -> set[int]:
        import psutil

        me = psutil.Process(os.getpid())
        return {me.pid, *(p.pid for p in me.children(recursive=True))}

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(INTERVAL_S):
            ours, used = self._ours(), 0.0
            for proc in psutil.process_iter():
                if proc.pid in ours:
                    continue
                # cpu_percent() compares with the previous call on the same object
                tracked = self._seen.setdefault(proc.pid, proc)
                try:
                    used += tracked.cpu_percent(None)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    self._seen.pop(proc.pid, None)
            self.samples.append(used / 100)

    def summary(self) -> dict:
        data = self.samples[1:]  # the first reading of each process is 0 by definition
        if not data:
            return {"samples": 0}
        return {
            "samples": len(data),
            "mean_cores": round(sum(data) / len(data), 2),
            "max_cores": round(max(data), 2),
            "busy_share": round(sum(1 for x in data if x > 0.25) / len(data), 2),
        }
