"""Scenarios 1 and 4: time to first audio, cold (unique texts) and cached (texts narrated
before), one session at a time so that nothing queues.

TTFA is measured at the client, from just before the POST to the arrival of the first
binary frame. The engine's share is the first chunk's ``engine_ms`` (stored by the worker
around ``engine.synthesize``); the pipeline's overhead is everything else. The stage
columns place the server's own timestamps (same machine, same clock) on that timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from bench.client import BenchError, Http, Listen, Narration, listen, narrate
from bench.db import SessionRow, fetch_sessions
from bench.fanout import late_held
from bench.netdelay import Link, through
from bench.stats import summary


async def _sequential(
    port: int,
    voice: str,
    texts: list[str],
    timeout: float,
    early: bool,
    cancel_after: int | None,
    pause_s: float,
    pause_first: bool,
    page: str | None = None,
) -> list[Narration]:
    http = Http("127.0.0.1", port)
    if page is not None:  # as a browser: the page first (its cookies), then the Plays
        response = await http.request("GET", page)
        if response.status != 200:
            raise BenchError(f"GET {page} -> {response.status}")
    await http.ensure_csrf()
    results = []
    for text in texts:
        if pause_s and (results or pause_first):
            await asyncio.sleep(pause_s)
        results.append(
            await narrate(
                http, text, voice, timeout=timeout, early=early, cancel_after=cancel_after
            )
        )
    return results


def run_sessions(
    port: int,
    voice: str,
    texts: list[str],
    *,
    timeout: float,
    early: bool = True,
    cancel_after: int | None = None,
    pause_s: float = 0.0,
    pause_first: bool = False,
    page: str | None = None,
) -> list[Narration]:
    """One session at a time; ``cancel_after``: cancel each once that many chunks arrived
    (bench.client.listen); ``pause_s``: between sessions (a cancelled session's worker may
    still be finishing the synthesis it had begun; with ``pause_first``, before the first
    too: each session then follows that long of a quiet stack); ``page``: GET this path
    first, as a browser loads the page whose Play it presses (P86: a page with a player
    gives a new visitor the session cookie that a socket opened with the POST needs)."""
    return asyncio.run(
        _sequential(port, voice, texts, timeout, early, cancel_after, pause_s, pause_first, page)
    )


# A socket opened before the press (the player's warmUp, on the pointer's arrival on Play):
# the POST goes this long after its handshake, in a hover's time before a click.
WARM_S = 0.05

# name -> (the socket opened with the POST, each chunk's audio in parts: ?parts=1, the
# socket opened WARM_S before the POST instead)
FLOWS = {
    "after the reply": (False, False, None),
    "early": (True, False, None),
    "early, parts": (True, True, None),
    "warm, parts": (True, True, WARM_S),
}


def run_flows(
    port: int,
    voice: str,
    next_text: Callable[[], str],
    *,
    rtt_ms: list[float],
    per_cell: int,
    rounds: int,
    timeout: float,
    link: Link | None = None,
) -> dict:
    """TTFA of the socket flows (opened after the POST's reply, or with it: ?pending=1; and
    with it, each chunk's audio in parts: ?parts=1; and, the player's way, in parts and
    opened before the POST: WARM_S after its handshake) on loopback and
    through DelayProxy round trips (over ``link``, where given: its bandwidth and TCP's
    slow start, loopback included), ``per_cell`` sessions per round trip, flow and round,
    the rounds interleaved so that the machine's drift hits all alike. One browser per
    round trip, with its session cookie and a kept-alive connection, as a page's own."""

    async def go() -> dict[tuple[float, str], list[float]]:
        samples: dict[tuple[float, str], list[float]] = {}
        async with contextlib.AsyncExitStack() as stack:
            browsers: dict[float, Http] = {}
            for rtt in rtt_ms:
                target = await through(stack, port, rtt, link)
                http = browsers[rtt] = Http("127.0.0.1", target, keep_alive=True)
                stack.push_async_callback(http.close)
                await http.ensure_csrf()
                await narrate(http, next_text(), voice, timeout=timeout, early=False)  # the cookie
            for _ in range(rounds):
                for rtt, http in browsers.items():
                    for name, (early, parts, warm) in FLOWS.items():
                        for _ in range(per_cell):
                            n = await narrate(
                                http,
                                next_text(),
                                voice,
                                timeout=timeout,
                                early=early,
                                parts=parts,
                                warm_s=warm,
                            )
                            if n.ttfa_ms is not None:
                                samples.setdefault((rtt, name), []).append(n.ttfa_ms)
                                if (first := n.stream.sizes.get(0)) is not None:
                                    sizes.append(first / 1000)
        return samples

    sizes: list[float] = []
    samples = asyncio.run(go())
    over = f", {link.label}" if link else ""
    return {
        "first_chunk_kb": summary(sizes),
        "paths": {
            f"rtt {rtt:g} ms{over}": {name: summary(samples.get((rtt, name), [])) for name in FLOWS}
            for rtt in rtt_ms
        },
    }


def stages(n: Narration, row: SessionRow) -> dict[str, float | None]:
    """Milliseconds of each step from the POST to the first audio frame."""
    first, stream = row.first, n.stream
    if first is None or stream is None or stream.t_first is None:
        return {}
    claimed = row.started_at or row.created_at
    return {
        "ttfa": (stream.t_first - n.t_post) * 1000,
        "engine": float(first.engine_ms),
        "overhead": (stream.t_first - n.t_post) * 1000 - first.engine_ms,
        # client -> view saved the row
        "post_to_row": (row.created_at - n.t_post) * 1000,
        # the row -> the worker claimed it (commit, on_commit dispatch, Redis, worker wake-up)
        "row_to_claim": ((row.started_at or row.created_at) - row.created_at) * 1000,
        # claim -> the first chunk broadcast, less the engine's time (segmentation, cache
        # lookup); the chunk's created_at is when it was made and broadcast
        "claim_to_sent": (first.created_at - claimed) * 1000 - first.engine_ms,
        # broadcast -> first frame at the client (group_send, daphne, consumer, socket;
        # or the listener's own connect, when it joined after the broadcast)
        "sent_to_client": (stream.t_first - first.created_at) * 1000,
        # client-side milestones, from the POST (the socket opens while the POST is in flight)
        "post_rtt": (n.t_created - n.t_post) * 1000,
        "ws_open": (stream.t_open - n.t_post) * 1000,
        "ws_session_frame": ((stream.t_session or stream.t_open) - n.t_post) * 1000,
    }


def analyse(narrations: list[Narration], *, cached: bool = False) -> dict:
    rows = fetch_sessions([n.session_id for n in narrations])
    measured = [(n.session_id, s) for n in narrations if (s := stages(n, rows[n.session_id]))]
    per = [s for _, s in measured]
    complete = sum(1 for n in narrations if n.stream and n.stream.complete)
    from_storage = sum(
        1
        for n in narrations
        if n.stream and n.stream.session_frame and n.stream.session_frame["completed_chunks"]
    )
    cached_first = sum(1 for n in narrations if (f := rows[n.session_id].first) and f.cached)
    keys = per[0].keys() if per else []
    result = {
        "sessions": len(narrations),
        "complete": complete,
        "first_chunk_cached": cached_first,
        "first_frame_from_storage": from_storage,
        "chars": round(sum(len(n.text) for n in narrations) / max(1, len(narrations))),
        **{key: summary(p[key] for p in per) for key in keys},
    }
    # The bundled player holds a live first chunk for the cushion_ms it carries (P55): a
    # listener hears the first frame that much later. A shorter first segment comes sooner
    # and may be held the longer (P83), so this, not TTFA alone, is what a reader waits.
    held = [
        (n.ttfa_ms, *late_held(n.stream, rows[n.session_id]))
        for n in narrations
        # followed to the end: a session cancelled on purpose (scenario 1d) has chunks
        # that never came, which late_held counts as late
        if n.ttfa_ms is not None and n.stream is not None and n.stream.complete
    ]
    result["held_player"] = {
        "first_sound": summary(ttfa + hold * 1000 for ttfa, _, hold in held),
        "hold": summary(hold * 1000 for _, _, hold in held),
        "late_chunks": sum(late for _, late, _ in held),
    }
    # Where the slowest sessions' time went (round 25 found SQLite's checkpoint there:
    # P76): the stages of the five with the most overhead, worst first.
    # The session's id matches it against the --patch trace timelines.
    worst = sorted(measured, key=lambda pair: -pair[1]["overhead"])[:5]
    result["worst"] = [
        {"session": sid, **{key: round(value, 1) for key, value in p.items()}} for sid, p in worst
    ]
    if cached and cached_first != len(narrations):
        result["warning"] = "not every first chunk came from the cache"
    return result


def run_reopen(port: int, narrations: list[Narration], *, timeout: float) -> dict:
    """Opening a finished session again (a reload, another device): every chunk comes
    from storage. Timed from before the handshake to the first audio frame."""

    async def go() -> list[Listen]:
        out = []
        for n in narrations:
            http = Http("127.0.0.1", port)
            http.cookies = dict(n.cookies)  # the owner's browser
            out.append(await listen(http, n.session_id, timeout=timeout))
        return out

    listens = asyncio.run(go())
    return {
        "sessions": len(listens),
        "complete": sum(1 for s in listens if s.complete),
        "connect_to_first_frame": summary(
            (s.t_first - s.t_connect) * 1000 for s in listens if s.t_first
        ),
    }
