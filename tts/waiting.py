"""The sockets of this process that wait for a session to exist (``?pending=1``).

A player opens the session's socket together with its POST. When the same process
answers both (one web process, or a balancer that keeps a browser on one), the socket
reads the session once the POST has committed it, woken by that commit, not before:

- A read before the commit finds nothing. On two busy cores it also ran beside the very
  request it waited for (same process, same GIL) and slowed it down: the POST's way to
  its commit and its dispatch is the first audio's way too (docs/benchmarks.md, P43).
- So a pending socket whose process is answering a POST at the time waits for the first
  of: its own session's commit, the end of one of those POSTs (it may have been its own,
  refused, or another browser's), or the first poll. Only then does it join its
  session's group (a Redis trip, P44) and read.
- A socket whose process answers no POST joins and reads at once, as before: its POST
  went to another process, or has not arrived yet.

Nothing is shared between processes; a socket whose POST went elsewhere is opened by
the worker's first event or a poll (``tts.consumers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid

_lock = threading.Lock()
_waiting: dict[uuid.UUID, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
_posts = 0  # POST requests this process is answering now


def expect(session_id: uuid.UUID) -> asyncio.Event:
    """An event set once ``created(session_id)`` is called in this process, or a POST
    that it answers ends; from the socket's event loop. ``forget`` it when done waiting."""
    event = asyncio.Event()
    with _lock:
        _waiting.setdefault(session_id, set()).add((asyncio.get_running_loop(), event))
    return event


def forget(session_id: uuid.UUID, event: asyncio.Event) -> None:
    """Stop waiting (from the loop that called ``expect``)."""
    with _lock:
        waiters = _waiting.get(session_id, set())
        waiters.discard((asyncio.get_running_loop(), event))
        if not waiters:
            _waiting.pop(session_id, None)


def created(session_id: uuid.UUID) -> None:
    """The session is committed: wake this process's sockets waiting for it (from any
    thread; a dict lookup when none is)."""
    with _lock:
        waiters = list(_waiting.get(session_id, ()))
    _wake(waiters)


def posts_in_flight() -> bool:
    """Whether this process is answering a POST now: a pending socket's own may be one."""
    return _posts > 0


@contextlib.contextmanager
def answering_post(method: str):
    """Around the answer to one HTTP request (``tts.asgi``): while a POST is answered,
    pending sockets wait for it; when it ends, every waiting socket reads (its session
    may be there now, whichever request made it)."""
    global _posts
    if method != "POST":
        yield
        return
    with _lock:
        _posts += 1
    try:
        yield
    finally:
        with _lock:
            _posts -= 1
            waiters = [w for ws in _waiting.values() for w in ws]
        _wake(waiters)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
    for loop, event in waiters:
        with contextlib.suppress(RuntimeError):  # that loop is closed: its socket is gone
            loop.call_soon_threadsafe(event.set)
