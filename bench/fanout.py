"""Scenario 5: one session, N listeners. The workers are paused (SIGSTOP) while the
listeners connect, so that every chunk is produced while all of them listen; then every
listener must receive every chunk exactly once, byte for byte what was stored.

Delivery latency per chunk and listener: arrival minus the chunk row's ``created_at``
(written just before the commit and the group_send), and the spread: arrival minus the
first listener's arrival of that chunk.
"""

from __future__ import annotations

import asyncio
import time

from bench.client import Http, Listen, listen
from bench.db import fetch_sessions
from bench.stats import percentile, summary

CONNECT_TIMEOUT = 60.0


async def _fanout(bench, voice: str, text: str, listeners: int, timeout: float) -> dict:
    http = Http("127.0.0.1", bench.port)
    await http.ensure_csrf()
    bench.pause_workers()
    try:
        session_id = (await http.create(text, voice))["id"]
        ready = [asyncio.Event() for _ in range(listeners)]
        tasks = [
            asyncio.create_task(listen(http, session_id, timeout=timeout, ready=r)) for r in ready
        ]
        started = time.time()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await asyncio.gather(*(r.wait() for r in ready))
        connect_s = time.time() - started
    finally:
        bench.resume_workers()
    streams = await asyncio.gather(*tasks, return_exceptions=True)
    return {"session_id": session_id, "streams": streams, "connect_s": connect_s}


def run(bench, voice: str, text: str, listeners: int, *, timeout: float) -> dict:
    raw = asyncio.run(_fanout(bench, voice, text, listeners, timeout))
    return analyse(raw, listeners)


def analyse(raw: dict, listeners: int) -> dict:
    row = fetch_sessions([raw["session_id"]], digests=True)[raw["session_id"]]
    created = {c.seq: c.created_at for c in row.chunks}
    digests = {c.seq: c.digest for c in row.chunks}
    streams: list[Listen] = [s for s in raw["streams"] if isinstance(s, Listen)]
    failures = [repr(s) for s in raw["streams"] if not isinstance(s, Listen)]
    latency, spread, per_chunk_p99 = [], [], []
    for seq, made in created.items():
        arrivals = [s.arrivals[seq] for s in streams if seq in s.arrivals]
        if not arrivals:
            continue
        first = min(arrivals)
        chunk_latency = [(t - made) * 1000 for t in arrivals]
        latency += chunk_latency
        spread += [(t - first) * 1000 for t in arrivals]
        per_chunk_p99.append(percentile(chunk_latency, 99))
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
        "spread_ms": summary(spread),
        "production_s": round(row.chunks[-1].created_at - row.chunks[0].created_at, 3)
        if row.chunks
        else None,
    }


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
