"""Line up the `--patch trace` timelines of daphne and the workers, session by session.

    .venv/bin/python bench/run.py --voices espeak --scenarios ttfa --sessions 40 --patch trace
    .venv/bin/python bench/trace.py bench/results/<stamp>-logs
    .venv/bin/python bench/trace.py bench/results/<stamp>-logs --start "http.post >"

Sessions run one at a time in the ttfa and cached scenarios, so each POST's view opens a
window that holds its socket's and its worker's steps too (``--start "http.post >"``
opens windows where daphne has read the POST instead, so that the socket's handshake and
the request's way to the view show as well; ``--start "client.post >"`` opens them at
the client's POST, with its own steps: ``client.sent``, the request written;
``client.ws_open``; ``client.frame``, the first audio). Every step is placed at its first (then
second) occurrence in the window, in milliseconds from the window's start, and
the median over the sessions is printed in time order; the first ``--skip`` windows (the
warm-up's) are left out, and steps seen in fewer than 80 % of the windows are not shown.
``--windows FIRST:END`` keeps a run's windows FIRST to END first: each voice's sessions
run one after another, so a range is one voice's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def windows(log_dir: Path, start: str = "view >") -> list[list[tuple[float, str]]]:
    events: list[tuple[float, str]] = []
    for path in sorted((log_dir / "timings").glob("trace-*.json")):
        events += [(t, label) for t, label in json.loads(path.read_text())]
    events.sort()
    out: list[list[tuple[float, str]]] = []
    for t, label in events:
        if label == start:
            out.append([])
        if out:
            out[-1].append((t, label))
    return out


def steps(window: list[tuple[float, str]]) -> dict[str, float]:
    start, placed = window[0][0], {}
    for t, label in window:
        for name in (label, f"{label} #2"):
            if name not in placed:
                placed[name] = (t - start) * 1000
                break
    return placed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", type=Path, help="a run's <stamp>-logs folder")
    parser.add_argument("--skip", type=int, default=5, help="windows to leave out first")
    parser.add_argument(
        "--start", default="view >", help='the step that opens a window (e.g. "http.post >")'
    )
    parser.add_argument(
        "--windows",
        metavar="FIRST:END",
        help="only these windows, counted before --skip (e.g. 35:55: the sessions of a run's "
        "second voice)",
    )
    args = parser.parse_args()
    found = windows(args.log_dir, args.start)
    if args.windows:
        first, _, end = args.windows.partition(":")
        found = found[int(first or 0) : int(end) if end else None]
    found = found[args.skip :]
    if not found:
        raise SystemExit(
            f"no trace windows in {args.log_dir} (was the run made with --patch trace?)"
        )
    per_step: dict[str, list[float]] = {}
    for window in found:
        for name, ms in steps(window).items():
            per_step.setdefault(name, []).append(ms)
    shown = {k: v for k, v in per_step.items() if len(v) >= 0.8 * len(found)}
    print(f"{len(found)} sessions; median ms from {args.start.rstrip(' >')!r}")
    for name, values in sorted(shown.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"{statistics.median(values):8.2f}  {name}")


if __name__ == "__main__":
    main()
