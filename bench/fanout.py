"""Scenario 5: one session, N listeners. The workers are paused (SIGSTOP) while the
listeners connect, so that every chunk is produced while all of them listen; then every
listener must receive every chunk exactly once, byte for byte what was stored.

Delivery latency per chunk and listener: arrival minus the chunk's ``created_at`` (when
the worker made and broadcast it; the row is written a moment later), and the spread:
arrival minus the first listener's arrival of that chunk. With ``--path-rtt-ms`` (and
``--link-mbit``) the listeners are on a modelled network path (bench/netdelay.py): the
latencies then include the path's, and the late chunks are a real path's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from bench.client import Http, Listen, listen
from bench.db import fetch_sessions
from bench.netdelay import Link, through
from bench.stats import summary

CONNECT_TIMEOUT = 60.0
PLAYER_LEAD_S = 0.03  # scheduler.js START_LEAD
PLAYER_CUSHION_S = 0.1  # scheduler.js START_CUSHION
PLAYER_MAX_CUSHION_S = 2.0  # scheduler.js MAX_CUSHION
PLAYER_LATE_MARGIN_S = 0.01  # scheduler.js LATE_MARGIN: due sooner than this is an underrun


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """user+system CPU seconds so far of each named process (the client: this one)."""
    import psutil

    out = {}
    for name, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        out[name] = times.user + times.system
    return out


async def _fanout(
    bench,
    voice: str,
    text: str,
    listeners: int,
    timeout: float,
    rtt_ms: float,
    link: Link | None,
) -> dict:
    http = Http("127.0.0.1", bench.port)
    await http.ensure_csrf()
    async with contextlib.AsyncExitStack() as stack:
        far = http  # the listeners' browser: over the modelled path, if any
        if (port := await through(stack, bench.port, rtt_ms, link)) != bench.port:
            far = Http("127.0.0.1", port)
            far.cookies = http.cookies
        bench.pause_workers()
        try:
            session_id = (await http.create(text, voice))["id"]
            ready = [asyncio.Event() for _ in range(listeners)]
            tasks = [
                asyncio.create_task(listen(far, session_id, timeout=timeout, ready=r))
                for r in ready
            ]
            started = time.time()
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await asyncio.gather(*(r.wait() for r in ready))
            connect_s = time.time() - started
        finally:
            bench.resume_workers()
        streams = await asyncio.gather(*tasks, return_exceptions=True)
    return {"session_id": session_id, "streams": streams, "connect_s": connect_s}


def run(
    bench,
    voice: str,
    text: str,
    listeners: int,
    *,
    timeout: float,
    rtt_ms: float = 0.0,
    link: Link | None = None,
) -> dict:
    """One session and its listeners; with ``rtt_ms`` or ``link``, the listeners' sockets
    go through bench/netdelay.py's proxy (the session's POST does not)."""
    pids = {
        "client": os.getpid(),
        "daphne": bench.daphne_pid,
        **{f"worker{i}": pid for i, pid in enumerate(bench.worker_pids)},
    }
    before = cpu_seconds(pids)
    raw = asyncio.run(_fanout(bench, voice, text, listeners, timeout, rtt_ms, link))
    after = cpu_seconds(pids)
    result = analyse(raw, listeners)
    result["cpu_s"] = {name: round(after[name] - before[name], 2) for name in pids}
    return result


def analyse(raw: dict, listeners: int) -> dict:
    row = fetch_sessions([raw["session_id"]], digests=True)[raw["session_id"]]
    created = {c.seq: c.created_at for c in row.chunks}
    digests = {c.seq: c.digest for c in row.chunks}
    streams: list[Listen] = [s for s in raw["streams"] if isinstance(s, Listen)]
    failures = [repr(s) for s in raw["streams"] if not isinstance(s, Listen)]
    latency, spread, first_chunk = [], [], []
    for seq, made in created.items():
        arrivals = [s.arrivals[seq] for s in streams if seq in s.arrivals]
        if not arrivals:
            continue
        first = min(arrivals)
        latency += [(t - made) * 1000 for t in arrivals]
        spread += [(t - first) * 1000 for t in arrivals]
        if seq == 0:
            first_chunk = [(t - made) * 1000 for t in arrivals]
    held = [late_held(s, row) for s in streams if s.t_first is not None]
    intact = sum(
        1
        for s in streams
        if s.complete and s.duplicates == 0 and all(s.digests[q] == d for q, d in digests.items())
    )
    return {
        "listeners": listeners,
        "chunks": len(created),
        "audio_s": round(row.audio_ms / 1000, 1),
        "pcm_mb_per_listener": round(sum(c.samples * 2 for c in row.chunks) / 2**20, 2),
        "connect_s": round(raw["connect_s"], 2),
        "every_listener_every_chunk": intact == listeners,
        "intact_listeners": intact,
        "failures": failures[:5],
        "latency_ms": summary(latency),
        "first_chunk_latency_ms": summary(first_chunk),
        "spread_ms": summary(spread),
        "late_chunks": sum(_late(s, row) for s in streams),
        "late_chunks_held": sum(late for late, _ in held),
        "hold_s": summary([hold for _, hold in held], digits=2),
        "timeline": _timeline(streams[0], row) if streams else [],
        "production_s": round(row.chunks[-1].created_at - row.chunks[0].created_at, 3)
        if row.chunks
        else None,
    }


def _late(stream: Listen, row) -> int:
    """Chunks that arrived after a player starting at the first chunk would have needed
    them (their start time: the durations of the chunks before them): audible gaps."""
    if stream.t_first is None:
        return 0
    late, due = 0, stream.t_first
    for chunk in row.chunks:
        arrived = stream.arrivals.get(chunk.seq)
        if arrived is None or arrived > due:
            late += 1
        due += chunk.samples / chunk.sample_rate
    return late


def _timeline(stream: Listen, row) -> list[dict]:
    """One listener's chunks: when each arrived (s after the first), its audio (s), the
    cushion_ms it carried, and its synthesis time: how a hold went, for a rerun to read."""
    first = stream.t_first
    return [
        {
            "seq": chunk.seq,
            "arrived_s": round(stream.arrivals[chunk.seq] - first, 3),
            "audio_s": round(chunk.samples / chunk.sample_rate, 3),
            "cushion_ms": stream.cushions.get(chunk.seq),
            "engine_ms": chunk.engine_ms,
        }
        for chunk in row.chunks
        if first is not None and chunk.seq in stream.arrivals
    ]


def late_held(stream: Listen, row) -> tuple[int, float]:
    """As _late, for the bundled player (scheduler.js). A chunk that arrives later than
    ``LATE_MARGIN`` before it is due has run dry, and the player starts it (the first one
    too) its lead after it arrived (its cushion, doubled at each underrun, once it has run
    dry), or, where the chunk carries a ``cushion_ms``, that hold plus its cushion against
    jitter if that is later. The late chunks, and how long it held the first one (s), of a
    stream that got audio."""
    late, due, hold, cushion = 0, None, None, PLAYER_CUSHION_S
    for chunk in row.chunks:
        arrived = stream.arrivals.get(chunk.seq)
        if arrived is None:
            late += 1
            continue
        if due is None or arrived > due - PLAYER_LATE_MARGIN_S:  # the first, or run dry
            if due is not None:
                late += 1
                cushion = min(PLAYER_MAX_CUSHION_S, cushion * 2)
            wait = stream.cushions.get(chunk.seq, 0) / 1000
            lead = cushion if cushion > PLAYER_CUSHION_S else PLAYER_LEAD_S
            due = arrived + (max(lead, wait + cushion) if wait > 0 else lead)
            hold = due - arrived if hold is None else hold
        due += chunk.samples / chunk.sample_rate
    return late, hold or 0.0


def added_latency(results: list[dict]) -> dict:
    """p50/p99 delivery latency at the largest N minus that at N=1."""
    by_n = {r["listeners"]: r for r in results}
    if 1 not in by_n or len(by_n) < 2:
        return {}
    top = by_n[max(by_n)]
    return {
        "listeners": top["listeners"],
        "added_p50_ms": round(top["latency_ms"]["p50"] - by_n[1]["latency_ms"]["p50"], 1),
        "added_p99_ms": round(top["latency_ms"]["p99"] - by_n[1]["latency_ms"]["p99"], 1),
        "spread_p99_ms": top["spread_ms"]["p99"],
    }
