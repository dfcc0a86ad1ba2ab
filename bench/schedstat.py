"""What every process of the stack was doing around each session, to the millisecond.

    .venv/bin/python bench/run.py --voices full --scenarios ttfa --patch trace &
    .venv/bin/python bench/schedstat.py record /tmp/cpu.json --seconds 60
    .venv/bin/python bench/schedstat.py around bench/results/<stamp>-logs /tmp/cpu.json

``record`` finds the bench's processes (the client, daphne, the workers, Redis: it waits
for them to start) and reads each one's CPU time every half millisecond: the sum over its
threads of the first field of ``/proc/<pid>/task/<tid>/schedstat``, nanoseconds on a CPU.
``bench/cpu.py`` gives the totals per session; this gives their place in time. The
reading costs a little CPU itself (a few percent of a core): compare windows with each
other, not with a run without it.

``around`` lines that up with the ``--patch trace`` timelines: for each session (a window
opened by the client's POST), the time from the POST to the session's row and to its
first synthesis, and the CPU milliseconds each process spent just before the POST and
just after it (docs/benchmarks-history.md, round 16).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.trace import steps, windows  # noqa: E402

ROLES = [  # (role, words its command line holds), first match wins
    ("daphne", ("tts.serve",)),
    ("daphne", ("bench.procs", "daphne")),
    ("worker", ("runworker",)),
    ("worker", ("bench.procs", "worker")),
    ("redis", ("valkey-server",)),  # the bench's own (with --redis-url: not followed)
    ("client", ("bench/run.py",)),
]
WINDOWS_MS = [(-300, -100), (-100, 0), (0, 10), (10, 30)]


def stack_processes() -> dict[str, int]:
    """{name: pid} of the bench's processes now running (workers as worker-0, -1, …)."""
    found: dict[str, int] = {}
    workers = 0
    for process in psutil.process_iter(["pid", "cmdline"]):
        argv = process.info["cmdline"] or []
        line = " ".join(argv)
        if not argv or "schedstat.py" in line or "bench/compare.py" in line:
            continue
        if "python" not in Path(argv[0]).name and "server" not in Path(argv[0]).name:
            continue  # a wrapper (timeout, a shell) around the process
        for role, words in ROLES:
            if all(word in line for word in words):
                if role == "worker":
                    role, workers = f"worker-{workers}", workers + 1
                found.setdefault(role, process.info["pid"])
                break
    return found


def cpu_ns(pid: int) -> int:
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended
            total += int(stat.read_text().split()[0])
    return total


def record(out: Path, seconds: float, wait: float) -> None:
    deadline = time.monotonic() + wait
    while not {"daphne", "worker-0"} <= (processes := stack_processes()).keys():
        if time.monotonic() > deadline:
            raise SystemExit("schedstat: no bench stack running (daphne and a worker)")
        time.sleep(0.2)
    print(f"schedstat: recording {processes} for {seconds:g} s", file=sys.stderr)
    rows = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rows.append([time.time(), *(cpu_ns(pid) for pid in processes.values())])
        time.sleep(0.0005)
    out.write_text(json.dumps({"processes": processes, "rows": rows}))


def around(log_dir: Path, samples: Path) -> None:
    data = json.loads(samples.read_text())
    names, rows = list(data["processes"]), data["rows"]
    times = [row[0] for row in rows]

    def spent(a: float, b: float) -> list[float]:
        ia = min(bisect.bisect_left(times, a), len(rows) - 1)
        ib = min(bisect.bisect_left(times, b), len(rows) - 1)
        return [(rows[ib][k + 1] - rows[ia][k + 1]) / 1e6 for k in range(len(names))]

    print("CPU ms per process (" + ", ".join(names) + ") in windows around each POST (ms)")
    for window in windows(log_dir, "client.post >"):  # bench/trace.py's, one per session
        post = window[0][0]
        if not times or post < times[0] + 0.3 or post > times[-1] - 0.05:
            continue  # outside the recording
        placed = steps(window)
        if "services._synthesize >" not in placed:
            continue  # a replay: no synthesis of its own
        row = placed.get("services._insert <", float("nan"))
        synth = placed["services._synthesize >"]
        cells = [
            f"[{a:+d},{b:+d}] "
            + " ".join(f"{x:.1f}" for x in spent(post + a / 1e3, post + b / 1e3))
            for a, b in WINDOWS_MS
        ]
        print(f"POST->row {row:5.1f}  POST->synthesis {synth:6.1f} | " + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="sample the stack's CPU into a JSON file")
    rec.add_argument("out", type=Path)
    rec.add_argument("--seconds", type=float, default=60)
    rec.add_argument("--wait", type=float, default=180, help="for the stack to start (s)")
    show = commands.add_parser("around", help="CPU around each session of a --patch trace run")
    show.add_argument("log_dir", type=Path)
    show.add_argument("samples", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.seconds, args.wait)
    else:
        around(args.log_dir, args.samples)


if __name__ == "__main__":
    main()
