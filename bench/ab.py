"""Paired A/B of bench-only experiments (`bench/run.py --ab --patch NAME ...`).

On a shared machine the load drifts from one run to the next by more than most fixes
save, so two separate runs cannot be compared. Here the experiments sit behind a switch
file (bench/patches.py, ``BENCH_SWITCH_FILE``) that the processes check on every call,
and consecutive sessions alternate between off and on: both arms see the same load.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import streaming, ttfa
from bench.client import Http, Narration, narrate


class Switch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self, on: bool) -> None:
        if on:
            self.path.touch()
        else:
            self.path.unlink(missing_ok=True)


def _alternate(
    switch: Switch, port: int, voice: str, texts: list[str], timeout: float
) -> dict[bool, list[Narration]]:
    """Consecutive sessions off and on, from one browser, as the TTFA scenario's: its
    session cookie (from a first POST) lets each socket open with its POST (?pending=1),
    the player's flow. A browser per session would have no cookie, and every socket
    would be refused and opened after the POST's reply."""

    async def go() -> dict[bool, list[Narration]]:
        http = Http("127.0.0.1", port)
        await http.ensure_csrf()
        await narrate(http, COOKIE_TEXT, voice, timeout=timeout)  # the session cookie
        arms: dict[bool, list[Narration]] = {False: [], True: []}
        for i, text in enumerate(texts):
            on = i % 2 == 1
            switch.set(on)
            arms[on].append(await narrate(http, text, voice, timeout=timeout))
        return arms

    try:
        return asyncio.run(go())
    finally:
        switch.set(False)


COOKIE_TEXT = "A browser's first narration gives it its session cookie."


def run(
    switch: Switch,
    port: int,
    voice: str,
    *,
    short: list[str],
    long: list[str],
    timeout: float,
    long_timeout: float,
) -> dict:
    cold = _alternate(switch, port, voice, short, timeout)
    # The same texts again, each in the arm it was first narrated in: all cache hits.
    again = _alternate(switch, port, voice, short, timeout)
    whole = _alternate(switch, port, voice, long, long_timeout) if long else {False: [], True: []}
    out = {}
    for on, label in ((False, "off"), (True, "on")):
        out[label] = {
            "ttfa": ttfa.analyse(cold[on]),
            "cached": ttfa.analyse(again[on], cached=True),
            "throughput": streaming.throughput(whole[on]),
        }
    return out


FIGURES = (
    ("TTFA cold p50 / p99 ms", "ttfa", "ttfa"),
    ("overhead cold p50 / p99 ms", "ttfa", "overhead"),
    ("TTFA cached p50 / p99 ms", "cached", "ttfa"),
    ("wall / engine p50", "throughput", "worker_ratio"),
    ("non-engine ms per chunk p50", "throughput", "overhead_per_chunk_ms"),
)


def figures(result: dict) -> list[tuple[str, str, str]]:
    """(figure, off, on) rows."""
    rows = []
    for label, part, key in FIGURES:
        cells = []
        if any(not result[arm][part][key]["n"] for arm in ("off", "on")):
            continue  # no long texts in this run (the full-size voice)
        for arm in ("off", "on"):
            stats = result[arm][part][key]
            if part == "throughput" or key is None:
                cells.append(f"{stats['p50']}")
            else:
                cells.append(f"{stats['p50']} / {stats['p99']}")
        rows.append((label, *cells))
    return rows
