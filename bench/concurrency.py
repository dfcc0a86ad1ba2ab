"""Scenario 6: S sessions posted at once by S browsers, on the stack's W workers.

Reports audio seconds produced per wall second (all sessions' audio over the time from the
first POST to the last `done`), the first-audio latency of each session in POST order
(fairness: a session posted later waits for the ones ahead of it), how the sessions spread
over the workers, and whether anything was lost (every chunk, byte for byte, exactly once).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from bench.client import Http, Narration, narrate
from bench.db import fetch_sessions
from bench.stats import summary


async def _burst(port: int, voice: str, texts: list[str], timeout: float) -> list:
    browsers = [Http("127.0.0.1", port) for _ in texts]
    await asyncio.gather(*(b.ensure_csrf() for b in browsers))
    return await asyncio.gather(
        *(
            narrate(b, text, voice, timeout=timeout)
            for b, text in zip(browsers, texts, strict=True)
        ),
        return_exceptions=True,
    )


def run(port: int, voice: str, texts: list[str], *, timeout: float) -> dict:
    started = time.time()
    results = asyncio.run(_burst(port, voice, texts, timeout))
    narrations = [r for r in results if isinstance(r, Narration)]
    failures = [repr(r) for r in results if not isinstance(r, Narration)]
    rows = fetch_sessions([n.session_id for n in narrations], digests=True)
    ended = max((n.stream.t_end or 0 for n in narrations if n.stream), default=started)
    wall_s = ended - min((n.t_post for n in narrations), default=started)
    audio_s = sum(rows[n.session_id].audio_ms for n in narrations) / 1000
    engine_s = sum(rows[n.session_id].engine_ms for n in narrations) / 1000
    ordered = sorted(narrations, key=lambda n: rows[n.session_id].created_at)
    ttfa = [n.ttfa_ms for n in ordered if n.ttfa_ms is not None]
    lost = [n.session_id for n in narrations if not _intact(n, rows[n.session_id])]
    return {
        "sessions": len(texts),
        "failures": failures[:5],
        "wall_s": round(wall_s, 2),
        "audio_s": round(audio_s, 1),
        "engine_s": round(engine_s, 2),
        "audio_s_per_wall_s": round(audio_s / wall_s, 1) if wall_s else None,
        "ttfa_ms": summary(ttfa),
        "ttfa_ms_in_post_order": [round(t) for t in ttfa],
        "queue_wait_ms": summary(
            ((r.started_at or r.created_at) - r.created_at) * 1000 for r in rows.values()
        ),
        "per_worker": dict(Counter(r.claimed_by.rsplit(":", 1)[-1] for r in rows.values())),
        "nothing_lost": not lost and not failures and len(narrations) == len(texts),
        "lost": lost[:5],
    }


def _intact(n: Narration, row) -> bool:
    s = n.stream
    if s is None or not s.complete or s.duplicates or row.status != "completed":
        return False
    return all(s.digests.get(c.seq) == c.digest for c in row.chunks)
