"""The one place that talks to the channel layer: group names and typed events.

The channel layer is at-most-once and drops silently when a listener is full, so
events are notifications only; listeners rebuild anything missing from storage.
A broadcast that fails (Redis down) is logged and ignored: the database has it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any

from channels.layers import get_channel_layer

from tts import waiting

logger = logging.getLogger(__name__)

GENERATE_CHANNEL = "tts-generate"


SEND_TIMEOUT_S = 5.0
WAITED_SEND_S = 0.5  # the longest a broadcast that is waited for holds up its caller
MAX_BACKLOG = 256  # events waiting to be sent; beyond this they are dropped (and logged)
MAX_LISTENERS_NAMED = 8  # in a doorbell: a session's sockets opened with its POST


class _SenderLoop:
    """A process-wide event loop on its own thread for every send from sync code.

    Sends go out one at a time in submission order, each with a deadline. ``post`` does
    not wait (the synthesis thread goes on at once); ``run`` waits for its send and for
    everything posted before it.

    async_to_sync from a worker's consumer thread would run the send on the worker's
    message loop, and that loop is replaced when Redis goes away: a send scheduled on the
    old one never finishes. This loop outlives such restarts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._thread: threading.Thread | None = None
        self._backlog = 0

    def post(self, coro: Coroutine[Any, Any, Any], what: str) -> bool:
        """Queue a send without waiting; False when the backlog is full (Redis is down
        or slow): the event is dropped and listeners catch up from storage."""
        return self._submit(coro, None, what)

    def run(
        self, coro: Coroutine[Any, Any, Any], what: str = "send", timeout: float | None = None
    ) -> Any:
        """Send and wait, at most ``timeout`` seconds (default: the send's deadline, after
        whatever is queued before it); a send waited for in vain still goes out."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self._submit(coro, future, what):
            raise TimeoutError(f"{what}: the send backlog is full")
        return future.result(2 * SEND_TIMEOUT_S + 1 if timeout is None else timeout)

    def flush(self) -> None:
        """Wait until everything posted so far has been sent (or has failed)."""
        with suppress(Exception):
            self.run(asyncio.sleep(0), "flush")

    def _submit(self, coro, future, what: str) -> bool:
        with self._lock:
            loop, queue = self._get_loop()
            if self._backlog >= MAX_BACKLOG:
                coro.close()
                logger.warning("dropping %s: %d sends are waiting", what, self._backlog)
                return False
            self._backlog += 1
        loop.call_soon_threadsafe(queue.put_nowait, (coro, future, what))
        return True

    def _get_loop(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue]:
        if self._thread is None or not self._thread.is_alive():
            self._loop, self._queue = asyncio.new_event_loop(), asyncio.Queue()
            self._backlog = 0  # whatever a dead loop held is gone
            self._thread = threading.Thread(
                target=self._loop.run_until_complete,
                args=(self._drain(self._queue),),
                name="tts-broadcast",
                daemon=True,
            )
            self._thread.start()
        return self._loop, self._queue

    async def _drain(self, queue: asyncio.Queue) -> None:
        while True:
            coro, future, what = await queue.get()
            try:
                result = await asyncio.wait_for(coro, SEND_TIMEOUT_S)
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - one bad send
                # must not end this loop: reported to the waiter, or logged
                if future is not None:
                    future.set_exception(exc)
                else:
                    logger.warning("%s failed: %r; the database has it", what, exc)
            else:
                if future is not None:
                    future.set_result(result)
            finally:
                with self._lock:
                    self._backlog -= 1


_sender = _SenderLoop()


def warm_sender(timeout: float) -> None:
    """Open the sender loop, its Redis connections and its scripts now (``tts.warmup``),
    not on a session's first broadcast. Raises what the layer raised, or TimeoutError."""
    layer = get_channel_layer()
    if layer is not None and hasattr(layer, "warm_up"):
        _sender.run(layer.warm_up(), "warm-up", timeout=timeout)


def session_group(session_id: uuid.UUID | str) -> str:
    return f"tts.session.{uuid.UUID(str(session_id)).hex}"


def _group_send(session_id: uuid.UUID | str, event: dict[str, Any], *, wait: bool = False) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    send = layer.group_send(session_group(session_id), event)
    what = f"{event['type']} for {session_id}"
    if not wait:
        _sender.post(send, what)
        return
    try:
        _sender.run(send, what, timeout=WAITED_SEND_S)
    except Exception:  # noqa: BLE001 - listeners recover from storage
        logger.warning("%s failed or is slow; going on", what, exc_info=True)


def flush() -> None:
    """Wait until every event broadcast so far has gone out (or failed): for callers that
    must know listeners were told, such as a process about to exit."""
    _sender.flush()


def chunk_event(
    chunk_meta: dict[str, Any], pcm: bytes, *, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    # The event carries the audio so that no listener has to read the database for it.
    event = {"type": "tts.chunk", **chunk_meta, "pcm": pcm}
    if status is not None:  # a status frame that goes out right before this chunk's
        event["status"] = status
    return event


def broadcast_chunk(
    session_id: uuid.UUID,
    chunk_meta: dict[str, Any],
    pcm: bytes,
    *,
    wait: bool = False,
    status: dict[str, Any] | None = None,
) -> None:
    """``wait``: return once Redis has it (or the send failed), not at once. ``status``:
    a status frame for listeners to get first (see generation.session_steps)."""
    _group_send(session_id, chunk_event(chunk_meta, pcm, status=status), wait=wait)


def broadcast_stored(session_id: uuid.UUID, *, seq: int) -> None:
    """Chunk ``seq`` is now in storage (its `tts.chunk` event went out before that)."""
    _group_send(session_id, {"type": "tts.stored", "seq": seq})


def broadcast_status(session_id: uuid.UUID, status_frame: dict[str, Any]) -> None:
    _group_send(session_id, {**status_frame, "type": "tts.status"})


def broadcast_done(session_id: uuid.UUID, *, total_chunks: int, duration_ms: int) -> None:
    # The totals ride along so that a listener that is caught up needs no database read.
    _group_send(
        session_id, {"type": "tts.done", "total_chunks": total_chunks, "duration_ms": duration_ms}
    )


def broadcast_error(session_id: uuid.UUID, *, code: str, message: str) -> None:
    _group_send(session_id, {"type": "tts.error", "code": code, "message": message})


def dispatch_generate(session_id: uuid.UUID) -> bool:
    """Ring the workers' doorbell. False when the layer is unreachable (the recovery
    sweep re-dispatches queued sessions later).

    The message names the channels of this process's sockets that wait for the session
    and have joined its group (a socket opened with the POST): the worker sends its first
    event to them in one trip to Redis (``expect_listeners``)."""
    layer = get_channel_layer()
    if layer is None:
        return False
    message: dict[str, Any] = {"type": "tts.generate", "session_id": str(session_id)}
    if listeners := waiting.listeners(session_id):
        message["listeners"] = listeners[:MAX_LISTENERS_NAMED]
    try:
        if hasattr(layer, "send_blocking"):  # tts.layers: on this thread, no hand-over
            layer.send_blocking(GENERATE_CHANNEL, message)
        else:
            _sender.run(layer.send(GENERATE_CHANNEL, message), f"dispatch of {session_id}")
    except Exception:  # noqa: BLE001
        logger.warning("dispatch of %s failed; the recovery sweep will retry", session_id)
        return False
    return True


def expect_listeners(session_id: Any, listeners: Any) -> None:
    """The doorbell named the session's listeners (``dispatch_generate``): the layer takes
    them as the group's members until its first send to the group, which then checks them
    in Redis and stores the event in the same trip (``tts.layers``). Anything malformed is
    ignored: it is only a hint."""
    layer = get_channel_layer()
    if not isinstance(listeners, list) or not hasattr(layer, "expect_members"):
        return
    try:
        group = session_group(session_id)
    except (TypeError, ValueError):
        return  # the worker says what is wrong with the id
    layer.expect_members(group, listeners[:MAX_LISTENERS_NAMED])  # it drops bad names
