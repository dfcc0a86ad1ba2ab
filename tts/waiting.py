"""The sockets of this process that wait for a session to exist (``?pending=1``).

A player opens the session's socket together with its POST. When the same process
answers both (one web process, or a balancer that keeps a browser on one), the socket
reads the session once the POST has committed it, woken by that commit, not before:

- A read before the commit finds nothing. On two busy cores it also ran beside the very
  request it waited for (same process, same GIL) and slowed it down: the POST's way to
  its commit and its dispatch is the first audio's way too (docs/benchmarks.md, P43).
- So a pending socket whose process is answering a POST at the time waits for the first
  of: its own session's commit, the moment this process answers no POST any more (its
  own may have been refused, or gone to another process), or the first poll. Only then
  does it read. Each socket is woken that way once, whatever the number of POSTs: no
  reads in step with other browsers'. It joins its session's group at once, as before:
  a socket that joined only after the commit missed a quick first chunk now and then
  (a long text's head goes to the engine within milliseconds), which then came from
  storage after its store (P44, rejected).
- A socket whose process answers no POST joins and reads at once, as before: its POST
  went to another process, or has not arrived yet.

Nothing is shared between processes; a socket whose POST went elsewhere is opened by
the worker's first event or a poll (``tts.consumers``).

A waiting socket is kept with its channel, which joins the session's group right after
``expect``: the POST's doorbell names those channels (``listeners``), so that the
worker's first send to the group reaches them in one trip to Redis, not two
(``tts.layers``, docs/benchmarks.md, P73). The names are a hint, checked in Redis by that
send: a join still on its way when the doorbell rang has long landed by then, and one
that failed costs the send a second trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid

_lock = threading.Lock()
_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]
_waiting: dict[uuid.UUID, dict[_Waiter, str]] = {}  # session -> its waiters' channels
_posts = 0  # POST requests this process is answering now
_until_no_posts: set[_Waiter] = set()  # woken once, when _posts drops to 0


def expect(session_id: uuid.UUID, channel_name: str) -> asyncio.Event:
    """An event set once ``created(session_id)`` is called in this process; from the
    event loop of the socket whose channel is ``channel_name``. ``forget`` it when done
    waiting."""
    event = asyncio.Event()
    with _lock:
        _waiting.setdefault(session_id, {})[(asyncio.get_running_loop(), event)] = channel_name
    return event


def until_no_posts(event: asyncio.Event) -> bool:
    """Also set ``event`` (once) when this process answers no POST any more. False, and
    nothing to wait for, when it answers none now."""
    with _lock:
        if not _posts:
            return False
        _until_no_posts.add((asyncio.get_running_loop(), event))
        return True


def forget(session_id: uuid.UUID, event: asyncio.Event) -> None:
    """Stop waiting (from the loop that called ``expect``)."""
    waiter = (asyncio.get_running_loop(), event)
    with _lock:
        waiters = _waiting.get(session_id, {})
        waiters.pop(waiter, None)
        if not waiters:
            _waiting.pop(session_id, None)
        _until_no_posts.discard(waiter)


def created(session_id: uuid.UUID) -> None:
    """The session is committed: wake this process's sockets waiting for it (from any
    thread; a dict lookup when none is)."""
    with _lock:
        waiters = list(_waiting.get(session_id, ()))
    _wake(waiters)


@contextlib.contextmanager
def answering_post(method: str):
    """Around the answer to one HTTP request (``tts.asgi``): while POSTs are answered,
    pending sockets wait for them (``until_no_posts``)."""
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
            waiters = list(_until_no_posts) if not _posts else []
            if waiters:
                _until_no_posts.clear()
        _wake(waiters)


def _wake(waiters: list[_Waiter]) -> None:
    for loop, event in waiters:
        with contextlib.suppress(RuntimeError):  # that loop is closed: its socket is gone
            loop.call_soon_threadsafe(event.set)


def listeners(session_id: uuid.UUID) -> list[str]:
    """The channels of this process's sockets that wait for the session (a dict lookup)."""
    with _lock:
        return sorted(_waiting.get(session_id, {}).values())
