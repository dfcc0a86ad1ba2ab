"""Scenario 1c: what one HTTP request costs the server, one at a time on a kept-alive
connection (as a page's requests go), with no socket beside it: the floor under every
POST of the TTFA scenarios.

- ``GET /api/tts/voices/``: Django and daphne alone (no database write);
- ``POST`` of a new text: the session row, its commit, the workers' doorbell;
- ``POST`` of a text narrated before: replayed at creation (the row, its chunks);
- ``GET /narrate/``, a page with a player: for a visitor with cookies, and for a new one
  (no cookies), to whom it gives a session, one write (``TTS_SESSION_ON_PAGE``, P86).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bench.client import Http
from bench.stats import summary


async def _timed(count: int, request: Callable[[int], Awaitable[object]]) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        await request(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def _run(port: int, voice: str, texts: list[str], narrated: list[str]) -> dict:
    http = Http("127.0.0.1", port, keep_alive=True)
    try:
        await http.ensure_csrf()
        await _timed(5, lambda i: http.request("GET", "/api/tts/voices/"))  # warm
        voices = await _timed(len(texts), lambda i: http.request("GET", "/api/tts/voices/"))
        new = await _timed(len(texts), lambda i: http.create(texts[i], voice))
        again = await _timed(len(narrated), lambda i: http.create(narrated[i], voice))
        page = await _timed(len(texts), lambda i: http.request("GET", "/narrate/"))
        first_page = await _timed(len(texts), lambda i: _as_new_visitor(http, "/narrate/"))
    finally:
        await http.close()
    return {
        "GET voices": summary(voices),
        "POST new text": summary(new),
        "POST narrated text": summary(again),
        "GET page, visitor with cookies": summary(page),
        "GET page, new visitor": summary(first_page),
    }


async def _as_new_visitor(http: Http, path: str) -> None:
    """GET ``path`` with no cookies (on the same kept-alive connection); keep the client's."""
    kept, http.cookies = http.cookies, {}
    try:
        response = await http.request("GET", path)
        assert response.status == 200, response.status
    finally:
        http.cookies = kept


def run(port: int, voice: str, texts: list[str], narrated: list[str]) -> dict:
    """``texts``: new ones; ``narrated``: texts whose narrations have completed."""
    return asyncio.run(_run(port, voice, texts, narrated))
