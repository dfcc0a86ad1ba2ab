"""Scenario 7: worker RSS after the first sessions and after many more (a leak shows as
growth), and daphne's memory per idle WebSocket connection."""

from __future__ import annotations

import asyncio
import itertools
import time

from bench.client import Http, listen
from bench.stack import rss_mb, uss_mb

BATCH = 20


async def _post(port: int, jobs: list[tuple[str, str]]) -> list[str]:
    http = Http("127.0.0.1", port)
    await http.ensure_csrf()
    return [(await http.create(text, voice))["id"] for voice, text in jobs]


def _wait_final(ids: list[str], timeout: float) -> int:
    """Poll the database until every session is over; the number that completed."""
    from tts.models import FINAL_STATUSES, SessionStatus, TTSSession

    deadline = time.monotonic() + timeout
    sessions = TTSSession.objects.filter(pk__in=ids)
    while time.monotonic() < deadline:
        if sessions.filter(status__in=FINAL_STATUSES).count() == len(ids):
            break
        time.sleep(0.05)
    return sessions.filter(status=SessionStatus.COMPLETED).count()


def _run(port: int, jobs: list[tuple[str, str]], timeout: float) -> int:
    """POST in batches (no listeners: this measures the workers) and wait for each."""
    done = 0
    for start in range(0, len(jobs), BATCH):
        ids = asyncio.run(_post(port, jobs[start : start + BATCH]))
        done += _wait_final(ids, timeout)
    return done


def worker_growth(
    bench,
    voices: list[str],
    texts: list[str],
    *,
    first: int,
    timeout: float,
    checkpoints: tuple[int, ...] = (),
) -> dict:
    """RSS of each worker after ``first`` sessions, after each of ``checkpoints`` (to see
    whether growth levels off) and after all of ``texts``; growth is first -> all."""
    jobs = list(zip(itertools.cycle(voices), texts, strict=False))
    marks = sorted({first, *(c for c in checkpoints if first < c < len(jobs)), len(jobs)})
    started, done, ok, rss = time.time(), 0, 0, {}
    for mark in marks:
        ok += _run(bench.port, jobs[done:mark], timeout)
        done = mark
        time.sleep(0.5)  # let the workers settle back into their receive loop
        rss[mark] = {str(pid): round(rss_mb(pid), 1) for pid in bench.worker_pids}
    after_first, after_all = rss[first], rss[len(jobs)]
    growth = {
        pid: round((after_all[pid] - after_first[pid]) / after_first[pid] * 100, 2)
        for pid in after_first
    }
    return {
        "voices": voices,
        "sessions": len(jobs),
        "completed": ok,
        "checkpoint": first,
        "rss_mb_after_checkpoint": after_first,
        "rss_mb_after_all": after_all,
        "rss_mb_by_sessions": rss,
        "growth_pct": growth,
        "max_growth_pct": max(growth.values()) if growth else None,
        "wall_s": round(time.time() - started, 1),
    }


async def _idle(bench, voice: str, text: str, sockets: int, timeout: float) -> dict:
    http = Http("127.0.0.1", bench.port)
    await http.ensure_csrf()
    bench.pause_workers()
    try:
        session_id = (await http.create(text, voice))["id"]
        # One socket first, so that the one-off costs (first imports, thread pools) are paid.
        warm = asyncio.Event()
        tasks = [asyncio.create_task(listen(http, session_id, timeout=timeout, ready=warm))]
        await asyncio.wait_for(warm.wait(), 30)
        await asyncio.sleep(0.5)
        before = (rss_mb(bench.daphne_pid), uss_mb(bench.daphne_pid))
        ready = [asyncio.Event() for _ in range(sockets)]
        tasks += [
            asyncio.create_task(listen(http, session_id, timeout=timeout, ready=r)) for r in ready
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 120)
        await asyncio.sleep(1.0)
        after = (rss_mb(bench.daphne_pid), uss_mb(bench.daphne_pid))
        await http.request("POST", f"/api/tts/sessions/{session_id}/cancel/")
    finally:
        bench.resume_workers()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "sockets": sockets,
        "daphne_rss_mb_before": round(before[0], 1),
        "daphne_rss_mb_after": round(after[0], 1),
        "kb_per_connection_rss": round((after[0] - before[0]) * 1024 / sockets, 1),
        "kb_per_connection_uss": round((after[1] - before[1]) * 1024 / sockets, 1),
    }


def idle_connections(bench, voice: str, text: str, sockets: int, *, timeout: float) -> dict:
    return asyncio.run(_idle(bench, voice, text, sockets, timeout))
