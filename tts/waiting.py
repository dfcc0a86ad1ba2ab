"""The sockets of this process that wait for a session to exist (``?pending=1``).

A player opens the session's socket together with its POST, and on a database with a
trip per query (PostgreSQL) the socket's first read nearly always comes before the
POST's commit: it finds nothing, and waits for the worker's first event (or a poll) to
read again. That second read then ran while the first chunk was on its way, and the
chunk waited for it. When the POST is answered by the same process (one web process, or
a balancer that keeps a browser on one), the POST wakes its waiting sockets as soon as
the session is committed, so that they read while the worker is still at work. Sockets
whose POST went to another process wait as before; nothing is shared between processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid

_lock = threading.Lock()
_waiting: dict[uuid.UUID, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}


def expect(session_id: uuid.UUID) -> asyncio.Event:
    """An event set once ``created(session_id)`` is called in this process; from the
    socket's event loop. ``forget`` it when done waiting."""
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
    for loop, event in waiters:
        with contextlib.suppress(RuntimeError):  # that loop is closed: its socket is gone
            loop.call_soon_threadsafe(event.set)
